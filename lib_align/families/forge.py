"""The same families on Forge's 2024 backend, whose model objects differ from ldm/sgm's (read by attribute only).

Forge (backend/diffusion_engine/sd15.py, sd20.py, sdxl.py) loads every family as diffusers-shaped components:
- the UNet is `sd_model.forge_objects.unet` (a UnetPatcher) -> `.model` (backend/modules/k_model.py `KModel`: the
  predictor with the noise schedule, `computation_dtype`) -> `.diffusion_model` (backend/nn/unet.py
  `IntegratedUNet2DConditionModel`: ldm's module tree, attention modules with `to_q`/`to_k`/`heads`/`dim_head`);
- every text encoder, SD2's OpenCLIP-H and SDXL's bigG included, is a transformers CLIP model
  (backend/nn/clip.py `IntegratedCLIP.transformer`) behind a `ClassicTextProcessingEngine`
  (backend/text_processing/classic_engine.py: A1111's tokenize_line — emphasis, BREAK, comma back-tracking, textual
  inversion fixes — and `hidden_states[-max(clip_skip, minimal_clip_skip)]`).
So one T path serves all three families here, and the method decisions are the ldm families' own: layout level 4,
SDXL's T from CLIP-L (`lib_align.families.sdxl` says why), conditioning rows as the host hands them to the UNet.

Clip skip: Forge applies the "Clip skip" setting to every engine (modules/processing.py calls
`sd_model.set_clip_skip` before encoding), floored by the engine's `minimal_clip_skip` (2 for SDXL's encoders);
the engine's own value is read, so T uses the very layers that fed this job's cond.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ..capture import top_level_blocks
from ..text import ChunkTarget, chunk_targets
from . import family_for
from .base import ModelFamily
from .sd1 import chunk_labels, embedding_vectors

QUANTISED = ("nf4", "fp4", "gguf", "float8_e4m3fn", "float8_e5m2")  # backend/loader.py storage dtypes


def engine_ids(engine: Any, chunks: Any, device: torch.device) -> Tensor:
    """The ids the engine feeds its encoder: after the first EOS, `id_pad` where it differs from `id_end`
    (ClassicTextProcessingEngine.process_tokens; SD2's and bigG's tokenizers pad with "!")."""
    rows = []
    for chunk in chunks:
        tokens = list(chunk.tokens)
        if engine.id_end != engine.id_pad and engine.id_end in tokens:
            end = tokens.index(engine.id_end)
            tokens[end + 1:] = [engine.id_pad] * (len(tokens) - end - 1)
        rows.append(tokens)
    return torch.tensor(rows, dtype=torch.long, device=device)


def engine_targets(engine: Any, text: str, power: float, device: torch.device) -> list[ChunkTarget]:
    """T per chunk of one prompt through a Forge ClassicTextProcessingEngine, at the layer its cond comes from."""
    chunks, _ = engine.tokenize_line(text)
    ids = engine_ids(engine, chunks, device)
    overrides = [[(fix.offset, embedding_vectors(fix.embedding, engine.embedding_key)) for fix in chunk.fixes]
                 for chunk in chunks]
    labels = chunk_labels(chunks, overrides, engine.tokenizer)
    clip_skip = max(int(engine.clip_skip or 1), int(engine.minimal_clip_skip or 1))
    return chunk_targets(engine.text_encoder.transformer, ids, power, clip_skip, overrides, tokens=labels)


CONTROL_FOR = "control_for"  # the pass's cond key of the host's ControlNet factory (webui/forge.py pass_cond)


@contextlib.contextmanager
def residuals_added(unet: nn.Module, control: dict | None) -> Iterator[None]:
    """Forge's `apply_control` (backend/nn/unet.py), out of place: each input block's and the middle block's output
    + control["input"/"middle"].pop(), and each output block's skip (the channels after h in its input) +
    control["output"].pop(). Forge adds in place (`h += ctrl`), which a backward cannot pass: the skip tensors were
    already saved by the next block when the decoder adds to them."""
    if not control:
        yield
        return
    lists = {key: list(values) for key, values in control.items()}

    def take(name: str) -> Tensor | None:
        return lists[name].pop() if lists.get(name) else None

    def after(name: str) -> Any:
        def hook(_module: nn.Module, _args: tuple, output: Tensor) -> Tensor | None:
            ctrl = take(name)
            return None if ctrl is None else output + ctrl
        return hook

    def skip_plus(_module: nn.Module, args: tuple) -> tuple | None:
        ctrl = take("output")
        if ctrl is None:
            return None
        x, width = args[0], ctrl.shape[1]
        return (torch.cat([x[:, :-width], x[:, -width:] + ctrl], dim=1), *args[1:])

    handles = [block.register_forward_hook(after("input")) for block in unet.input_blocks]
    handles.append(unet.middle_block.register_forward_hook(after("middle")))
    handles += [block.register_forward_pre_hook(skip_plus) for block in unet.output_blocks]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _normal(tensor: Tensor) -> Tensor:
    """Forge makes its conds under inference mode; a checkpointed block (the Low memory setting) saves its inputs
    for the backward, which autograd refuses for an inference tensor: hand the UNet a normal copy (a few KB)."""
    return tensor.clone() if tensor.is_inference() else tensor


def storage_dtype(unet: nn.Module) -> str:
    """How the UNet's weights are stored ("float16", "nf4", "gguf", ...): backend/loader.py sets it on the UNet."""
    return str(getattr(unet, "storage_dtype", None)).removeprefix("torch.")


