"""Stable Diffusion 2.x built from the real classes, for the demo, the tests and the benchmark (never the host).

UNet: ldm's `UNetModel` with v2-inference.yaml's settings (64-channel heads, linear proj_in/out, context 1024).
Text: ldm's real `FrozenOpenCLIPEmbedder` holding open_clip's real `TextTransformer` (standalone.openclip), with
layer "penultimate" as both SD2 configs set it. Decoder: ldm's `Decoder` (same first stage as SD1). `tiny_sd2()` is
random and CPU-test sized; `full_size_sd2()` has SD 2.x's shapes and can load a user's checkpoint. 512-base models
predict eps, 768-v models v (v2-inference-v.yaml: parameterization "v").

How the embedder is constructed without its download: its own `__init__` runs (so `layer_idx`, `device`,
`max_length`, `freeze()` are ldm's logic, not ours) while `open_clip.create_model_and_transforms` — the one call that
downloads weights — is replaced, on the open_clip package object and for the duration of that call only, by a
factory that hands over our random tower (with a placeholder `visual`, which the `__init__` deletes as it does for
the real model). ldm's module imports `open_clip` at the top; standalone.openclip makes that import work.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from lib_align.openclip_text import openclip_chunk_targets
from lib_align.text import CHUNK_LENGTH, ChunkTarget

from .models import (
    DiffusionWrapper,
    FirstStage,
    LatentDiffusionBase,
    SDConfig,
    allow_any_latent_size,
    widen_random_init,
)
from .openclip import BOS_ID, EOS_ID, PAD_ID, TEXT_TOWERS, import_open_clip, openclip_text_preset, openclip_tokenizer

import_open_clip()  # ldm's encoders module runs `import open_clip` at import time
from ldm.modules.encoders.modules import FrozenOpenCLIPEmbedder  # noqa: E402


def sd2_unet_config(model_channels: int, context_dim: int, num_head_channels: int) -> dict[str, Any]:
    """UNetModel parameters of v2-inference.yaml / v2-inference-v.yaml (identical UNets), widths as given."""
    return dict(image_size=32, in_channels=4, out_channels=4, model_channels=model_channels,
                attention_resolutions=[4, 2, 1], num_res_blocks=2, channel_mult=[1, 2, 4, 4],
                num_head_channels=num_head_channels, use_spatial_transformer=True, use_linear_in_transformer=True,
                transformer_depth=1, context_dim=context_dim, use_checkpoint=False, legacy=False)


def _decoder_config(ch: int, ch_mult: list[int], num_res_blocks: int) -> dict[str, Any]:
    return dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=ch, ch_mult=ch_mult,
                num_res_blocks=num_res_blocks, attn_resolutions=[], dropout=0.0)


def tiny_sd2_config() -> SDConfig:
    """SD2's layout (five cross-attention layers at ds 4, linear projections, heads of a fixed channel count) with
    small widths: 32-channel heads (one at ds 1, which keeps a 64x64 latent affordable on a CPU; four at ds 4). The
    text tower is standalone.openclip's "tiny-H" (width 64, 4 blocks, 4 heads), so the context is 64 wide."""
    return SDConfig(unet=sd2_unet_config(32, TEXT_TOWERS["tiny-H"].width, 32), text={"tower": "tiny-H"},
                    decoder=_decoder_config(32, [1, 2, 2, 2], 1))


def full_size_sd2_config() -> SDConfig:
    """Stable Diffusion 2.x (v2-inference.yaml) shapes: UNet 320 channels, OpenCLIP ViT-H/14 text (1024)."""
    return SDConfig(unet=sd2_unet_config(320, 1024, 64), text={"tower": "ViT-H-14"},
                    decoder=_decoder_config(128, [1, 2, 4, 4], 2))


# ---------------------------------------------------------------------------------------------------------------
# text encoder


@contextlib.contextmanager
def _handing_over(tower: nn.Module) -> Iterator[None]:
    """open_clip.create_model_and_transforms returns `tower` instead of downloading, inside this block only."""
    open_clip = import_open_clip()
    missing = object()
    saved = getattr(open_clip, "create_model_and_transforms", missing)

    def factory(*_args: Any, **_kwargs: Any) -> tuple[nn.Module, None, None]:
        tower.visual = nn.Identity()  # FrozenOpenCLIPEmbedder.__init__ runs `del model.visual`
        return tower, None, None

    open_clip.create_model_and_transforms = factory
    try:
        yield
    finally:
        if saved is missing:
            del open_clip.create_model_and_transforms
        else:
            open_clip.create_model_and_transforms = saved


