"""Floating-point operations of one call, counted per aten op (matmuls, convolutions and their backward), so that
the saving of the truncated pass can be read independently of the hardware and of the noise of timings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode

try:  # torch >= 2.1
    from torch.utils.flop_counter import flop_registry
except ImportError:  # pragma: no cover - older torch
    flop_registry = None


class _Counter(TorchDispatchMode):
    """torch's own FlopCounterMode also tracks modules with backward hooks, which `autograd.grad(inputs=...)`
    refuses; this counts the same formulas without them."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += int(formula(*args, **kwargs, out_val=out))
        return out


def count_flops(fn: Callable[[], Any]) -> float:
    """FLOPs of `fn()` (forward and backward ops alike); NaN where this torch has no formula table."""
    if flop_registry is None:
        return float("nan")
    with _Counter() as counter:
        fn()
    return float(counter.total)
