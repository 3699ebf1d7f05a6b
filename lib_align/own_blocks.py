"""T-SAM's pass through the UNet's own blocks when another extension has replaced the UNet's forward.

ControlNet for A1111 (sd-webui-controlnet, scripts/hook.py `UnetHook.hook`) sets `model.forward` on the UNet
instance (keeping `model._original_forward`); its forward runs the time embedding, every input block and the
middle block under `torch.no_grad()` and adds the control residuals in the decoder. Through that forward the
latent's gradient reaches T-SAM's maps only through ControlNet's own copy of the encoder (and not at all at
weight 0, or after the unit's guidance end).

The rule, for any such extension (detected generically: an instance-level `forward` on the UNet): the maps T-SAM
reads are those of the model that makes the image, and the gradient runs through the UNet's own blocks, with what
the extension adds held constant for the pass. Per loss evaluation:
1. the extension's forward runs without gradient (T-SAM's capture paused), and a pre-hook on every top-level block
   up to the last one T-SAM needs records that block's inputs (h, emb, context) — then the forward stops;
2. the UNet's own forward runs with gradient, and the same pre-hooks hand each block the recorded emb and context
   and h' = h_ext + (h - h.detach()): the value is exactly the extension's (its residuals included), the derivative
   is that of the UNet's own path. With nothing added (a ControlNet unit at weight 0) h_ext == h and the pass is
   the plain UNet's, bit for bit.
Costs one more truncated forward without gradient per evaluation, only while a forward is replaced.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from .capture import top_level_blocks


class _Recorded(Exception):
    """Raised from the last needed block's pre-hook: the extension's forward has given every input T-SAM needs."""


def replaced_forward(unet: nn.Module) -> Any:
    """The forward another extension set on this UNet instance, or None when the class's own forward runs —
    also when the instance attribute is the class's forward bound to it (what hook.py's `restore` leaves behind:
    `model.forward = model._original_forward`)."""
    forward = unet.__dict__.get("forward")
    if forward is None:
        return None
    if getattr(forward, "__self__", None) is unet and getattr(forward, "__func__", None) is type(unet).forward:
        return None
    return forward


def needed_blocks(unet: nn.Module, last: nn.Module) -> list[nn.Module]:
    """The top-level blocks up to and including the one that holds module `last` (T-SAM's last map)."""
    blocks = top_level_blocks(unet) or []
    for i, block in enumerate(blocks):
        if any(m is last for m in block.modules()):
            return blocks[: i + 1]
    raise ValueError("the module T-SAM reads last is in none of the UNet's top-level blocks")


@contextlib.contextmanager
def _own_forward(unet: nn.Module) -> Iterator[None]:
    """The UNet's class forward for the duration (the extension's forward is put back on every exit path)."""
    replaced = unet.__dict__.pop("forward")
    try:
        yield
    finally:
        unet.forward = replaced


def through_own_blocks(unet: nn.Module, last: nn.Module, call: Callable[[], Any],
                       paused: Callable[[], contextlib.AbstractContextManager]) -> None:
    """Run `call` (a UNet call through the host's wrapper) as described in the module docstring. `last` is the
    module whose forward ends T-SAM's pass; `paused()` is a context in which the capture records nothing."""
    blocks = needed_blocks(unet, last)
    seen: dict[int, tuple[tuple, dict]] = {}

    def record(block: nn.Module, args: tuple, kwargs: dict) -> None:
        seen[id(block)] = (tuple(a.detach() if isinstance(a, Tensor) else a for a in args), dict(kwargs))
        if block is blocks[-1]:
            raise _Recorded

    handles = [block.register_forward_pre_hook(record, with_kwargs=True) for block in blocks]
    try:
        with torch.no_grad(), paused():
            call()
    except _Recorded:
        pass
    finally:
        for handle in handles:
            handle.remove()
    if len(seen) != len(blocks):
        raise RuntimeError(f"another extension's UNet forward ran {len(seen)} of the {len(blocks)} blocks T-SAM "
                           "needs; its maps cannot be read through it")

    def substitute(block: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        ref_args, ref_kwargs = seen[id(block)]
        if _same_inputs((args, kwargs), (ref_args, ref_kwargs)):
            return None  # nothing added here: the block's own inputs, and the plain UNet's graph, bit for bit
        h = args[0]
        return (ref_args[0] + (h - h.detach()), *ref_args[1:]), ref_kwargs

    handles = [block.register_forward_pre_hook(substitute, with_kwargs=True) for block in blocks]
    try:
        with _own_forward(unet):
            call()
    finally:
        for handle in handles:
            handle.remove()


def _same_inputs(ours: tuple[tuple, dict], theirs: tuple[tuple, dict]) -> bool:
    """Whether a block's inputs in our pass equal, value for value, those the extension's forward gave it."""
    (args, kwargs), (ref_args, ref_kwargs) = ours, theirs
    if len(args) != len(ref_args) or kwargs.keys() != ref_kwargs.keys():
        return False
    pairs = [*zip(args, ref_args, strict=True), *((kwargs[k], ref_kwargs[k]) for k in kwargs)]
    return all(torch.equal(a, b) if isinstance(a, Tensor) and isinstance(b, Tensor) else a is b
               for a, b in pairs)
