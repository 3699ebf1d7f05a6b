"""Mirrors k_diffusion/external.py: `ForgeScheduleLinker`, which Forge adds to its own copy of k-diffusion (in
the Forge repository). The tests use PyPI k-diffusion 0.0.16's sampling functions (standalone.models
.import_k_diffusion), which has no such class, so it lives here.

It is the k-diffusion "model wrap" of Forge's samplers: `predictor` (the KModel's), `sigmas` / `log_sigmas` from it,
`get_sigmas(n)` (n sigmas at evenly spaced timesteps from the top, then 0), `sigma_to_t` = predictor.timestep,
`t_to_sigma` = predictor.sigma. Forge's CFGDenoiserKDiffusion sets `.inner_model = shared.sd_model` (the engine).
Differs: Forge's `sigma_min` / `sigma_max` call `predictor.sigma_min()`, which fails (the predictor's are
properties); here they return the property.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from standalone.models import import_k_diffusion


class ForgeScheduleLinker(nn.Module):
    def __init__(self, predictor: nn.Module) -> None:
        super().__init__()
        self.predictor = predictor
        self.inner_model: Any = None

    @property
    def sigmas(self) -> Tensor:
        return self.predictor.sigmas

    @property
    def log_sigmas(self) -> Tensor:
        return self.predictor.sigmas.log()

    @property
    def sigma_min(self) -> Tensor:
        return self.predictor.sigma_min

    @property
    def sigma_max(self) -> Tensor:
        return self.predictor.sigma_max

    def get_sigmas(self, n: int | None = None) -> Tensor:
        append_zero = import_k_diffusion().sampling.append_zero
        if n is None:
            return append_zero(self.sigmas.flip(0))
        t = torch.linspace(len(self.sigmas) - 1, 0, n, device=self.sigmas.device)
        return append_zero(self.t_to_sigma(t))

    def sigma_to_t(self, sigma: Tensor, quantize: Any = None) -> Tensor:
        return self.predictor.timestep(sigma)

    def t_to_sigma(self, t: Tensor) -> Tensor:
        return self.predictor.sigma(t)
