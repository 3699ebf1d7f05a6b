"""Each family's iteration against a plain CFG step in FLOPs at its native size — SD1 at 512², SDXL at 1024² —
counted on the meta device: the full-size UNets exist as shapes only (no weights, no compute), so the figures are
deterministic, need no GPU and take seconds. FLOPs do not depend on the dtype (fp16 on a GPU, fp32 here).

The iteration is T-SAM's pass as `AlignSession` runs it (the conditional row, batch 1, the capture stopping the
forward after the last map at the family's level, the weights frozen, the loss and its gradient to the latent);
the plain step is one UNet call on the CFG batch of 2 without gradient. T (token count) from the tiny model of the
family for the benchmark's prompt: the loss's cost depends on the token count only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from lib_align.capture import checkpointed_blocks
from lib_align.config import AlignConfig
from lib_align.session import AlignSession, frozen_weights
from standalone.pipeline import standalone_family

from .flops import count_flops

META = torch.device("meta")


def iteration_and_plain_step(unet: nn.Module, apply_model: Callable[[Tensor, Tensor, Any], Any], cond: Any,
                             targets: list, level: int, latent_hw: tuple[int, int]) -> tuple[float, float, float]:
    """(FLOPs of one T-SAM iteration, of one with the memory mode's checkpointing, of one plain CFG step) for a UNet
    on the meta device."""
    session = AlignSession(unet, apply_model, [targets], AlignConfig.paper(), 50, latent_hw, level=level)
    capture = session._capture_once()
    z0 = torch.randn((1, 4, *latent_hw), device=META)
    t = torch.full((1,), 999.0, device=META)

    def iteration(low: bool = False) -> None:
        z = z0.detach().requires_grad_(True)
        memory_mode = checkpointed_blocks(unet, capture) if low else contextlib.nullcontext()
        with capture, memory_mode, frozen_weights(unet), torch.enable_grad():
            maps = capture.run(lambda: apply_model(z, t, cond))
            torch.autograd.grad(session.losses(maps).sum(), [z])

    def plain_step() -> None:
        doubled = {k: torch.cat([v, v]) for k, v in cond.items()} if isinstance(cond, dict) else torch.cat([cond, cond])
        with torch.no_grad():
            apply_model(torch.cat([z0, z0]), torch.cat([t, t]), doubled)

    return count_flops(iteration), count_flops(lambda: iteration(low=True)), count_flops(plain_step)


def native_flops(prompt: str) -> dict[str, float]:
    """The figures for the JSON line: ratios, and the TFLOP of each side for context."""
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    from standalone.models import allow_any_latent_size, full_size_config, tiny_sd
    from standalone.sdxl import full_size_config as full_size_sdxl_config
    from standalone.sdxl import full_size_sdxl_unet, tiny_sdxl

    from .workload import UNetOnlyXL

    out: dict[str, float] = {}
    allow_any_latent_size()
    tiny1 = tiny_sd()
    family = standalone_family(tiny1)
    chunks, words = family.tokenize(prompt)
    with META:
        unet1 = UNetModel(**full_size_config().unet)
    context = torch.randn((1, 77 * chunks.shape[0], full_size_config().unet["context_dim"]), device=META)
    sd1 = iteration_and_plain_step(unet1, lambda z, t, c: unet1(z, t, context=c), context,
                                   family.targets(chunks, words, AlignConfig.paper().power), family.layout_level,
                                   (64, 64))
    tinyxl = tiny_sdxl()
    familyxl = standalone_family(tinyxl)
    chunks, words = familyxl.tokenize(prompt)
    unetxl = full_size_sdxl_unet(META)
    params = full_size_sdxl_config().unet
    sdxl = UNetOnlyXL(unetxl, tinyxl.alphas_cumprod).to(META)
    cond = {"crossattn": torch.randn((1, 77 * chunks.shape[0], params["context_dim"]), device=META),
            "vector": torch.randn((1, params["adm_in_channels"]), device=META)}
    xl = iteration_and_plain_step(unetxl, sdxl.apply_model, cond,
                                  familyxl.targets(chunks, words, AlignConfig.paper().power), familyxl.layout_level,
                                  (128, 128))
    for name, (iteration, low, plain) in (("sd1_512", sd1), ("sdxl_1024", xl)):
        out[f"{name}_iteration_tflop"] = iteration / 1e12
        out[f"{name}_iteration_tflop_low_memory"] = low / 1e12
        out[f"{name}_plain_step_tflop"] = plain / 1e12
    out["iteration_flops_vs_plain_step_sd1_512"] = sd1[0] / sd1[2]
    out["sdxl_iteration_flops_vs_plain_step"] = xl[0] / xl[2]
    out["sdxl_iteration_flops_vs_plain_step_low_memory"] = xl[1] / xl[2]
    return out
