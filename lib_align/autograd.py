"""Autograd through Forge's UNet: weights made under `torch.inference_mode()`, and residual adds done in place.

Forge's `backend/loader.py` builds the UNet and text encoders inside `@torch.inference_mode()` (`forge_loader`), so
their parameters are inference tensors. Autograd refuses to save an inference tensor for backward, and every layer
whose input needs a gradient saves its weight (the gradient of x W^T with respect to x is W): leaving inference mode
and enabling grad is not enough, the first Linear raises "Inference tensors cannot be saved for backward".

Cloning the weights would double the UNet's memory. Instead, for the duration of our pass each inference parameter
or buffer is replaced by a normal tensor that aliases the same storage (`Tensor.set_` on a tensor made outside
inference mode): no copy, the same values, and autograd accepts it. The host's own tensors are put back on every
exit path, so the host never sees the aliases.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn


def _alias(tensor: Tensor) -> Tensor:
    """A normal tensor viewing `tensor`'s storage (made outside inference mode: no copy, not an inference tensor)."""
    with torch.inference_mode(False):
        out = torch.empty(0, dtype=tensor.dtype, device=tensor.device)
        out.set_(tensor.untyped_storage(), tensor.storage_offset(), tensor.size(), tensor.stride())
    if isinstance(tensor, nn.Parameter):
        return nn.Parameter(out, requires_grad=False)
    return out


@contextlib.contextmanager
def autograd_usable(module: nn.Module) -> Iterator[int]:
    """Inside the block, `module`'s inference-tensor parameters and buffers are normal aliases of themselves.

    Yields how many were swapped (0 where the host made none, e.g. A1111: then nothing changes).
    """
    swapped: list[tuple[dict, str, Tensor]] = []
    try:
        for sub in module.modules():
            for store in (sub._parameters, sub._buffers):
                for name, tensor in list(store.items()):
                    if tensor is not None and tensor.is_inference():
                        store[name] = _alias(tensor)
                        swapped.append((store, name, tensor))
        yield len(swapped)
    finally:
        for store, name, tensor in reversed(swapped):
            store[name] = tensor


@contextlib.contextmanager
def norm_inputs_copied(module: nn.Module, norms: tuple[str, ...] = ("norm1", "norm2")) -> Iterator[int]:
    """Inside the block, the transformer blocks' `norm1` / `norm2` get a copy of their input.

    Forge's BasicTransformerBlock adds each attention's output to its input in place (`x += n` after attn1 and after
    attn2, backend/nn/unet.py), and that input is the very tensor norm1 / norm2 saved for their backward: autograd
    then refuses the backward ("modified by an inplace operation"). With a copy, the norm saves the copy and the
    block's in-place add changes a tensor nothing saved; the values and the gradient are the same. ldm/sgm add out of
    place and need none of this. Yields how many norms were given a copy; the hooks go on every exit path.
    """
    handles = []

    def copy_input(_module: nn.Module, args: tuple) -> tuple:
        return (args[0].clone(), *args[1:])

    try:
        for sub in module.modules():
            if hasattr(sub, "attn2") and hasattr(sub, "attn1"):  # a transformer block
                for name in norms:
                    norm = getattr(sub, name, None)
                    if isinstance(norm, nn.Module):
                        handles.append(norm.register_forward_pre_hook(copy_input))
        yield len(handles)
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def gradient_pass(unet: nn.Module) -> Iterator[None]:
    """Everything a differentiable UNet pass needs inside a host that samples under inference mode (Forge): out of
    inference mode with grad on, the weights as normal aliases, the transformer blocks' norms given copies."""
    with torch.inference_mode(False), torch.enable_grad(), autograd_usable(unet), norm_inputs_copied(unet):
        yield
