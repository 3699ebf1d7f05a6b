"""Mirrors modules/sd_samplers_common.py: SamplerData.total_steps, the Sampler base (launch_sampling sets the
denoiser's `steps` / `total_steps` and turns InterruptedException into "return the last latent"), TorchHijack."""

from __future__ import annotations

import inspect
from collections import namedtuple

from modules import shared
from modules.shared import state
from standalone.models import import_k_diffusion

SamplerDataTuple = namedtuple("SamplerData", ["name", "constructor", "aliases", "options"])


class SamplerData(SamplerDataTuple):
    def total_steps(self, steps):
        if self.options.get("second_order", False):
            steps = steps * 2
        return steps


class InterruptedException(BaseException):
    pass


class TorchHijack:
    """Replaces torch.randn_like inside k-diffusion so ancestral noise comes from the job's seeded RNG."""

    def __init__(self, p):
        self.rng = p.rng

    def __getattr__(self, item):
        if item == "randn_like":
            return self.randn_like
        import torch

        return getattr(torch, item)

    def randn_like(self, x):
        return self.rng.next()


def setup_img2img_steps(p, steps=None):
    steps = steps or p.steps
    t_enc = int(min(p.denoising_strength, 0.999) * steps)
    return steps, t_enc


class Sampler:
    def __init__(self, funcname):
        self.funcname = funcname
        self.func = funcname
        self.extra_params = []
        self.stop_at = None
        self.eta = None
        self.config = None  # set by create_sampler
        self.last_latent = None
        self.s_min_uncond = None
        self.p = None
        self.model_wrap_cfg = None
        self.sampler_extra_args = None

    def callback_state(self, d):
        self.last_latent = d["denoised"]
        state.sampling_step = d["i"]
        shared.total_tqdm.update()

    def launch_sampling(self, steps, func):
        self.model_wrap_cfg.steps = steps
        self.model_wrap_cfg.total_steps = self.config.total_steps(steps)
        state.sampling_steps = steps
        state.sampling_step = 0
        kd = import_k_diffusion()
        try:
            return func()
        except InterruptedException:
            return self.last_latent
        finally:
            # Stand-in only: the host leaves k_diffusion.sampling.torch patched; tests share the process.
            import torch

            kd.sampling.torch = torch

    def initialize(self, p) -> dict:
        self.p = p
        self.model_wrap_cfg.p = p
        self.model_wrap_cfg.mask = None
        self.model_wrap_cfg.nmask = None
        self.model_wrap_cfg.step = 0
        self.model_wrap_cfg.image_cfg_scale = getattr(p, "image_cfg_scale", None)
        self.eta = p.eta if p.eta is not None else getattr(shared.opts, self.eta_option_field, 0.0)
        self.s_min_uncond = getattr(p, "s_min_uncond", 0.0)
        import_k_diffusion().sampling.torch = TorchHijack(p)
        extra = {}
        if "eta" in inspect.signature(self.func).parameters:
            extra["eta"] = self.eta
        return extra
