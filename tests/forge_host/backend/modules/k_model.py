"""Mirrors backend/modules/k_model.py: `KModel`, `sd_model.forge_objects.unet.model`, the UNet behind k-diffusion's
sigma interface. `apply_model(x, t, ...)` takes t = SIGMA: x is scaled by the predictor's `calculate_input`,
`c_concat` is catenated on channels, t becomes the predictor's (integer) `timestep(sigma)` as float, the context and
every floating extra cond (e.g. SDXL's `y`) are cast to `computation_dtype`, and the UNet output goes through
`calculate_denoised` against the unscaled x: the result is the denoised latent x0, not eps.
Simplified: `memory_required` uses the PyTorch-attention factor only.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from backend import memory_management
from backend.modules.k_prediction import AbstractPrediction, k_prediction_from_diffusers_scheduler


class KModel(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, diffusers_scheduler: Any = None,
                 k_predictor: AbstractPrediction | None = None, config: Any = None) -> None:
        super().__init__()
        self.config = config
        self.storage_dtype = model.storage_dtype
        self.computation_dtype = model.computation_dtype
        self.diffusion_model = model
        self.predictor = k_predictor if k_predictor is not None else k_prediction_from_diffusers_scheduler(
            diffusers_scheduler)

    def apply_model(self, x: Tensor, t: Tensor, c_concat: Tensor | None = None, c_crossattn: Tensor | None = None,
                    control: Any = None, transformer_options: dict | None = None, **kwargs: Any) -> Tensor:
        sigma = t
        xc = self.predictor.calculate_input(sigma, x)
        if c_concat is not None:
            xc = torch.cat([xc, c_concat], dim=1)
        dtype = self.computation_dtype
        xc = xc.to(dtype)
        t = self.predictor.timestep(t).float()
        context = c_crossattn.to(dtype)
        extra_conds = {}
        for name, extra in kwargs.items():
            if hasattr(extra, "dtype") and extra.dtype not in (torch.int, torch.long):
                extra = extra.to(dtype)
            extra_conds[name] = extra
        model_output = self.diffusion_model(xc, t, context=context, control=control,
                                            transformer_options={} if transformer_options is None
                                            else transformer_options, **extra_conds).float()
        return self.predictor.calculate_denoised(sigma, model_output, x)

    def memory_required(self, input_shape: Any) -> float:
        area = input_shape[0] * input_shape[2] * input_shape[3]
        return 1.28 * area * memory_management.dtype_size(self.computation_dtype) * 16384
