"""How A1111 1.10 holds a loaded model's objects (ldm/sgm classes, A1111's text wrappers): the `Reach` of the
A1111 host (`lib_align.webui.a1111.A1111` is this class plus the host's hooks). Host-free: read by attribute only.

modules/sd_models.py and sd_hijack*.py: the UNet is `model.model.diffusion_model`; the text side is
`cond_stage_model` (SD1, SD2) or `conditioner.embedders` (SDXL), each a text wrapper with A1111's `tokenize_line`
around ldm/sgm's encoder (`.wrapped`); the CFG denoiser calls `apply_model(x, t, cond)` with
{"c_crossattn": [context], "c_concat": [image cond]} (SDXL: {"crossattn", "vector", "c_concat"}).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..encoders import is_encoder, wrapper_targets
from ..text import ChunkTarget
from . import supported_names
from .base import FamilySpec, Reach, batch_rows


def text_wrappers(model: Any) -> list[Any]:
    """The model's text wrappers in the order its encoders are listed (SDXL: CLIP-L, bigG, then the size
    embedders, which have no `tokenize_line`)."""
    embedders = getattr(getattr(model, "conditioner", None), "embedders", None)
    wrappers = list(embedders) if embedders is not None else [getattr(model, "cond_stage_model", None)]
    return [w for w in wrappers if hasattr(w, "tokenize_line")]


class LdmReach(Reach):
    """A1111's models: SD1, SD2 (eps and v), SDXL base."""

    def accepts(self, model: Any, spec: FamilySpec) -> bool:
        if getattr(model, spec.flag, False) is not True or self._not_runnable(model) is not None:
            return False
        wrappers = text_wrappers(model)
        return (hasattr(getattr(model, "model", None), "diffusion_model") and len(wrappers) >= len(spec.encoders)
                and all(is_encoder(getattr(w, "wrapped", None)) for w in wrappers))

    @staticmethod
    def _not_runnable(model: Any) -> str | None:
        """Models A1111 flags as a family (is_sd1, ...) whose UNet input is not the latent alone, or with no UNet."""
        if getattr(model, "cond_stage_key", None) == "edit":
            return "InstructPix2Pix models are not supported"
        if getattr(model, "is_sdxl_inpaint", False):
            return "SDXL inpainting models are not supported (their UNet input carries the masked image)"
        for flag, name in (("is_sd3", "SD3"), ("is_flux", "Flux")):
            if getattr(model, flag, False):
                return f"{name} models are not supported (no UNet cross-attention to steer)"
        return None

    def unsupported(self, model: Any) -> str:
        return self._not_runnable(model) or f"this model type is not supported (supported: {supported_names()})"

    def targets(self, model: Any, spec: FamilySpec, encoder: int, text: str, power: float, clip_skip: int | None,
                device: torch.device) -> list[ChunkTarget]:
        key = spec.encoders[encoder].embedding_key
        return wrapper_targets(text_wrappers(model)[encoder], key, text, power, clip_skip, device)

    def uses_clip_skip(self, model: Any, spec: FamilySpec, options: Any) -> bool:
        """A1111 applies "Clip skip" to SD1's CLIP (sd_hijack_clip.py), to SDXL's CLIP-L only with the option
        `sdxl_clip_l_skip` (sd_hijack_clip.FrozenCLIPEmbedderForSDXLWithCustomWords), never to open_clip encoders
        (sd_hijack_open_clip.py: the configured layer)."""
        wrapped = text_wrappers(model)[spec.t_encoder].wrapped
        if not hasattr(wrapped, "transformer"):
            return False
        if getattr(model, "is_sdxl", False):
            return getattr(options, "sdxl_clip_l_skip", False) is True
        return True

    def cond_rows(self, spec: FamilySpec, text_cond: Any, image_cond: Tensor, batch: int) -> Any:
        """As sd_samplers_cfg_denoiser.make_condition_dict builds the UNet's cond, for the conditional rows."""
        rows = batch_rows(spec, text_cond, batch)
        if rows is None:
            return None
        if isinstance(rows, dict):
            return {**{k: v[:batch] for k, v in rows.items()}, "c_concat": [image_cond[:batch]]}
        return {"c_crossattn": [rows], "c_concat": [image_cond[:batch]]}

