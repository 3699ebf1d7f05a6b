"""Floating-point operations of one call, counted per aten op (matmuls, convolutions and their backward), so that
the saving of the truncated pass can be read independently of the hardware and of the noise of timings."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

from .needs import FLOP_FORMULAS, require


def _formulas() -> tuple[dict, Callable[..., int]]:
    """torch's per-op formulas and a call of one on an op's arguments and output, as this torch's own FlopCounterMode
    calls them: torch >= 2.4 `flop_registry` with the output as `out_val=`, 2.2 and 2.3 the same with `out=` (the
    registry's wrappers turn tensors into shapes), 2.1 `flop_mapping` of the bare formulas, which take shapes and
    `out_shape=`. The formulas are the same; only the calling convention moved."""
    from torch.utils import flop_counter

    if hasattr(flop_counter, "flop_registry"):
        wrapper = flop_counter.shape_wrapper(lambda *args, **kwargs: 0)
        keyword = "out_val" if "out_val" in inspect.signature(wrapper, follow_wrapped=False).parameters else "out"

        def call(formula: Callable[..., int], args: tuple, kwargs: dict, out: Any) -> int:
            return formula(*args, **kwargs, **{keyword: out})

        return flop_counter.flop_registry, call

    def call_with_shapes(formula: Callable[..., int], args: tuple, kwargs: dict, out: Any) -> int:
        args, kwargs, out_shape = tree_map(flop_counter.get_shape, (args, kwargs, out))
        return formula(*args, **kwargs, out_shape=out_shape)

    return flop_counter.flop_mapping, call_with_shapes


class _Counter(TorchDispatchMode):
    """torch's own FlopCounterMode also tracks modules with backward hooks, which `autograd.grad(inputs=...)`
    refuses; this counts the same formulas without them."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0
        self.formulas, self.call = _formulas()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = self.formulas.get(func._overloadpacket)
        if formula is not None:
            self.total += int(self.call(formula, args, kwargs, out))
        return out


def count_flops(fn: Callable[[], Any]) -> float:
    """FLOPs of `fn()` (forward and backward ops alike). TorchTooOld on a torch without the formulas (< 2.1)."""
    require("bench.flops", FLOP_FORMULAS)
    with _Counter() as counter:
        fn()
    return float(counter.total)
