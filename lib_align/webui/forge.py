"""Forge (lllyasviel/stable-diffusion-webui-forge, its 2024 `backend`): the same hooks, a different engine room.

What differs from A1111 (paths are Forge's):
- modules/processing.py runs `p.init`, sampling and decoding inside `torch.inference_mode()`, and backend/loader.py
  builds the models inside it too: the latent, the conds and every weight are inference tensors. Our pass leaves
  inference mode (`inference_mode(False)` + `enable_grad`), and the UNet's weights are swapped for normal aliases of
  themselves for its duration (`lib_align.autograd`: autograd cannot save an inference tensor, and every layer whose
  input needs a gradient saves its weight). The update is written back afterwards, in place, back inside the host's
  inference mode, the only place an inference tensor may be written. Forge's transformer blocks also add each
  attention's output into their input in place, the tensor their norms saved: the norms get a copy
  (`lib_align.autograd.norm_inputs_copied`).
- modules/sd_samplers_cfg_denoiser.py hands `CFGDenoiserParams` the forward's own x (cond and uncond are batched
  later, in backend/sampling/sampling_function.py), one row per image, in k-diffusion space with a true sigma. For
  k-diffusion samplers that x IS the sampler's; the timestep samplers (DDIM, PLMS, UniPC: `classic_ddim_eps_estimation`)
  pass the sampler's z_t scaled by sqrt(sigma^2 + 1) as a new tensor, whose value the same forward goes on to use for
  its eps: both are written.
- Forge moves models between devices itself (backend/memory_management.py): the text encoder is loaded before T
  is computed.
How the models' objects are reached (the KModel and its UNet, the text engines, the conditioning form):
`ForgeReach` (`lib_align.families.forge`, host-free).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from backend import memory_management
from torch import Tensor, nn

from ..autograd import gradient_pass
from ..families import ModelFamily, family_for
from ..families.forge import CONTROL_FOR, QUANTISED, ForgeReach, storage_dtype
from .host import Host, StepLatent


class Forge(ForgeReach, Host):
    name = "Forge"

    def family(self, model: Any) -> ModelFamily | None:
        return family_for(model, self, memory_management.text_encoder_device())

    def model_refusal(self, model: Any) -> str | None:
        family = family_for(model, self)
        if family is None:
            return self.unsupported(model)
        stored = storage_dtype(family.unet)
        if stored in QUANTISED:
            return (f"quantised UNet weights ({stored}) are not supported: T-SAM takes a gradient through the UNet, "
                    f"validated for fp16/bf16/fp32 weights only (set Diffusion in Low Bits to Automatic, or load an "
                    f"fp16 checkpoint)")
        if getattr(model, "is_inpaint", False):
            return "inpainting models are not supported on Forge"
        predictor = self.kmodel(model).predictor
        kind = str(getattr(predictor, "prediction_type", "epsilon"))
        if kind not in ("epsilon", "eps", "v_prediction") or float(getattr(predictor, "sigma_data", 1.0)) != 1.0:
            return f"models with '{kind}' prediction are not supported (eps and v only)"
        return None

    def attention_name(self) -> str | None:
        from backend import attention  # picks attention_xformers / _pytorch / _split / _sub_quad at import

        return getattr(attention.attention_function, "__name__", None)

    def pass_cond(self, family: ModelFamily, cond: Any, latent: StepLatent) -> Any:
        """Forge applies ControlNet inside its own UNet call: backend/sampling/sampling_function.py sets the
        links' `transformer_options` and passes `control.get_control(input_x, sigma, c, len(cond_or_uncond))` to
        the UNet, whose `apply_control` adds (and pops) the residuals per stage. T-SAM's pass does the same for its
        conditional rows, at every evaluation (the lists are popped, and the control depends on the latent): a
        fresh control from `control_for(z)`, computed as the host computes it — under inference mode, without
        gradient — so the residuals are constants of the pass and the gradient runs through the UNet's blocks."""
        linked = getattr(family.model.forge_objects.unet, "controlnet_linked_list", None)
        if linked is None:
            return cond
        sigma = latent.level
        rows = int(sigma.shape[0])
        options = dict(family.model.forge_objects.unet.model_options.get("transformer_options", {}))
        # sampling_function's keys for a batch of conditional rows only (COND = 0: compute_cond_mark/_indices)
        options.update(cond_or_uncond=[0], sigmas=sigma, cond_mark=torch.zeros(rows).to(sigma),
                       cond_indices=list(range(rows)), uncond_indices=[])

        def control_for(z: Tensor) -> dict | None:
            link = linked
            while link is not None:
                link.transformer_options = options
                link = link.previous_controlnet
            scale = (sigma.float() ** 2 + 1.0).sqrt().view(-1, *([1] * (z.dim() - 1)))
            with torch.inference_mode():
                x_noisy = (z.detach() * scale).to(z.dtype)  # the sampler's x for this z: calculate_input undoes it
                control = linked.get_control(x_noisy, sigma, {**cond, "transformer_options": options}, 1)
            if control is None:
                return None
            return {key: [c.clone() if isinstance(c, Tensor) else c for c in values]
                    for key, values in control.items()}  # normal tensors: the UNet adds them into its graph

        return {**cond, CONTROL_FOR: control_for}

    def text_ready(self, family: ModelFamily) -> None:
        memory_management.load_model_gpu(family.model.forge_objects.clip.patcher)

    def gradient(self, unet: nn.Module) -> contextlib.AbstractContextManager:
        return gradient_pass(unet)

    def step_latent(self, family: ModelFamily, denoiser: Any, params: Any, sampler_x: Tensor, batch: int) -> StepLatent:
        x = params.x
        if x.shape[0] != batch:
            raise RuntimeError(f"expected one latent row per image ({batch}), got {x.shape[0]}")
        sigma = params.sigma[:batch]
        scaled = bool(getattr(denoiser, "classic_ddim_eps_estimation", False))

        def write(x_new: Tensor) -> None:
            with torch.inference_mode():  # the host's tensors are inference tensors: written in place only here
                if sampler_x is not x:  # DDIM & co.: the sampler's z_t = x / sqrt(sigma^2 + 1); add the change
                    delta = x_new.to(x.dtype) - x  # (an unchanged x leaves z bitwise as it was)
                    if scaled:
                        delta = delta / (sigma.float() ** 2 + 1.0).sqrt().view(-1, *([1] * (x.dim() - 1)))
                    sampler_x.add_(delta.to(sampler_x.dtype))
                x.copy_(x_new.to(x.dtype))

        return StepLatent(x, sigma, self.sigma_to_t(family), write)
