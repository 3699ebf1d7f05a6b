"""Mirrors Forge's modules/sd_samplers_cfg_denoiser.py: `CFGDenoiser.forward`, where Forge differs most from A1111.

- Interrupt / Skip raise InterruptedException first.
- Timestep samplers (`classic_ddim_eps_estimation`, DDIM here): the sampler passes z_t and a timestep; the forward
  looks up the real sigma of that timestep in the engine's `alphas_cumprod` and rebinds x to x * sqrt(sigma^2 + 1)
  (a NEW tensor, the k-diffusion-space latent) and sigma to the real sigma; at the end it returns
  eps = (x - denoised) / sigma instead of the denoised latent.
- The conds are reconstructed for this step (new tensors: text_cond [B, 77k, dim], or SDXL's dict
  {"crossattn", "vector"}; text_uncond likewise or None when the job's CFG scale is 1).
- `CFGDenoiserParams(x, image_cond, sigma, state.sampling_step, state.sampling_steps, cond, uncond, self)` gets the
  forward's OWN x and sigma: one row per image, no cond/uncond repetition (that happens later, inside
  backend.sampling.sampling_function, which reads x, sigma, text_cond, text_uncond and image_cond back from the
  params). For k-diffusion samplers this x is the sampler's own tensor.
- In the hires pass the CFG scale is `p.hr_cfg`; skip_early_cond and s_min_uncond set it to 1.
- `self.step` counts calls; the denoised result becomes `sampler.last_latent`.
Simplified: no inpainting mask blend, no refiner switch, no cond padding, no cfg_denoised / cfg_after_cfg callbacks
(the shared stand-in script_callbacks has only on_cfg_denoiser), no live preview.
"""

from __future__ import annotations

from typing import Any

import torch
from backend.sampling.sampling_function import sampling_function
from torch import Tensor

from modules import prompt_parser, sd_samplers_common
from modules.script_callbacks import CFGDenoiserParams, cfg_denoiser_callback
from modules.shared import opts, state


class CFGDenoiser(torch.nn.Module):
    def __init__(self, sampler: Any) -> None:
        super().__init__()
        self.model_wrap = None
        self.mask = None
        self.nmask = None
        self.init_latent = None
        self.steps: int | None = None
        self.total_steps: int | None = None
        self.step = 0
        self.image_cfg_scale = None
        self.padded_cond_uncond = False
        self.padded_cond_uncond_v0 = False
        self.sampler = sampler
        self.p: Any = None
        self.need_last_noise_uncond = False
        self.last_noise_uncond = None
        self.classic_ddim_eps_estimation = False

    @property
    def inner_model(self) -> Any:
        raise NotImplementedError()

    def forward(self, x: Tensor, sigma: Tensor, uncond: Any, cond: Any, cond_scale: float, s_min_uncond: float,
                image_cond: Tensor) -> Tensor:
        if state.interrupted or state.skipped:
            raise sd_samplers_common.InterruptedException
        original_x_device, original_x_dtype = x.device, x.dtype

        if self.classic_ddim_eps_estimation:
            acd = self.inner_model.inner_model.alphas_cumprod
            fake_sigmas = ((1 - acd) / acd) ** 0.5
            real_sigma = fake_sigmas[sigma.round().long().clip(0, int(fake_sigmas.shape[0]))]
            x = x * ((real_sigma ** 2.0 + 1.0) ** 0.5)[:, None, None, None]
            sigma = real_sigma

        cond_composition, cond = prompt_parser.reconstruct_multicond_batch(cond, self.step)
        uncond = prompt_parser.reconstruct_cond_batch(uncond, self.step) if uncond is not None else None

        denoiser_params = CFGDenoiserParams(x, image_cond, sigma, state.sampling_step, state.sampling_steps, cond,
                                            uncond, self)
        cfg_denoiser_callback(denoiser_params)

        if self.p.is_hr_pass:
            cond_scale = self.p.hr_cfg
        if opts.skip_early_cond > 0 and self.step / self.total_steps <= opts.skip_early_cond:
            cond_scale = 1.0
            self.p.extra_generation_params["Skip Early CFG"] = opts.skip_early_cond
        elif (self.step % 2 or opts.s_min_uncond_all) and s_min_uncond > 0 and sigma[0] < s_min_uncond:
            cond_scale = 1.0
            self.p.extra_generation_params["NGMS"] = s_min_uncond

        denoised, cond_pred, uncond_pred = sampling_function(self, denoiser_params=denoiser_params,
                                                             cond_scale=cond_scale, cond_composition=cond_composition)
        if self.need_last_noise_uncond:
            self.last_noise_uncond = (x - uncond_pred) / sigma[:, None, None, None]
        self.sampler.last_latent = denoised
        self.step += 1
        if self.classic_ddim_eps_estimation:
            return (x - denoised) / sigma[:, None, None, None]
        return denoised.to(device=original_x_device, dtype=original_x_dtype)
