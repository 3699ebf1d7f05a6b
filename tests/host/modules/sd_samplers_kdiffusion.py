"""Mirrors modules/sd_samplers_kdiffusion.py: KDiffusionSampler drives REAL k-diffusion sampler functions with the
CFG denoiser, whose inner model is k-diffusion's real CompVisDenoiser around the SD model (sigma -> t, c_in).
Simplified: only the default ("Automatic") schedule, and four samplers."""

from __future__ import annotations

import inspect

from modules import sd_samplers_common
from modules.sd_samplers_cfg_denoiser import CFGDenoiser
from standalone.models import import_k_diffusion

samplers_k_diffusion = [
    ("Euler a", "sample_euler_ancestral", ["k_euler_a"], {"uses_ensd": True}),
    ("Euler", "sample_euler", ["k_euler"], {}),
    ("Heun", "sample_heun", ["k_heun"], {"second_order": True}),
    ("DPM++ 2M", "sample_dpmpp_2m", ["k_dpmpp_2m"], {}),
]

samplers_data_k_diffusion = [
    sd_samplers_common.SamplerData(label, lambda model, funcname=funcname: KDiffusionSampler(funcname, model),
                                   aliases, options)
    for label, funcname, aliases, options in samplers_k_diffusion
]


class CFGDenoiserKDiffusion(CFGDenoiser):
    @property
    def inner_model(self):
        if self.model_wrap is None:
            self.model_wrap = self.sampler.model_wrap
        return self.model_wrap


class KDiffusionSampler(sd_samplers_common.Sampler):
    def __init__(self, funcname, sd_model, options=None):
        super().__init__(funcname)
        kd = import_k_diffusion()
        self.eta_option_field = "eta_ancestral"
        self.model_wrap = kd.external.CompVisDenoiser(sd_model)
        self.func = getattr(kd.sampling, funcname)
        self.model_wrap_cfg = CFGDenoiserKDiffusion(self)

    def get_sigmas(self, p, steps):
        return self.model_wrap.get_sigmas(steps)

    def _run(self, p, x, sigmas, steps, conditioning, unconditional_conditioning, image_conditioning):
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

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        steps = steps or p.steps
        sigmas = self.get_sigmas(p, steps)
        x = x * sigmas[0]  # a new tensor: from here on the sampler's own x
        return self._run(p, x, sigmas, steps, conditioning, unconditional_conditioning, image_conditioning)

    def sample_img2img(self, p, x, noise, conditioning, unconditional_conditioning, steps=None,
                       image_conditioning=None):
        steps, t_enc = sd_samplers_common.setup_img2img_steps(p, steps)
        sigmas = self.get_sigmas(p, steps)
        sigma_sched = sigmas[steps - t_enc - 1:]
        xi = x + noise * sigma_sched[0]
        self.model_wrap_cfg.init_latent = x
        return self._run(p, xi, sigma_sched, t_enc + 1, conditioning, unconditional_conditioning, image_conditioning)
