"""AUTOMATIC1111 1.10: ldm/sgm models, sampling under no_grad, a CFG denoiser that copies x.

How the models' objects are reached (the UNet, the text wrappers, the conditioning form): `LdmReach`
(`lib_align.families.ldm`, host-free).

Where the update lands. The CFG denoiser builds `x_in` as a NEW tensor (cond rows, then uncond rows) and passes that
copy to `on_cfg_denoiser` (modules/sd_samplers_cfg_denoiser.py), so editing `params.x` alone changes one UNet call
and the sampler then mixes D(x') with its old x. The update is written into the sampler's own x (the first argument
of the CFG denoiser's forward) and `params.x` is rebuilt from it (all rows are copies of the same x).

Sigma: k-diffusion samplers pass a noise level and their inner model has `sigma_to_t`; DDIM/PLMS/UniPC pass the
timestep and their x already is z_t.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from modules import devices, shared
from torch import Tensor, nn

from ..families import ModelFamily, family_for
from ..families.ldm import LdmReach
from .host import Host, StepLatent


class A1111(LdmReach, Host):
    name = "A1111"


    def family(self, model: Any) -> ModelFamily | None:
        return family_for(model, self, devices.device)

    def model_refusal(self, model: Any) -> str | None:
        if getattr(shared.cmd_opts, "lowvram", False) or getattr(model, "lowvram", False):
            return ("--lowvram moves each UNet block to the CPU after use, so the gradient T-SAM needs cannot be "
                    "computed (--medvram works)")
        if family_for(model, self) is None:
            return self.unsupported(model)
        return None

    def gradient(self, unet: nn.Module) -> contextlib.AbstractContextManager:
        if torch.is_inference_mode_enabled():  # A1111 samples under no_grad; something else wrapped it
            raise RuntimeError("sampling runs under torch.inference_mode: no gradients")
        return contextlib.nullcontext()  # the optimizer enables grad for its own pass

    def attention_name(self) -> str | None:
        from modules import sd_hijack  # its `current_optimizer` is set by apply_optimizations (None: none applied)

        return getattr(getattr(sd_hijack, "current_optimizer", None), "name", None)

    def step_latent(self, family: ModelFamily, denoiser: Any, params: Any, sampler_x: Tensor,
                    batch: int) -> StepLatent:
        rows = params.x.shape[0]

        def write(x_new: Tensor) -> None:
            sampler_x.copy_(x_new.to(sampler_x.dtype))  # the sampler's own tensor: persists into its next step
            params.x = sampler_x.repeat(rows // batch, *([1] * (sampler_x.dim() - 1))).to(params.x.dtype)

        return StepLatent(sampler_x, params.sigma[:batch], getattr(denoiser.inner_model, "sigma_to_t", None), write)
