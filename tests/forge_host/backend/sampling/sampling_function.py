"""Mirrors backend/sampling/sampling_function.py: what Forge's CFGDenoiser calls once per step, and the
prepare / cleanup around each sampling run.

`sampling_function(self, denoiser_params, cond_scale, cond_composition)` reads x, sigma, text_cond, text_uncond and
image_cond back from the params (so an on_cfg_denoiser callback can replace them), compiles the conds, attaches
`c_concat` only when the image cond matches x in batch and spatial size (never for txt2img's 1x1 dummy), links the
UNet patcher's ControlNets, runs the model_options' conditioning modifiers, and returns (denoised, cond_pred,
uncond_pred). The UNet runs ONCE for cond and uncond when their conds can be catenated, on a NEW tensor built from
views of x, with Forge's row order: the entries are batched from the last to the first, so the uncond rows come
FIRST ([uncond x B, cond x B]; transformer_options["cond_or_uncond"] == [1, 0]). With cond_scale 1 the uncond is
not run at all (unless model_options["disable_cfg1_optimization"]). `transformer_options` for the call is a copy of
model_options["transformer_options"] plus cond_or_uncond, sigmas, cond_mark, cond_indices, uncond_indices.
Simplified: no area / mask / timestep-range conds, no memory-driven splitting of the batch (everything fits),
no low-VRAM warning.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from backend import memory_management
from backend.sampling.condition import Condition, compile_conditions, compile_weighted_conditions

COND, UNCOND = 0, 1


def _model_inputs(entry: dict, x_in: Tensor) -> dict[str, Any]:
    """get_area_and_mult for a whole-image cond: the input (a view of x), mult 1, the per-batch conditioning."""
    conditioning = {name: c.process_cond(batch_size=x_in.shape[0], device=x_in.device)
                    for name, c in entry["model_conds"].items()}
    return dict(input_x=x_in[:, :, :x_in.shape[2], :x_in.shape[3]], conditioning=conditioning,
                control=entry.get("control"))


def _can_concat(a: dict, b: dict) -> bool:
    if a["input_x"].shape != b["input_x"].shape or a["control"] is not b["control"]:
        return False
    ca, cb = a["conditioning"], b["conditioning"]
    return ca is cb or (ca.keys() == cb.keys() and all(ca[k].can_concat(cb[k]) for k in ca))


def calc_cond_uncond_batch(model: Any, cond: list[dict], uncond: list[dict] | None, x_in: Tensor, timestep: Tensor,
                           model_options: dict) -> tuple[Tensor, Tensor]:
    out_cond, out_count = torch.zeros_like(x_in), torch.ones_like(x_in) * 1e-37
    out_uncond, out_uncond_count = torch.zeros_like(x_in), torch.ones_like(x_in) * 1e-37
    to_run = [(_model_inputs(c, x_in), COND) for c in cond]
    to_run += [(_model_inputs(u, x_in), UNCOND) for u in (uncond or [])]
    while to_run:
        first = to_run[0][0]
        batch = [i for i, (p, _) in enumerate(to_run) if _can_concat(p, first)]
        batch.reverse()  # Forge batches from the last entry: the uncond rows come first
        picked = [to_run.pop(i) for i in batch]
        cond_or_uncond = [kind for _, kind in picked]
        input_x = torch.cat([p["input_x"] for p, _ in picked])
        names = picked[0][0]["conditioning"].keys()
        c: dict[str, Any] = {name: picked[0][0]["conditioning"][name].concat(
            [p["conditioning"][name] for p, _ in picked[1:]]) for name in names}
        timestep_ = torch.cat([timestep] * len(picked))
        transformer_options = dict(model_options.get("transformer_options", {}))
        transformer_options["cond_or_uncond"] = cond_or_uncond[:]
        transformer_options["sigmas"] = timestep
        n = int(timestep.shape[0])
        transformer_options["cond_mark"] = torch.Tensor([k for k in cond_or_uncond for _ in range(n)]).to(timestep)
        transformer_options["cond_indices"] = [i * n + j for i, k in enumerate(cond_or_uncond) if k == COND
                                               for j in range(n)]
        transformer_options["uncond_indices"] = [i * n + j for i, k in enumerate(cond_or_uncond) if k == UNCOND
                                                 for j in range(n)]
        c["transformer_options"] = transformer_options
        control = picked[0][0]["control"]
        if control is not None:
            link = control
            while link is not None:
                link.transformer_options = transformer_options
                link = link.previous_controlnet
            c["control"] = control.get_control(input_x, timestep_, dict(c), len(cond_or_uncond))
        if "model_function_wrapper" in model_options:
            output = model_options["model_function_wrapper"](model.apply_model, {
                "input": input_x, "timestep": timestep_, "c": c, "cond_or_uncond": cond_or_uncond})
        else:
            output = model.apply_model(input_x, timestep_, **c)
        for chunk, kind in zip(output.chunk(len(picked)), cond_or_uncond, strict=True):
            if kind == COND:
                out_cond += chunk
                out_count += 1.0
            else:
                out_uncond += chunk
                out_uncond_count += 1.0
    return out_cond / out_count, out_uncond / out_uncond_count


def sampling_function_inner(model: Any, x: Tensor, timestep: Tensor, uncond: list[dict] | None, cond: list[dict],
                            cond_scale: float, model_options: dict, seed: Any = None, return_full: bool = False
                            ) -> Any:
    edit_strength = sum(item.get("strength", 1) for item in cond)
    uncond_ = None if math.isclose(cond_scale, 1.0) and not model_options.get("disable_cfg1_optimization") else uncond
    for fn in model_options.get("sampler_pre_cfg_function", []):
        model, cond, uncond_, x, timestep, model_options = fn(model, cond, uncond_, x, timestep, model_options)
    cond_pred, uncond_pred = calc_cond_uncond_batch(model, cond, uncond_, x, timestep, model_options)
    if "sampler_cfg_function" in model_options:
        args = {"cond": x - cond_pred, "uncond": x - uncond_pred, "cond_scale": cond_scale, "timestep": timestep,
                "input": x, "sigma": timestep, "cond_denoised": cond_pred, "uncond_denoised": uncond_pred,
                "model": model, "model_options": model_options}
        cfg_result = x - model_options["sampler_cfg_function"](args)
    elif not math.isclose(edit_strength, 1.0):
        cfg_result = uncond_pred + (cond_pred - uncond_pred) * cond_scale * edit_strength
    else:
        cfg_result = uncond_pred + (cond_pred - uncond_pred) * cond_scale
    for fn in model_options.get("sampler_post_cfg_function", []):
        cfg_result = fn({"denoised": cfg_result, "cond": cond, "uncond": uncond, "model": model,
                         "uncond_denoised": uncond_pred, "cond_denoised": cond_pred, "sigma": timestep,
                         "model_options": model_options, "input": x})
    return (cfg_result, cond_pred, uncond_pred) if return_full else cfg_result


def sampling_function(self: Any, denoiser_params: Any, cond_scale: float, cond_composition: Any) -> tuple:
    unet_patcher = self.inner_model.inner_model.forge_objects.unet
    model = unet_patcher.model
    control = unet_patcher.controlnet_linked_list
    x = denoiser_params.x
    timestep = denoiser_params.sigma
    uncond = compile_conditions(denoiser_params.text_uncond)
    cond = compile_weighted_conditions(denoiser_params.text_cond, cond_composition)
    model_options = unet_patcher.model_options
    seed = self.p.seeds[0]
    image_cond_in = unet_patcher.extra_concat_condition
    if image_cond_in is None:
        image_cond_in = denoiser_params.image_cond
    if isinstance(image_cond_in, torch.Tensor) and image_cond_in.shape[0] == x.shape[0] \
            and image_cond_in.shape[2:] == x.shape[2:]:
        for entry in cond + (uncond or []):
            entry["model_conds"]["c_concat"] = Condition(image_cond_in)
    if control is not None:
        for entry in cond + (uncond or []):
            entry["control"] = control
    for modifier in model_options.get("conditioning_modifiers", []):
        model, x, timestep, uncond, cond, cond_scale, model_options, seed = modifier(
            model, x, timestep, uncond, cond, cond_scale, model_options, seed)
    return sampling_function_inner(model, x, timestep, uncond, cond, cond_scale, model_options, seed,
                                   return_full=True)


def sampling_prepare(unet: Any, x: Tensor) -> None:
    """Loads the UNet (and extra patchers) with the memory for a [2B, C, H, W] pass reserved."""
    b, c, h, w = x.shape
    estimate = unet.model_options.get("memory_peak_estimation_modifier", unet.memory_required)
    memory = estimate([b * 2, c, h, w])
    extra_memory = unet.extra_preserved_memory_during_sampling
    extra_patchers = list(unet.extra_model_patchers_during_sampling)
    memory_management.load_models_gpu(models=[unet] + extra_patchers, memory_required=memory,
                                      hard_memory_preservation=extra_memory)
    for cnet in unet.list_controlnets():
        cnet.pre_run(unet.model, lambda p: unet.model.predictor.percent_to_sigma(p))


def sampling_cleanup(unet: Any) -> None:
    for cnet in unet.list_controlnets():
        cnet.cleanup()
