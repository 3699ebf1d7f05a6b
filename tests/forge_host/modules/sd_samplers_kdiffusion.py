"""Mirrors Forge's modules/sd_samplers_kdiffusion.py: `KDiffusionSampler` drives REAL k-diffusion sampler functions
(PyPI k-diffusion 0.0.16, the functions Forge's fork keeps) with the CFG denoiser, whose inner model is a
`ForgeScheduleLinker` around `shared.sd_model.forge_objects.unet.model.predictor` with `.inner_model` = the engine.

sample / sample_img2img call `sampling_prepare(unet_patcher, x)` first (it loads the UNet) and
`sampling_cleanup(unet_patcher)` last, as Forge does. The initial latent is the predictor's
`noise_scaling(sigmas[0], noise, zeros)` (txt2img) or `noise_scaling(sigma_sched[0], noise, x)` (img2img): a new
tensor, from then on the sampler's own x, which every denoiser call receives as its first argument.
Simplified: samplers Euler a, Euler, Heun, DPM++ 2M (as the A1111 stand-in), all on their "Automatic" schedule
(Forge gives DPM++ 2M Karras there), plus the "Simple" schedule; no extra noise, no Brownian noise sampler.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from backend.sampling.sampling_function import sampling_cleanup, sampling_prepare
from k_diffusion_forge import ForgeScheduleLinker

from modules import sd_samplers_cfg_denoiser, sd_samplers_common, sd_schedulers, shared
from modules.shared import opts
from standalone.models import import_k_diffusion

samplers_k_diffusion = [
    ("Euler a", "sample_euler_ancestral", ["k_euler_a", "k_euler_ancestral"], {"uses_ensd": True}),
    ("Euler", "sample_euler", ["k_euler"], {}),
    ("Heun", "sample_heun", ["k_heun"], {"second_order": True}),
    ("DPM++ 2M", "sample_dpmpp_2m", ["k_dpmpp_2m"], {}),
]

samplers_data_k_diffusion = [
    sd_samplers_common.SamplerData(label, lambda model, funcname=funcname: KDiffusionSampler(funcname, model),
                                   aliases, options)
    for label, funcname, aliases, options in samplers_k_diffusion
]


class CFGDenoiserKDiffusion(sd_samplers_cfg_denoiser.CFGDenoiser):
    @property
    def inner_model(self) -> ForgeScheduleLinker:
        if self.model_wrap is None:
            self.model_wrap = ForgeScheduleLinker(shared.sd_model.forge_objects.unet.model.predictor)
            self.model_wrap.inner_model = shared.sd_model
        return self.model_wrap


class KDiffusionSampler(sd_samplers_common.Sampler):
    def __init__(self, funcname: str, sd_model: Any, options: dict | None = None) -> None:
        super().__init__(funcname)
        self.options = options or {}
        self.func = getattr(import_k_diffusion().sampling, funcname)
        self.model_wrap_cfg = CFGDenoiserKDiffusion(self)
        self.model_wrap = self.model_wrap_cfg.inner_model

    def get_sigmas(self, p: Any, steps: int) -> torch.Tensor:
        scheduler_name = (p.hr_scheduler if p.is_hr_pass else p.scheduler) or "Automatic"
        if scheduler_name == "Automatic":
            scheduler_name = self.config.options.get("scheduler", None)
        scheduler = sd_schedulers.schedulers_map.get(scheduler_name)
        if scheduler is None or scheduler.function is None:
            sigmas = self.model_wrap.get_sigmas(steps)
        else:
            if scheduler.label != "Automatic" and not p.is_hr_pass:
                p.extra_generation_params["Schedule type"] = scheduler.label
            sigma_min, sigma_max = self.model_wrap.sigmas[0].item(), self.model_wrap.sigmas[-1].item()
            extra = {"inner_model": self.model_wrap} if scheduler.need_inner_model else {}
            sigmas = scheduler.function(n=steps, sigma_min=sigma_min, sigma_max=sigma_max, device="cpu", **extra)
        return sigmas.cpu()

    def _launch(self, p: Any, x: torch.Tensor, sigmas: torch.Tensor, steps: int, conditioning: Any,
                unconditional_conditioning: Any, image_conditioning: Any) -> torch.Tensor:
        extra_params_kwargs = self.initialize(p)
        if "sigmas" in inspect.signature(self.func).parameters:
            extra_params_kwargs["sigmas"] = sigmas
        self.last_latent = x
        self.sampler_extra_args = {
            "cond": conditioning,
            "image_cond": image_conditioning,
            "uncond": unconditional_conditioning,
            "cond_scale": p.cfg_scale,
            "s_min_uncond": self.s_min_uncond,
        }
        return self.launch_sampling(steps, lambda: self.func(
            self.model_wrap_cfg, x, extra_args=self.sampler_extra_args, disable=True, callback=self.callback_state,
            **extra_params_kwargs))

    def sample(self, p: Any, x: torch.Tensor, conditioning: Any, unconditional_conditioning: Any,
               steps: int | None = None, image_conditioning: Any = None) -> torch.Tensor:
        unet_patcher = self.model_wrap.inner_model.forge_objects.unet
        sampling_prepare(unet_patcher, x=x)
        steps = steps or p.steps
        sigmas = self.get_sigmas(p, steps).to(x.device)
        x = self.model_wrap.predictor.noise_scaling(sigmas[0], x, torch.zeros_like(x),
                                                    max_denoise=getattr(opts, "sgm_noise_multiplier", False))
        samples = self._launch(p, x, sigmas, steps, conditioning, unconditional_conditioning, image_conditioning)
        self.add_infotext(p)
        sampling_cleanup(unet_patcher)
        return samples

    def sample_img2img(self, p: Any, x: torch.Tensor, noise: torch.Tensor, conditioning: Any,
                       unconditional_conditioning: Any, steps: int | None = None, image_conditioning: Any = None
                       ) -> torch.Tensor:
        unet_patcher = self.model_wrap.inner_model.forge_objects.unet
        sampling_prepare(unet_patcher, x=x)
        steps, t_enc = sd_samplers_common.setup_img2img_steps(p, steps)
        sigmas = self.get_sigmas(p, steps).to(x.device)
        sigma_sched = sigmas[steps - t_enc - 1:]
        x = x.to(noise)
        xi = self.model_wrap.predictor.noise_scaling(sigma_sched[0], noise, x, max_denoise=False)
        self.model_wrap_cfg.init_latent = x
        samples = self._launch(p, xi, sigma_sched, t_enc + 1, conditioning, unconditional_conditioning,
                               image_conditioning)
        self.add_infotext(p)
        sampling_cleanup(unet_patcher)
        return samples
