"""Mirrors Forge's modules/sd_samplers_common.py: SamplerData.total_steps, setup_img2img_steps, InterruptedException,
TorchHijack (k-diffusion's randn_like from the job's seeded RNG) and the Sampler base: launch_sampling sets the
denoiser's steps / total_steps and turns InterruptedException into "return the last latent"; initialize points the
denoiser at p and resets its step counter; callback_state honours `stop_at`; add_infotext.
Forge differs from A1111 here in callback_state (no latent kept for previews here), the eta infotext fields and
add_infotext. Simplified: no refiner switch (apply_refiner), no previews, no Brownian noise sampler, no
s_churn / s_tmin / s_noise options.
Stand-in only: launch_sampling puts k_diffusion.sampling.torch back afterwards (tests share one process).
"""

from __future__ import annotations

import inspect
from collections import namedtuple
from typing import Any

import torch

from modules import shared
from modules.shared import state
from standalone.models import import_k_diffusion

SamplerDataTuple = namedtuple("SamplerData", ["name", "constructor", "aliases", "options"])


class SamplerData(SamplerDataTuple):
    def total_steps(self, steps: int) -> int:
        return steps * 2 if self.options.get("second_order", False) else steps


class InterruptedException(BaseException):
    pass


class TorchHijack:
    def __init__(self, p: Any) -> None:
        self.rng = p.rng

    def __getattr__(self, item: str) -> Any:
        if item == "randn_like":
            return self.randn_like
        if hasattr(torch, item):
            return getattr(torch, item)
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{item}'")

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return self.rng.next()


def setup_img2img_steps(p: Any, steps: int | None = None) -> tuple[int, int]:
    if getattr(shared.opts, "img2img_fix_steps", False) or steps is not None:
        requested_steps = steps or p.steps
        steps = int(requested_steps / min(p.denoising_strength, 0.999)) if p.denoising_strength > 0 else 0
        t_enc = requested_steps - 1
    else:
        steps = p.steps
        t_enc = int(min(p.denoising_strength, 0.999) * steps)
    return steps, t_enc


class Sampler:
    def __init__(self, funcname: Any) -> None:
        self.funcname = funcname
        self.func = funcname
        self.extra_params: list[str] = []
        self.stop_at: int | None = None
        self.eta: float | None = None
        self.config: SamplerData | None = None  # set by create_sampler
        self.last_latent: torch.Tensor | None = None
        self.s_min_uncond: float | None = None
        self.eta_option_field = "eta_ancestral"
        self.eta_infotext_field = "Eta"
        self.eta_default = 1.0
        self.conditioning_key = "crossattn"
        self.p: Any = None
        self.model_wrap_cfg: Any = None
        self.sampler_extra_args: dict | None = None
        self.options: dict = {}

    def callback_state(self, d: dict) -> None:
        step = d["i"]
        if self.stop_at is not None and step > self.stop_at:
            raise InterruptedException
        state.sampling_step = step
        shared.total_tqdm.update()

    def launch_sampling(self, steps: int, func: Any) -> torch.Tensor:
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
            kd.sampling.torch = torch

    def initialize(self, p: Any) -> dict:
        self.p = p
        self.model_wrap_cfg.p = p
        self.model_wrap_cfg.mask = getattr(p, "mask", None)
        self.model_wrap_cfg.nmask = getattr(p, "nmask", None)
        self.model_wrap_cfg.step = 0
        self.model_wrap_cfg.image_cfg_scale = getattr(p, "image_cfg_scale", None)
        self.eta = p.eta if p.eta is not None else getattr(shared.opts, self.eta_option_field, 0.0)
        self.s_min_uncond = getattr(p, "s_min_uncond", 0.0)
        import_k_diffusion().sampling.torch = TorchHijack(p)
        extra_params_kwargs = {}
        if "eta" in inspect.signature(self.func).parameters:
            if self.eta != self.eta_default:
                p.extra_generation_params[self.eta_infotext_field] = self.eta
            extra_params_kwargs["eta"] = self.eta
        return extra_params_kwargs

    def add_infotext(self, p: Any) -> None:
        if self.model_wrap_cfg.padded_cond_uncond:
            p.extra_generation_params["Pad conds"] = True
        if self.model_wrap_cfg.padded_cond_uncond_v0:
            p.extra_generation_params["Pad conds v0"] = True
