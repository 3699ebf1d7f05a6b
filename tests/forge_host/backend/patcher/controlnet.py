"""Mirrors backend/patcher/controlnet.py (`ControlBase` / `ControlNet`) on what sampling_function and T-SAM reach:
`set_cond_hint(hint, strength, timestep_percent_range)`, `set_previous_controlnet`, `pre_run(model,
percent_to_sigma)` (sets `timestep_range` in sigma), `transformer_options` (set by sampling_function before each
call), and `get_control(x_noisy, t, cond, batched_number)`: the previous link's control first; outside
`timestep_range` (t is sigma: `t[0] > range[0] or t[0] < range[1]`) the previous control or None; else the control
model on `model_sampling_current.calculate_input(t, x_noisy)` at `timestep(t)` with `cond['c_crossattn']`, merged
by `control_merge`: every output times `strength`, the last one to 'middle', the others to 'output' (popped by the
UNet's `apply_control` from the end), then the previous control's entries added.
Simplified: the control model is a perturbed copy of the UNet's own encoder (no hint image: the real one adds its
hint encoder's output after the first block; here the hint scales nothing), no manual cast, no model function wrapper
or conditioning modifiers, no advanced weighting (compute_controlnet_weighting returns the control unchanged then).
"""

from __future__ import annotations

from typing import Any

from harness import EncoderCopy

from backend.nn.unet import timestep_embedding


class ControlModel(EncoderCopy):
    def forward(self, x, hint=None, timesteps=None, context=None, y=None):
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(x.dtype))
        outs, h = [], x
        for module in self.input_blocks:
            h = module(h, emb, context, {})
            outs.append(0.1 * h)
        outs.append(0.1 * self.middle_block(h, emb, context, {}))
        return outs


class ControlNet:
    def __init__(self, control_model: ControlModel) -> None:
        self.control_model = control_model
        self.previous_controlnet = None
        self.strength = 1.0
        self.timestep_percent_range = (0.0, 1.0)
        self.timestep_range = None
        self.transformer_options: dict = {}
        self.model_sampling_current = None
        self.calls = 0  # stand-in only: how often get_control ran the control model

    def set_cond_hint(self, cond_hint: Any, strength: float = 1.0, timestep_percent_range=(0.0, 1.0)) -> ControlNet:
        self.cond_hint_original = cond_hint
        self.strength = strength
        self.timestep_percent_range = timestep_percent_range
        return self

    def set_previous_controlnet(self, controlnet: Any) -> ControlNet:
        self.previous_controlnet = controlnet
        return self

    def pre_run(self, model: Any, percent_to_sigma: Any) -> None:
        self.timestep_range = (percent_to_sigma(self.timestep_percent_range[0]),
                               percent_to_sigma(self.timestep_percent_range[1]))
        self.model_sampling_current = model.predictor
        if self.previous_controlnet is not None:
            self.previous_controlnet.pre_run(model, percent_to_sigma)

    def cleanup(self) -> None:
        self.model_sampling_current = None
        self.timestep_range = None

    def get_models(self) -> list:
        return []

    def get_control(self, x_noisy, t, cond, batched_number):
        control_prev = None
        if self.previous_controlnet is not None:
            control_prev = self.previous_controlnet.get_control(x_noisy, t, cond, batched_number)
        if self.timestep_range is not None:
            if t[0] > self.timestep_range[0] or t[0] < self.timestep_range[1]:
                return control_prev
        timestep = self.model_sampling_current.timestep(t)
        x_noisy = self.model_sampling_current.calculate_input(t, x_noisy)
        self.calls += 1
        control = self.control_model(x=x_noisy, hint=None, timesteps=timestep.float(), context=cond["c_crossattn"],
                                     y=cond.get("y"))
        return self.control_merge(control, control_prev, x_noisy.dtype)

    def control_merge(self, control_output, control_prev, output_dtype):
        out = {"input": [], "middle": [], "output": []}
        for i, x in enumerate(control_output):
            key = "middle" if i == len(control_output) - 1 else "output"
            out[key].append((x * self.strength).to(output_dtype))
        if control_prev is not None:
            for key in ("input", "middle", "output"):
                o = out[key]
                for i, prev in enumerate(control_prev[key]):
                    if i >= len(o):
                        o.append(prev)
                    elif prev is not None:
                        o[i] = prev if o[i] is None else o[i] + prev
        return out
