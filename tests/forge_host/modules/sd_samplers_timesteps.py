"""Mirrors Forge's modules/sd_samplers_timesteps.py and the DDIM loop of sd_samplers_timesteps_impl.py.

`CompVisTimestepsDenoiser(sd_model)` sets `sd_model.alphas_cumprod = 1 / (predictor.sigmas^2 + 1)` ON THE ENGINE
(Forge's engines have no alphas_cumprod before a timestep sampler is made) and calls `sd_model.apply_model`, which
Forge's engines do not have: the CFG denoiser never calls it, it goes through the sampling function instead.
`CFGDenoiserTimesteps` sets `classic_ddim_eps_estimation`: the sampler hands the denoiser z_t and a timestep, the
denoiser converts to (x * sqrt(sigma^2 + 1), true sigma) and returns eps.
`CompVisSampler.sample` calls sampling_prepare / sampling_cleanup like the k-diffusion sampler.
Simplified: DDIM only (no DDIM CFG++, PLMS, UniPC); no img2img.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch
from backend.sampling.sampling_function import sampling_cleanup, sampling_prepare

from modules import sd_samplers_common, shared
from modules.sd_samplers_cfg_denoiser import CFGDenoiser
from standalone.models import import_k_diffusion


@torch.no_grad()
def ddim(model: Any, x: torch.Tensor, timesteps: torch.Tensor, extra_args: dict | None = None, callback: Any = None,
         disable: Any = None, eta: float = 0.0) -> torch.Tensor:
    """sd_samplers_timesteps_impl.ddim: z_t in, eps from the model; noise drawn each step (times 0 when eta is 0)."""
    alphas_cumprod = model.inner_model.inner_model.alphas_cumprod
    alphas = alphas_cumprod[timesteps]
    alphas_prev = alphas_cumprod[torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))].to(torch.float64)
    sqrt_one_minus_alphas = torch.sqrt(1 - alphas)
    sigmas = eta * np.sqrt((1 - alphas_prev.cpu().numpy()) / (1 - alphas.cpu().numpy())
                           * (1 - alphas.cpu().numpy() / alphas_prev.cpu().numpy()))
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones(x.shape[0])
    s_x = x.new_ones((x.shape[0], 1, 1, 1))
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t = model(x, timesteps[index].item() * s_in, **extra_args)
        a_t = alphas[index].item() * s_x
        a_prev = alphas_prev[index].item() * s_x
        sigma_t = sigmas[index].item() * s_x
        pred_x0 = (x - sqrt_one_minus_alphas[index].item() * s_x * e_t) / a_t.sqrt()
        dir_xt = (1.0 - a_prev - sigma_t ** 2).sqrt() * e_t
        noise = sigma_t * import_k_diffusion().sampling.torch.randn_like(x)
        x = a_prev.sqrt() * pred_x0 + dir_xt + noise
        if callback is not None:
            callback({"x": x, "i": i, "sigma": 0, "sigma_hat": 0, "denoised": pred_x0})
    return x


samplers_timesteps = [("DDIM", ddim, ["ddim"], {})]

samplers_data_timesteps = [
    sd_samplers_common.SamplerData(label, lambda model, funcname=funcname: CompVisSampler(funcname, model),
                                   aliases, options)
    for label, funcname, aliases, options in samplers_timesteps
]


class CompVisTimestepsDenoiser(torch.nn.Module):
    def __init__(self, model: Any) -> None:
        super().__init__()
        self.inner_model = model
        self.inner_model.alphas_cumprod = 1.0 / (model.forge_objects.unet.model.predictor.sigmas ** 2.0 + 1.0)

    def forward(self, input: torch.Tensor, timesteps: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.inner_model.apply_model(input, timesteps, **kwargs)


class CFGDenoiserTimesteps(CFGDenoiser):
    def __init__(self, sampler: Any) -> None:
        super().__init__(sampler)
        self.classic_ddim_eps_estimation = True

    @property
    def inner_model(self) -> CompVisTimestepsDenoiser:
        if self.model_wrap is None:
            self.model_wrap = CompVisTimestepsDenoiser(shared.sd_model)
        return self.model_wrap


class CompVisSampler(sd_samplers_common.Sampler):
    def __init__(self, funcname: Any, sd_model: Any) -> None:
        super().__init__(funcname)
        self.eta_option_field = "eta_ddim"
        self.eta_infotext_field = "Eta DDIM"
        self.eta_default = 0.0
        self.model_wrap_cfg = CFGDenoiserTimesteps(self)
        self.model_wrap = self.model_wrap_cfg.inner_model

    def get_timesteps(self, p: Any, steps: int) -> torch.Tensor:
        return torch.clip(torch.asarray(list(range(0, 1000, 1000 // steps))) + 1, 0, 999)

    def sample(self, p: Any, x: torch.Tensor, conditioning: Any, unconditional_conditioning: Any,
               steps: int | None = None, image_conditioning: Any = None) -> torch.Tensor:
        unet_patcher = self.model_wrap.inner_model.forge_objects.unet
        sampling_prepare(unet_patcher, x=x)
        steps = steps or p.steps
        timesteps = self.get_timesteps(p, steps).to(x.device)
        extra_params_kwargs = self.initialize(p)
        if "timesteps" in inspect.signature(self.func).parameters:
            extra_params_kwargs["timesteps"] = timesteps
        self.last_latent = x
        self.sampler_extra_args = {
            "cond": conditioning,
            "image_cond": image_conditioning,
            "uncond": unconditional_conditioning,
            "cond_scale": p.cfg_scale,
            "s_min_uncond": self.s_min_uncond,
        }
        samples = self.launch_sampling(steps, lambda: self.func(
            self.model_wrap_cfg, x, extra_args=self.sampler_extra_args, disable=True, callback=self.callback_state,
            **extra_params_kwargs))
        self.add_infotext(p)
        sampling_cleanup(unet_patcher)
        return samples

    def sample_img2img(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        raise NotImplementedError("stand-in: DDIM img2img (hires fix) is not mirrored; use a k-diffusion sampler")