def forge_unet(model: Any) -> nn.Module | None:
    return getattr(getattr(getattr(getattr(model, "forge_objects", None), "unet", None), "model", None),
                   "diffusion_model", None)


class ForgeSD1(ModelFamily):
    name = "SD1"
    flag = "is_sd1"
    engine_name = "text_processing_engine"

    @classmethod
    def detect(cls, model: Any) -> bool:
        engine = getattr(model, cls.engine_name, None)
        unet = forge_unet(model)
        return (getattr(model, cls.flag, False) is True and unet is not None
                and top_level_blocks(unet) is not None
                and hasattr(engine, "tokenize_line") and hasattr(getattr(engine, "text_encoder", None), "transformer"))

    @property
    def engine(self) -> Any:
        return getattr(self.model, self.engine_name)

    @property
    def kmodel(self) -> Any:
        return self.model.forge_objects.unet.model  # read live: Forge swaps forge_objects per batch (LoRA)

    @property
    def unet(self) -> nn.Module:
        return self.kmodel.diffusion_model

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        return self.kmodel.predictor.timestep(sigma)

    def apply_model(self, z: Tensor, t: Tensor, cond: Any) -> Any:
        """The UNet on z at timestep t, as KModel.apply_model calls it after its input scaling. Without the host's
        transformer_options: other extensions' attention patches would hide the layers T-SAM reads. ControlNet's
        residuals come from `cond[CONTROL_FOR](z)` when the host adapter put a factory there (webui/forge.py)."""
        dtype = self.kmodel.computation_dtype
        control_for = cond.get(CONTROL_FOR)
        extra = {k: _normal(v.to(dtype)) for k, v in cond.items() if k not in ("c_crossattn", CONTROL_FOR)}
        control = control_for(z) if control_for is not None else None
        with residuals_added(self.unet, control):
            return self.unet(z.to(dtype), t.float(), context=_normal(cond["c_crossattn"].to(dtype)), control=None,
                             transformer_options={}, **extra)

    def uses_clip_skip(self, options: Any) -> bool:
        return False  # the engine's own clip_skip is read (Forge set it from the setting for this job)

    def prompt_targets(self, text: str, power: float, clip_skip: int | None) -> list[ChunkTarget]:
        return engine_targets(self.engine, text, power, self.device)

    def cond_rows(self, text_cond: Any, image_cond: Tensor, batch: int) -> Any:
        if not isinstance(text_cond, Tensor) or text_cond.shape[0] != batch:
            return None
        return {"c_crossattn": text_cond}


class ForgeSD2(ForgeSD1):
    name = "SD2"
    flag = "is_sd2"


class ForgeSDXL(ForgeSD1):
    name = "SDXL"
    flag = "is_sdxl"
    engine_name = "text_processing_engine_l"  # T from CLIP-L, as on A1111 (families/sdxl.py)

    def analysis_targets(self, text: str, power: float, clip_skip: int | None) -> list[tuple[str, list[ChunkTarget]]]:
        bigg = engine_targets(self.model.text_processing_engine_g, text, power, self.device)
        return [("T (CLIP-L, used)", self.prompt_targets(text, power, clip_skip)),
                ("T of OpenCLIP-bigG (not used)", bigg)]

    def cond_rows(self, text_cond: Any, image_cond: Tensor, batch: int) -> Any:
        if not isinstance(text_cond, dict) or not isinstance(text_cond.get("crossattn"), Tensor):
            return None
        vector = text_cond.get("vector")
        if not isinstance(vector, Tensor) or text_cond["crossattn"].shape[0] != batch or vector.shape[0] != batch:
            return None
        return {"c_crossattn": text_cond["crossattn"], "y": vector}  # KModel passes `y` on to the UNet


FORGE_FAMILIES: list[type[ForgeSD1]] = [ForgeSDXL, ForgeSD2, ForgeSD1]


def forge_family_for(model: Any, device: torch.device | None = None) -> ForgeSD1 | None:
    family = family_for(model, device, FORGE_FAMILIES)
    return family if isinstance(family, ForgeSD1) else None


def forge_unsupported(model: Any) -> str:
    """Why no Forge family supports this model (no trailing consequence)."""
    kind = type(model).__name__
    names = {"Flux": "Flux", "Chroma": "Chroma", "StableDiffusion3": "SD3/SD3.5"}
    if kind in names or getattr(model, "is_sd3", False):
        return f"{names.get(kind, 'SD3/SD3.5')} models are not supported (no UNet cross-attention to steer)"
    if kind == "StableDiffusionXLRefiner":
        return "the SDXL refiner is not supported (T comes from CLIP-L, which the refiner does not have)"
    supported = ", ".join(f.name for f in reversed(FORGE_FAMILIES))
    return f"this model type ({kind}) is not supported (supported: {supported})"
