"""Mirrors backend/modules/k_prediction.py: the predictor, Forge's noise schedule and parameterisation object
(`sd_model.forge_objects.unet.model.predictor`).

`Prediction` (SD1/SD2/SDXL): `sigmas` / `log_sigmas` / `alphas_cumprod` buffers from the beta schedule (computed in
float64, stored float32); `sigma_min` and `sigma_max` are PROPERTIES (tensors); `timestep(sigma)` is the index of
the nearest log-sigma (an integer-valued tensor: the UNet sees whole timesteps, where k-diffusion's CompVisDenoiser
used by A1111 interpolates); `sigma(t)` interpolates log-sigma; `calculate_input` = x / sqrt(sigma^2 + sigma_data^2);
`calculate_denoised` for eps / v / edm; `noise_scaling`; `percent_to_sigma`.
`PredictionFlux`: 'const' (flow) prediction with the time shift mu; timestep(sigma) = sigma (sigma(t) differs, see
there).
Simplified: `k_prediction_from_diffusers_scheduler` reads a stand-in of diffusers' scheduler `.config`
(prediction_type, beta_schedule "scaled_linear", beta_start, beta_end, num_train_timesteps) since diffusers is not
installed; no EDM / continuous / discrete-flow predictors.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor


class AbstractPrediction(torch.nn.Module):
    def __init__(self, sigma_data: float = 1.0, prediction_type: str = "epsilon") -> None:
        super().__init__()
        self.sigma_data = sigma_data
        self.prediction_type = prediction_type
        assert self.prediction_type in ["epsilon", "const", "v_prediction", "edm"]

    def calculate_input(self, sigma: Tensor, noise: Tensor) -> Tensor:
        if self.prediction_type == "const":
            return noise
        sigma = sigma.view(sigma.shape[:1] + (1,) * (noise.ndim - 1))
        return noise / (sigma ** 2 + self.sigma_data ** 2) ** 0.5

    def calculate_denoised(self, sigma: Tensor, model_output: Tensor, model_input: Tensor) -> Tensor:
        sigma = sigma.view(sigma.shape[:1] + (1,) * (model_output.ndim - 1))
        total = sigma ** 2 + self.sigma_data ** 2
        if self.prediction_type == "v_prediction":
            return model_input * self.sigma_data ** 2 / total - model_output * sigma * self.sigma_data / total ** 0.5
        if self.prediction_type == "edm":
            return model_input * self.sigma_data ** 2 / total + model_output * sigma * self.sigma_data / total ** 0.5
        return model_input - model_output * sigma

    def noise_scaling(self, sigma: Tensor, noise: Tensor, latent_image: Tensor, max_denoise: bool = False) -> Tensor:
        if self.prediction_type == "const":
            return sigma * noise + (1.0 - sigma) * latent_image
        noise = noise * torch.sqrt(1.0 + sigma ** 2.0) if max_denoise else noise * sigma
        noise += latent_image
        return noise

    def inverse_noise_scaling(self, sigma: Tensor, latent: Tensor) -> Tensor:
        return latent / (1.0 - sigma) if self.prediction_type == "const" else latent

    @property
    def sigma_min(self) -> Tensor:  # properties in Forge's Prediction and PredictionFlux alike
        return self.sigmas[0]

    @property
    def sigma_max(self) -> Tensor:
        return self.sigmas[-1]


class Prediction(AbstractPrediction):
    def __init__(self, sigma_data: float = 1.0, prediction_type: str = "epsilon", beta_schedule: str = "linear",
                 linear_start: float = 0.00085, linear_end: float = 0.012, timesteps: int = 1000) -> None:
        super().__init__(sigma_data=sigma_data, prediction_type=prediction_type)
        if beta_schedule != "linear":
            raise NotImplementedError(f"stand-in: beta schedule {beta_schedule!r}")
        # ldm's "linear" schedule (diffusers' "scaled_linear"): betas linear in sqrt.
        betas = torch.linspace(linear_start ** 0.5, linear_end ** 0.5, timesteps, dtype=torch.float64) ** 2
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.register_buffer("alphas_cumprod", alphas_cumprod.float())
        self.set_sigmas(sigmas)

    def set_sigmas(self, sigmas: Tensor) -> None:
        self.register_buffer("sigmas", sigmas.float())
        self.register_buffer("log_sigmas", sigmas.log().float())

    def timestep(self, sigma: Tensor) -> Tensor:
        dists = sigma.log().to(self.log_sigmas.device) - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape).to(sigma.device)

    def sigma(self, timestep: Tensor) -> Tensor:
        t = torch.clamp(timestep.float().to(self.log_sigmas.device), min=0, max=len(self.sigmas) - 1)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp().to(timestep.device)

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return self.sigma(torch.tensor((1.0 - percent) * 999.0)).item()


class PredictionFlux(AbstractPrediction):
    """Flux's flow prediction: sigmas in (0, 1] shifted by mu (schnell: mu = 1.0)."""

    def __init__(self, mu: float = 1.0, pseudo_timestep_range: int = 10000) -> None:
        super().__init__(sigma_data=1.0, prediction_type="const")
        self.mu = mu
        t = torch.arange(1, pseudo_timestep_range + 1, 1) / pseudo_timestep_range
        self.register_buffer("sigmas", math.exp(mu) / (math.exp(mu) + (1 / t - 1)))

    def timestep(self, sigma: Tensor) -> Tensor:
        return sigma

    def sigma(self, timestep: Tensor) -> Tensor:
        """Stand-in: the table's sigma at index t (Forge returns t itself, so its "Automatic" schedule, which asks
        for sigma(t) at t up to 9999, is unusable for Flux and Forge's UI selects "Simple"); here both work."""
        index = torch.clamp(timestep.float(), 0, len(self.sigmas) - 1).round().long()
        return self.sigmas[index.to(self.sigmas.device)].to(timestep.device)

    def percent_to_sigma(self, percent: float) -> float:
        return 1.0 if percent <= 0.0 else 0.0 if percent >= 1.0 else 1.0 - percent


def k_prediction_from_diffusers_scheduler(scheduler: Any) -> Prediction:
    config = scheduler.config
    if getattr(config, "prediction_type", None) in ["epsilon", "v_prediction"] \
            and config.beta_schedule == "scaled_linear":
        return Prediction(sigma_data=1.0, prediction_type=config.prediction_type, beta_schedule="linear",
                          linear_start=config.beta_start, linear_end=config.beta_end,
                          timesteps=config.num_train_timesteps)
    raise NotImplementedError(f"Failed to recognize {scheduler}")
