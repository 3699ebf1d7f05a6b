"""T-SAM's pass and the host's plain CFG step as calls on a given UNet, and the full-size families on the meta
device: what bench/native.py counts in FLOPs, bench/memory.py in bytes and tools/check_memory_gpu.py measures on a
GPU — one definition of the calls for all three.

The pass is T-SAM's as `AlignSession` runs it (the conditional rows, the capture stopping the forward after the last
map at the family's level, the weights frozen, the loss and its gradient to the latent; `low`: inside the memory
mode's block checkpointing); the plain step is one UNet call on the CFG batch (twice the rows) without gradient.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_map

from lib_align.capture import checkpointed_blocks
from lib_align.config import AlignConfig
from lib_align.session import AlignSession, frozen_weights

META = torch.device("meta")
PROMPT = "a black car and a white clock"
NATIVE_SIDE = {"SD1": 64, "SD2": 96, "SDXL": 128}  # latent sides of 512², 768², 1024²

ApplyModel = Callable[[Tensor, Tensor, Any], Any]


@dataclass
class PassCalls:
    """`run_pass(low)` and `plain_step()` on one UNet; `inputs` / `plain_inputs`: the tensors each call finds made
    (weights, latent, conditioning), which a memory figure does not count."""

    run_pass: Callable[[bool], None]
    plain_step: Callable[[], None]
    inputs: list[Tensor]
    plain_inputs: list[Tensor]


def _rows(value: Any, n: int) -> Any:
    if isinstance(value, dict):
        return {k: _rows(v, n) for k, v in value.items()}
    return torch.cat([value] * n)


def pass_calls(unet: nn.Module, apply_model: ApplyModel, cond: Any, targets: list, level: int,
               latent_hw: tuple[int, int], batch: int = 1) -> PassCalls:
    """The calls for `batch` images of one prompt (`cond`: one image's conditioning, `targets`: its T), on the device
    of the UNet's weights."""
    device = next(unet.parameters()).device
    session = AlignSession(unet, apply_model, [targets] * batch, AlignConfig.paper(), 50, latent_hw, level=level)
    capture = session._capture_once()
    z0 = torch.randn((batch, 4, *latent_hw), device=device)
    t = torch.full((batch,), 999.0, device=device)
    cond_rows = _rows(cond, batch)

    def run_pass(low: bool) -> None:
        z = z0.detach().requires_grad_(True)
        memory_mode = checkpointed_blocks(unet, capture) if low else contextlib.nullcontext()
        with capture, memory_mode, frozen_weights(unet), torch.enable_grad():
            maps = capture.run(lambda: apply_model(z, t, cond_rows))
            torch.autograd.grad(session.losses(maps).sum(), [z])
        capture.reset()

    x2, t2, c2 = torch.cat([z0, z0]), torch.cat([t, t]), _rows(cond_rows, 2)

    def plain_step() -> None:
        with torch.no_grad():
            apply_model(x2, t2, c2)

    inputs = [*unet.parameters(), *unet.buffers(), z0, t, *tree_flatten(cond_rows)[0]]
    return PassCalls(run_pass, plain_step, inputs, [*inputs, x2, t2, *tree_flatten(c2)[0]])


@contextlib.contextmanager
def meta_autocast() -> Iterator[None]:
    """CUDA autocast's fp16 policy for the UNet's layers on the meta device (which autocast does not cover):
    linear and convolution in fp16, group and layer norm in fp32, as autograd sees them. Written as wrappers of
    `torch.nn.functional` (what the layers call) rather than a torch-function mode, because such a mode is off
    inside `torch.autograd.grad`, where the memory mode's checkpoints recompute their blocks. T-SAM's own maps and
    loss are fp32 by themselves (the real autocast is off there: `capture.full_precision`). The fp16 UNets of
    `full_size_family` run only inside it."""
    own = {name: getattr(F, name) for name in ("linear", "conv2d", "group_norm", "layer_norm")}

    def cast(src: torch.dtype, dst: torch.dtype, fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        def run(*args: Any, **kwargs: Any) -> Tensor:
            args, kwargs = tree_map(lambda v: v.to(dst) if isinstance(v, Tensor) and v.dtype == src else v,
                                    (args, kwargs))
            return fn(*args, **kwargs)
        return run

    try:
        F.linear = cast(torch.float32, torch.float16, own["linear"])
        F.conv2d = cast(torch.float32, torch.float16, own["conv2d"])
        F.group_norm = cast(torch.float16, torch.float32, own["group_norm"])
        F.layer_norm = cast(torch.float16, torch.float32, own["layer_norm"])
        yield
    finally:
        for name, fn in own.items():
            setattr(F, name, fn)


@dataclass(frozen=True)
class FullSize:
    """A full-size family on the meta device in fp16: its UNet, how the host calls it, one image's conditioning
    for the prompt, T of that prompt and the level of the maps."""

    unet: nn.Module
    apply_model: ApplyModel
    cond: Any
    targets: list
    level: int

    def calls(self, side: int, batch: int = 1) -> PassCalls:
        return pass_calls(self.unet, self.apply_model, self.cond, self.targets, self.level, (side, side), batch)


@functools.cache
def full_size_family(name: str, prompt: str = PROMPT) -> FullSize:
    """SD1, SD2 or SDXL at full size, shapes only; T from the family's tiny model for `prompt` (the FLOPs and bytes
    of the loss depend on the token count only)."""
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    from standalone.models import allow_any_latent_size, full_size_config, tiny_sd
    from standalone.pipeline import standalone_family
    from standalone.sd2 import full_size_sd2_config, tiny_sd2
    from standalone.sdxl import full_size_config as full_size_sdxl_config
    from standalone.sdxl import full_size_sdxl_unet, tiny_sdxl

    from .workload import UNetOnlyXL

    allow_any_latent_size()
    tiny = {"SD1": tiny_sd, "SD2": tiny_sd2, "SDXL": tiny_sdxl}[name]()
    family = standalone_family(tiny)
    chunks, words = family.tokenize(prompt)
    targets = family.targets(chunks, words, AlignConfig.paper().power)
    tokens = 77 * chunks.shape[0]
    if name == "SDXL":
        unet = full_size_sdxl_unet(META, torch.float16)
        params = full_size_sdxl_config().unet
        model = UNetOnlyXL(unet, tiny.alphas_cumprod).to(META)
        cond = {"crossattn": torch.randn((1, tokens, params["context_dim"]), device=META, dtype=torch.float16),
                "vector": torch.randn((1, params["adm_in_channels"]), device=META, dtype=torch.float16)}
        return FullSize(unet, model.apply_model, cond, targets, family.layout_level)
    config = (full_size_config() if name == "SD1" else full_size_sd2_config()).unet
    with META:
        unet = UNetModel(**config).half()
    unet.dtype = torch.float16
    context = torch.randn((1, tokens, config["context_dim"]), device=META, dtype=torch.float16)
    return FullSize(unet, lambda z, t, c: unet(z, t, context=c), context, targets, family.layout_level)
