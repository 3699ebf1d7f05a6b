"""Mirrors extensions/sd-webui-controlnet/scripts/hook.py (Mikubill/sd-webui-controlnet) on what reaches T-SAM:
`UnetHook.hook` keeps `model._original_forward = model.forward` and sets `model.forward = forward_webui.__get__(model,
UNetModel)` on the UNet instance; `restore` puts the original back. Its forward, for ControlNet units:
- `control = param.control_model(x=x_in, hint=hint, timesteps=timesteps, context=context)` — not under no_grad —,
  scaled by `param.weight` (13 scales, one per skip connection and the middle block);
- "U-Net Encoder": the time embedding, every input block and the middle block under `th.no_grad()`;
- the middle block's output + `total_controlnet_embedding.pop()`; each decoder block gets
  `th.cat([h, hs.pop() + total_controlnet_embedding.pop()], dim=1)`;
- a unit whose `guidance_stopped` is set adds nothing (`guidance_schedule_handler`, an on_cfg_denoiser callback:
  stopped while `current_sampling_percent < guidance_start or > guidance_end`, the percent being
  `sampling_step / total_sampling_steps` — the host's value, one step behind the model call).
The script hooks in `process` and restores in `postprocess`, as controlnet.py's `Script` does.
Simplified: the control model is a perturbed copy of the UNet's own encoder (the real one is a trained copy with zero
convolutions and a hint encoder; no hint image here); no context marker token, preprocessors, T2I adapters,
reference-only, inpainting, low-vram moves.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from harness import EncoderCopy
from ldm.modules.diffusionmodules.util import timestep_embedding
from modules import script_callbacks, scripts
from torch import nn


@dataclass
class Unit:
    weight: float = 1.0
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    guidance_stopped: bool = False


class ControlModel(EncoderCopy):
    """A copy of the UNet's time embedding, input blocks and middle block: 13 residuals for a 12-block encoder."""

    def forward(self, x, hint=None, timesteps=None, context=None):
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels, repeat_only=False))
        outs, h = [], x
        for module in self.input_blocks:
            h = module(h, emb, context)
            outs.append(0.1 * h)
        outs.append(0.1 * self.middle_block(h, emb, context))
        return outs


class ControlNetHook:
    def __init__(self, units: list[Unit]) -> None:
        self.units = units
        self.control_models: dict[int, ControlModel] = {}

    def hook(self, model: nn.Module) -> None:
        outer = self
        control_model = self.control_models.setdefault(id(model), ControlModel(model))

        def forward(self, x, timesteps=None, context=None, y=None, **kwargs):
            total = [0.0] * 13
            for unit in outer.units:
                if unit.guidance_stopped:
                    continue
                control = control_model(x=x, hint=None, timesteps=timesteps, context=context)
                control = [c * scale for c, scale in zip(control, [unit.weight] * 13, strict=True)]
                total = [c + t for c, t in zip(control, total, strict=True)]
            hs = []
            with torch.no_grad():
                t_emb = timestep_embedding(timesteps, self.model_channels, repeat_only=False).to(x.dtype)
                emb = self.time_embed(t_emb)
                h = x.type(self.dtype)
                for module in self.input_blocks:
                    h = module(h, emb, context)
                    hs.append(h)
                h = self.middle_block(h, emb, context)
            h = h + total.pop()
            for module in self.output_blocks:
                h = torch.cat([h, hs.pop() + total.pop()], dim=1)
                h = module(h, emb, context)
            h = h.type(x.dtype)
            return self.out(h)

        def forward_webui(*args, **kwargs):
            return forward(*args, **kwargs)

        model._original_forward = model.forward
        model.forward = forward_webui.__get__(model, type(model))
        script_callbacks.on_cfg_denoiser(self.guidance_schedule_handler)

    def guidance_schedule_handler(self, params: Any) -> None:
        percent = params.sampling_step / params.total_sampling_steps
        for unit in self.units:
            unit.guidance_stopped = percent < unit.guidance_start or percent > unit.guidance_end

    def restore(self, model: nn.Module) -> None:
        script_callbacks.remove_callbacks_for_function(self.guidance_schedule_handler)
        if not hasattr(model, "_original_forward"):
            return
        model.forward = model._original_forward
        del model._original_forward


class ControlNetScript(scripts.Script):
    """Its units are set by the test (`units`); none = the extension installed but unused."""

    def __init__(self, unet: nn.Module) -> None:
        self.unet = unet
        self.units: list[Unit] = []
        self.latest: ControlNetHook | None = None

    def title(self):
        return "ControlNet"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def process(self, p, *args):
        if self.latest is not None:
            self.latest.restore(self.unet)
            self.latest = None
        if self.units:
            self.latest = ControlNetHook([copy.copy(u) for u in self.units])
            self.latest.hook(self.unet)

    def postprocess(self, p, processed, *args):
        if self.latest is not None:
            self.latest.restore(self.unet)
            self.latest = None
