"""How Forge (its 2024 `backend`) holds a loaded model's objects: the `Reach` of the Forge host
(`lib_align.webui.forge.Forge` is this class plus the host's hooks). Host-free: read by attribute only, so that
tools/check_forge_backend.py can run it on Forge's own classes without the web UI.

backend/diffusion_engine/sd15.py, sd20.py, sdxl.py load every family as diffusers-shaped components:
- the UNet is `sd_model.forge_objects.unet` (a UnetPatcher) -> `.model` (backend/modules/k_model.py `KModel`: the
  predictor with the noise schedule, `computation_dtype`; sigma -> t is its predictor's `timestep`) ->
  `.diffusion_model` (backend/nn/unet.py `IntegratedUNet2DConditionModel`: ldm's module tree, attention modules
  with `to_q`/`to_k`/`heads`/`dim_head`);
- every text encoder, SD2's OpenCLIP-H and SDXL's bigG included, is a transformers CLIP model
  (backend/nn/clip.py `IntegratedCLIP.transformer`) behind a `ClassicTextProcessingEngine`
  (backend/text_processing/classic_engine.py: A1111's tokenize_line and `hidden_states[-max(clip_skip,
  minimal_clip_skip)]`): `text_processing_engine` (SD1, SD2) or `text_processing_engine_l`, `_g` (SDXL).
So one T path serves all three families here. Clip skip: Forge applies the setting to every engine
(modules/processing.py calls `sd_model.set_clip_skip` before encoding), floored by the engine's `minimal_clip_skip`
(2 for SDXL's encoders); the engine's own value is read, so T uses the very layers that fed this job's cond.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ..capture import top_level_blocks
from ..encoders import chunk_labels, line_overrides
from ..text import ChunkTarget, chunk_targets
from . import supported_names
from .base import FamilySpec, ModelFamily, Reach, batch_rows

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
    overrides = line_overrides(chunks, engine.embedding_key)
    labels = chunk_labels(chunks, overrides, engine.tokenizer)
    clip_skip = max(int(engine.clip_skip or 1), int(engine.minimal_clip_skip or 1))
    return chunk_targets(engine.text_encoder.transformer, ids, power, clip_skip, overrides, tokens=labels)


CONTROL_FOR = "control_for"  # the pass's cond key of the host's ControlNet factory (Forge.pass_cond)


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


ENGINES = ("text_processing_engine", "text_processing_engine_l", "text_processing_engine_g")


def engines(model: Any) -> list[Any]:
    """The model's text processing engines in the order its encoders are listed (SDXL: CLIP-L, bigG)."""
    return [getattr(model, name) for name in ENGINES if hasattr(getattr(model, name, None), "tokenize_line")]


class ForgeReach(Reach):
    """Forge's models: SD1, SD2 (eps and v), SDXL base."""

    def accepts(self, model: Any, spec: FamilySpec) -> bool:
        found = engines(model)
        return (getattr(model, spec.flag, False) is True and forge_unet(model) is not None
                and top_level_blocks(forge_unet(model)) is not None and len(found) >= len(spec.encoders)
                and all(hasattr(getattr(e, "text_encoder", None), "transformer") for e in found))

    def unsupported(self, model: Any) -> str:
        kind = type(model).__name__
        names = {"Flux": "Flux", "Chroma": "Chroma", "StableDiffusion3": "SD3/SD3.5"}
        if kind in names or getattr(model, "is_sd3", False):
            return f"{names.get(kind, 'SD3/SD3.5')} models are not supported (no UNet cross-attention to steer)"
        if kind == "StableDiffusionXLRefiner":
            return "the SDXL refiner is not supported (T comes from CLIP-L, which the refiner does not have)"
        return f"this model type ({kind}) is not supported (supported: {supported_names()})"

    @staticmethod
    def kmodel(model: Any) -> Any:
        return model.forge_objects.unet.model  # read live: Forge swaps forge_objects per batch (LoRA)

    def unet(self, model: Any) -> nn.Module:
        return self.kmodel(model).diffusion_model

    def apply_model(self, model: Any, z: Tensor, t: Tensor, cond: Any) -> Any:
        """The UNet on z at timestep t, as KModel.apply_model calls it after its input scaling. Without the host's
        transformer_options: other extensions' attention patches would hide the layers T-SAM reads. ControlNet's
        residuals come from `cond[CONTROL_FOR](z)` when `pass_cond` put a factory there."""
        unet = self.unet(model)
        dtype = self.kmodel(model).computation_dtype
        control_for = cond.get(CONTROL_FOR)
        extra = {k: _normal(v.to(dtype)) for k, v in cond.items() if k not in ("c_crossattn", CONTROL_FOR)}
        control = control_for(z) if control_for is not None else None
        with residuals_added(unet, control):
            return unet(z.to(dtype), t.float(), context=_normal(cond["c_crossattn"].to(dtype)), control=None,
                        transformer_options={}, **extra)

    def targets(self, model: Any, spec: FamilySpec, encoder: int, text: str, power: float, clip_skip: int | None,
                device: torch.device) -> list[ChunkTarget]:
        return engine_targets(engines(model)[encoder], text, power, device)  # the engine's own clip skip

    def cond_rows(self, spec: FamilySpec, text_cond: Any, image_cond: Tensor, batch: int) -> Any:
        rows = batch_rows(spec, text_cond, batch)
        if isinstance(rows, dict):
            if not isinstance(rows.get("vector"), Tensor):
                return None
            return {"c_crossattn": rows["crossattn"], "y": rows["vector"]}  # KModel passes `y` on to the UNet
        return None if rows is None else {"c_crossattn": rows}

    def sigma_to_t(self, family: ModelFamily) -> Callable[[Tensor], Tensor]:
        return lambda sigma: self.kmodel(family.model).predictor.timestep(sigma)
