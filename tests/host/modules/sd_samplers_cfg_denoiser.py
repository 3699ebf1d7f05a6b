"""Mirrors modules/sd_samplers_cfg_denoiser.py (CFGDenoiser.forward) on every point T-SAM depends on:

- `x_in` is a NEW tensor: cond rows (repeated per AND sub-prompt) followed by the uncond rows;
- `on_cfg_denoiser` gets CFGDenoiserParams(x_in, image_cond_in, sigma_in, state.sampling_step, ..., denoiser=self)
  and x, image_cond, sigma, text_cond, text_uncond are read back from it;
- the inner model (k-diffusion's CompVisDenoiser, or the timestep denoiser) is called once for cond+uncond when their
  token counts match, separately otherwise; CFG is combined per image with the sub-prompt weights;
- `self.step` counts denoiser calls and is incremented at the end;
- SDXL: conds are dicts (prompt_parser.DictWithShape {"crossattn", "vector"}), so `text_cond` / `text_uncond` in
  the callback are dicts; rows are joined and sliced per key (catenate_conds / subscript_cond) and the inner model
  gets {"crossattn", "vector", "c_concat": [image_cond]} (make_condition_dict), SD1 {"c_crossattn", "c_concat"}.
Simplified: no masks / inpainting blend, no refiner switch, no edit (InstructPix2Pix) model, no live preview.
"""

from __future__ import annotations

import torch

from modules import devices, prompt_parser, sd_samplers_common
from modules.script_callbacks import CFGDenoiserParams, cfg_denoiser_callback
from modules.shared import opts, state


def catenate_conds(conds):
    if not isinstance(conds[0], dict):
        return torch.cat(conds)
    return {key: torch.cat([x[key] for x in conds]) for key in conds[0].keys()}


def subscript_cond(cond, a, b):
    if not isinstance(cond, dict):
        return cond[a:b]
    return {key: vec[a:b] for key, vec in cond.items()}


class CFGDenoiser(torch.nn.Module):
    def __init__(self, sampler):
        super().__init__()
        self.model_wrap = None
        self.mask = None
        self.nmask = None
        self.init_latent = None
        self.steps = None
        self.total_steps = None
        self.step = 0
        self.image_cfg_scale = None
        self.padded_cond_uncond = False
        self.sampler = sampler
        self.p = None

    @property
    def inner_model(self):
        raise NotImplementedError()

    def combine_denoised(self, x_out, conds_list, uncond, cond_scale):
        denoised_uncond = x_out[-uncond.shape[0]:]
        denoised = torch.clone(denoised_uncond)
        for i, conds in enumerate(conds_list):
            for cond_index, weight in conds:
                denoised[i] += (x_out[cond_index] - denoised_uncond[i]) * (weight * cond_scale)
        return denoised

    def get_pred_x0(self, x_in, x_out, sigma):
        return x_out

    def forward(self, x, sigma, uncond, cond, cond_scale, s_min_uncond, image_cond):
        if state.interrupted or state.skipped:
            raise sd_samplers_common.InterruptedException

        conds_list, tensor = prompt_parser.reconstruct_multicond_batch(cond, self.step)
        uncond = prompt_parser.reconstruct_cond_batch(uncond, self.step)
        batch_size = len(conds_list)
        repeats = [len(conds_list[i]) for i in range(batch_size)]

        if isinstance(uncond, dict):  # SDXL: the sgm cond dict itself, plus the image cond (unused by the base model)
            def make_condition_dict(c_crossattn, c_concat):
                return {**c_crossattn, "c_concat": [c_concat]}
        else:
            def make_condition_dict(c_crossattn, c_concat):
                return {"c_crossattn": [c_crossattn], "c_concat": [c_concat]}

        x_in = torch.cat([torch.stack([x[i] for _ in range(n)]) for i, n in enumerate(repeats)] + [x])
        sigma_in = torch.cat([torch.stack([sigma[i] for _ in range(n)]) for i, n in enumerate(repeats)] + [sigma])
        image_cond_in = torch.cat([torch.stack([image_cond[i] for _ in range(n)]) for i, n in enumerate(repeats)]
                                  + [image_cond])

        denoiser_params = CFGDenoiserParams(x_in, image_cond_in, sigma_in, state.sampling_step, state.sampling_steps,
                                            tensor, uncond, self)
        cfg_denoiser_callback(denoiser_params)
        x_in = denoiser_params.x
        image_cond_in = denoiser_params.image_cond
        sigma_in = denoiser_params.sigma
        tensor = denoiser_params.text_cond
        uncond = denoiser_params.text_uncond
        skip_uncond = False

        if opts.skip_early_cond != 0.0 and self.step / self.total_steps <= opts.skip_early_cond:
            skip_uncond = True
            x_in = x_in[:-batch_size]
            sigma_in = sigma_in[:-batch_size]

        if tensor.shape[1] == uncond.shape[1] or skip_uncond:
            cond_in = tensor if skip_uncond else catenate_conds([tensor, uncond])
            x_out = self.inner_model(x_in, sigma_in, cond=make_condition_dict(cond_in, image_cond_in))
        else:
            x_out = torch.zeros_like(x_in)
            rows = tensor.shape[0]
            x_out[:rows] = self.inner_model(x_in[:rows], sigma_in[:rows],
                                            cond=make_condition_dict(subscript_cond(tensor, 0, rows),
                                                                     image_cond_in[:rows]))
            x_out[-uncond.shape[0]:] = self.inner_model(
                x_in[-uncond.shape[0]:], sigma_in[-uncond.shape[0]:],
                cond=make_condition_dict(uncond, image_cond_in[-uncond.shape[0]:]))

        denoised_image_indexes = [x[0][0] for x in conds_list]
        if skip_uncond:
            fake_uncond = torch.cat([x_out[i:i + 1] for i in denoised_image_indexes])
            x_out = torch.cat([x_out, fake_uncond])

        devices.test_for_nans(x_out, "unet")
        denoised = self.combine_denoised(x_out, conds_list, uncond, 1.0 if skip_uncond else cond_scale)
        self.sampler.last_latent = self.get_pred_x0(torch.cat([x_in[i:i + 1] for i in denoised_image_indexes]),
                                                    torch.cat([x_out[i:i + 1] for i in denoised_image_indexes]),
                                                    sigma)
        self.step += 1
        return denoised
