"""Model families: the method's decisions per family written once, and one seam each host reaches them through.

A family is one spec module here (`sd1`, `sd2`, `sdxl`: a `FamilySpec` and the reasons for it): which text encoder
gives T, which UNet level the maps are taken at, whether the cond carries a pooled vector, and the flag the hosts
set on its models. A host says only how to reach a loaded model's objects (a `Reach`: the UNet, the encoders and
their tokenisation, the conditioning form): A1111's adapter (`lib_align.webui.a1111`), Forge's
(`lib_align.webui.forge`) and the demo's (`standalone.pipeline`). `ModelFamily` binds the two to one model; the
method (session, loss, optimizer) never asks which family it runs.

A new family = one spec module here, listed in SPECS (+ its tests; + a row of `lib_align.memory`'s table for the
memory mode "auto", which otherwise keeps the normal pass). A new host = one adapter module with its `Reach`.
Nothing here imports a host's modules.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from . import sd1, sd2, sdxl
from .base import FamilySpec, ModelFamily, Reach, TextEncoder, batch_rows

SD1, SD2, SDXL = sd1.SPEC, sd2.SPEC, sdxl.SPEC
SPECS: list[FamilySpec] = [SDXL, SD2, SD1]


def family_for(model: Any, reach: Reach, device: torch.device | None = None,
               specs: Sequence[FamilySpec] = SPECS) -> ModelFamily | None:
    """The family of a loaded model as `reach` finds it, or None when no spec's model it is. `device`: the host's
    compute device."""
    for spec in specs:
        if reach.accepts(model, spec):
            return ModelFamily(spec, reach, model, device)
    return None


def spec_of(model: Any, specs: Sequence[FamilySpec] = SPECS) -> FamilySpec | None:
    """The spec whose flag the model carries (both hosts and the demo models set exactly one), or None."""
    return next((spec for spec in specs if getattr(model, spec.flag, False) is True), None)


def supported_names() -> str:
    return ", ".join(spec.name for spec in reversed(SPECS))


__all__ = ["SD1", "SD2", "SDXL", "SPECS", "FamilySpec", "ModelFamily", "Reach", "TextEncoder", "batch_rows",
           "family_for", "spec_of", "supported_names"]
