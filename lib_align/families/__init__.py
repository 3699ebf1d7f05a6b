"""Model families behind one seam: everything that differs between SD1, SD2 and SDXL lives in one module each.

A family knows, for a loaded model: how its text encoder(s) tokenise a prompt and give T (`prompt_targets`), which
UNet level is the "layout" level the maps are taken at (`layout_level`), and how the conditional rows of the host's
conditioning are handed to the differentiable UNet call (`cond_rows`). The method (session, loss, optimizer) never
asks which family it runs. `family_for(model)` picks the first family whose `detect` accepts the model; a model no
family accepts gets `unsupported(model)`'s one-line reason.

Families read the host's model objects by attribute only (no `modules.*` import), so they stay host-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .base import ModelFamily
from .sd1 import SD1
from .sd2 import SD2
from .sdxl import SDXL

FAMILIES: list[type[ModelFamily]] = [SDXL, SD2, SD1]  # most specific first


def family_for(model: Any, device: torch.device | None = None,
               families: Sequence[type[ModelFamily]] = FAMILIES) -> ModelFamily | None:
    """The family of a loaded model, or None when none of `families` supports it (default: the ldm/sgm ones).
    `device`: the host's compute device."""
    for family in families:
        if family.detect(model):
            return family(model, device)
    return None


def unsupported(model: Any) -> str:
    """Why no family supports this model (no trailing consequence: callers add it)."""
    if getattr(model, "cond_stage_key", None) == "edit":
        return "InstructPix2Pix models are not supported"
    if getattr(model, "is_sdxl_inpaint", False):
        return "SDXL inpainting models are not supported (their UNet input carries the masked image)"
    for flag, name in (("is_sd3", "SD3"), ("is_flux", "Flux")):
        if getattr(model, flag, False):
            return f"{name} models are not supported (no UNet cross-attention to steer)"
    supported = ", ".join(f.name for f in FAMILIES)
    return f"this model type is not supported (supported: {supported})"


__all__ = ["FAMILIES", "SD1", "SD2", "SDXL", "ModelFamily", "family_for", "unsupported"]