class OpenCLIPTextEncoder(FrozenOpenCLIPEmbedder):
    """ldm's FrozenOpenCLIPEmbedder plus what the standalone pipeline calls (`encode_chunks`, `tokenizer`,
    `layers_in_cond`, `chunk_targets`). Nothing of the embedder is overridden. (A1111's hijack matches the exact
    type FrozenOpenCLIPEmbedder; the stand-in host wraps this object directly.)"""

    @classmethod
    def around(cls, tower: nn.Module, layer: str = "penultimate", device: str = "cpu") -> OpenCLIPTextEncoder:
        """The embedder around `tower`, built by ldm's own __init__ (see the module doc)."""
        with _handing_over(tower):
            return cls(device=device, layer=layer)

    @property
    def tokenizer(self) -> Any:
        return openclip_tokenizer()

    @property
    def layers_in_cond(self) -> int:
        """Blocks whose output feeds the cond: ldm's text_transformer_forward stops at len(resblocks) - layer_idx."""
        return len(self.model.transformer.resblocks) - self.layer_idx

    def encode_chunks(self, chunks: Tensor, clip_skip: int = 1) -> Tensor:
        """[n, 77] token chunks -> context [1, 77*n, dim], chunks concatenated as A1111 does for long prompts.

        `clip_skip` is accepted and ignored, as A1111 1.10 ignores "Clip skip" for SD2 (sd_hijack_open_clip.py's
        encode_with_transformers calls the embedder unchanged: its layer stays the config's "penultimate").
        """
        z = self.encode_with_transformer(chunks.to(self.model.positional_embedding.device))
        return z.reshape(1, -1, z.shape[-1])

    def chunk_targets(self, chunks: Tensor, power: float, clip_skip: int = 1,
                      tokens: list[list[str]] | None = None) -> list[ChunkTarget]:
        """T per chunk from the blocks that feed the cond (clip_skip ignored, as in encode_chunks)."""
        return openclip_chunk_targets(self.model, chunks, power, self.layers_in_cond, tokens=tokens)


def tokenize_chunks(tokenizer: Any, prompt: str) -> tuple[Tensor, list[list[str]]]:
    """A prompt as A1111's open_clip wrappers chunk it: BOS + up to 75 tokens + EOS, then id_pad 0 to 77;
    BREAK starts a chunk. Mirrors lib_align.text.tokenize_chunks (no emphasis, comma back-tracking or textual
    inversion: the host's wrapper does those). Returns ids [n, 77] and each chunk's BPE pieces."""
    chunks: list[list[int]] = []
    for part in prompt.split("BREAK") if prompt.strip() else [""]:
        ids = list(tokenizer.encode(part))
        for start in range(0, max(len(ids), 1), CHUNK_LENGTH - 2):
            chunks.append(ids[start : start + CHUNK_LENGTH - 2])
    rows, words = [], []
    for ids in chunks:
        rows.append([BOS_ID, *ids, EOS_ID] + [PAD_ID] * (CHUNK_LENGTH - 2 - len(ids)))
        words.append([tokenizer.decoder[i] for i in ids])
    return torch.tensor(rows, dtype=torch.long), words


# ---------------------------------------------------------------------------------------------------------------
# model


class StableDiffusion2(LatentDiffusionBase):
    """SD 2.x (v2-inference.yaml, or v2-inference-v.yaml with `v`): ldm's UNet with SD2's settings and ldm's
    FrozenOpenCLIPEmbedder; the same API as standalone.models.StableDiffusion (scale factor 0.18215 too)."""

    is_sd2 = True  # the family flag A1111 and Forge set (lib_align.families: SD2.flag)

    def __init__(self, config: SDConfig, v: bool = False, seed: int = 0) -> None:
        super().__init__()
        from ldm.modules.diffusionmodules.openaimodel import UNetModel

        allow_any_latent_size()
        self.config = config
        self.parameterization = "v" if v else "eps"
        self.model = DiffusionWrapper(UNetModel(**config.unet))
        self.first_stage_model = FirstStage(config.decoder, config.latent_channels)
        self.finish()
        # ldm freezes the text encoder (cond_stage_config freeze: True); __init__ calls freeze() itself.
        self.cond_stage_model = OpenCLIPTextEncoder.around(openclip_text_preset(config.text["tower"], seed=seed))

    def tokenize(self, prompt: str) -> tuple[Tensor, list[list[str]]]:
        return tokenize_chunks(self.cond_stage_model.tokenizer, prompt)

    def load_state(self, state: dict[str, Tensor]) -> list[str]:
        return load_sd2_state_dict(self, state)


def load_sd2_state_dict(model: StableDiffusion2, state: dict[str, Tensor]) -> list[str]:
    """Map an ldm-format SD2 state dict (model.diffusion_model.*, cond_stage_model.model.*, first_stage_model.*)
    onto the model; the VAE encoder and open_clip's logit_scale are not needed and are ignored."""
    wanted = {k: v for k, v in state.items()
              if k.startswith(("model.diffusion_model.", "cond_stage_model.model.", "first_stage_model.decoder.",
                               "first_stage_model.post_quant_conv.")) and not k.endswith("logit_scale")}
    if not any(k.startswith("cond_stage_model.model.") for k in wanted):
        raise ValueError("this file holds no Stable Diffusion 2.x weights (no cond_stage_model.model.* keys)")
    return list(model.load_state_dict(wanted, strict=False).missing_keys)


def tiny_sd2(seed: int = 0, v: bool = False) -> StableDiffusion2:
    """A small randomly initialised SD2-architecture model (seconds to build on a CPU)."""
    torch.manual_seed(seed)
    model = StableDiffusion2(tiny_sd2_config(), v=v, seed=seed).eval()
    widen_random_init(model)  # type: ignore[arg-type] — reads only model.unet
    return model


def full_size_sd2(v: bool = False, seed: int = 0) -> StableDiffusion2:
    """SD 2.x shapes (512-base with v=False, 768-v with v=True); random until load_checkpoint."""
    torch.manual_seed(seed)
    return StableDiffusion2(full_size_sd2_config(), v=v, seed=seed).eval()
