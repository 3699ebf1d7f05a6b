"""The memory T-SAM's pass needs, counted on the meta device: full-size UNets as shapes only, every storage the
pass allocates followed from its creation to its release, as the CUDA caching allocator's `memory_allocated` sees
them (its block rounding and fragmentation aside). Deterministic, no GPU, seconds per figure.

What is modelled, and how:
- **The host's half precision.** A1111 samples an fp16 UNet under CUDA autocast, which the meta device does not
  have; `meta_autocast` applies autocast's policy to the UNet's layers at the level autograd sees: linears and
  convolutions in fp16, group and layer norms in fp32. T-SAM's own maps and loss stay fp32, as on the host.
- **The host's attention kernel** (A1111 1.10 `modules/sd_hijack_optimizations.py`; Forge `backend/attention.py`):
  `flash` is `--xformers` / `--opt-sdp-attention` / `sdp-no-mem` (and Forge's default, PyTorch SDPA or xformers):
  their fused kernels keep q, k, v, the output and the softmax's log-sum-exp [B, heads, n] for the backward, never
  the n x n probabilities. `split` is A1111's default without flags ("Automatic" picks Doggettx, priority 90 over
  sdp-no-mem's 80): einsum, softmax(dtype=q.dtype), einsum, which keeps the probability matrix of every layer.
  Neither kernel runs on the meta device, so each is written here with the tensors it keeps (flash: an autograd
  function that saves exactly that set; split: Doggettx's own ops in one slice — slicing does not change what the
  backward keeps).
- **The pass** and **the plain step** as bench/passes.py defines them (T-SAM's pass as `AlignSession` runs it, with
  and without the memory mode; the host's CFG call on twice the rows without gradient).

A figure is the peak of live bytes allocated inside the call, over what existed before it (weights, latent and
conditioning): what the call needs on top of the loaded model, as `torch.cuda.max_memory_allocated()` minus
`memory_allocated()` before it would say.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .needs import CHECKPOINT_ON_META, STORAGE_RELEASE, refused, require
from .passes import NATIVE_SIDE, PassCalls, full_size_family, meta_autocast

GIB = 1024.0**3
KERNELS = ("flash", "split")
NEEDS = (STORAGE_RELEASE, CHECKPOINT_ON_META)  # the counter; the memory mode's pass on the meta device


class LiveBytes(TorchDispatchMode):
    """Follows every storage created inside the mode until it is released; `peak` is the most bytes alive at once.

    Storages that existed before (`known`) are not counted, nor their views. TorchTooOld on a torch whose storages'
    releases it cannot see (< 2.2), before any weakref is made."""

    def __init__(self, known: Iterable[Tensor] = ()) -> None:
        require("bench.memory", STORAGE_RELEASE)
        super().__init__()
        self.known = {t.untyped_storage()._cdata for t in known}
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def _follow(self, tensor: Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self.known or key in self.live:
            return
        size = storage.nbytes()
        self.live[key] = size
        self.current += size
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._release, key)  # storages keep their Python object while C++ holds them

    def _release(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, Tensor):
                self._follow(value)
        return out


class _FlashShaped(torch.autograd.Function):
    """What a fused attention kernel (PyTorch SDPA flash / memory-efficient, xformers) keeps for its backward:
    q, k, v, the output and the log-sum-exp in fp32. Meta tensors only: the values are never computed."""

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        out = q.new_empty((*q.shape[:-1], v.shape[-1]))
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v, _out, _lse = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _heads(t: Tensor, heads: int) -> Tensor:
    b, n, inner = t.shape
    return t.view(b, n, heads, inner // heads).transpose(1, 2)


def _flash_forward(self: nn.Module, x: Tensor, context: Tensor | None = None, mask: Any = None, **_: Any) -> Tensor:
    """A1111's `scaled_dot_product_attention_forward` with the kernel's saved set (`_FlashShaped`)."""
    context = x if context is None else context
    q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
    out = _FlashShaped.apply(_heads(q, self.heads), _heads(k, self.heads), _heads(v, self.heads))
    b, _, n, d = out.shape
    return self.to_out(out.transpose(1, 2).reshape(b, n, self.heads * d))


def _split_forward(self: nn.Module, x: Tensor, context: Tensor | None = None, mask: Any = None, **_: Any) -> Tensor:
    """A1111's `split_cross_attention_forward` (Doggettx) in one slice."""
    context = x if context is None else context
    q_in, k_in, v_in = self.to_q(x), self.to_k(context), self.to_v(context)
    k_in = k_in * self.scale
    b, h = q_in.shape[0], self.heads
    q, k, v = (t.reshape(b, t.shape[1], h, -1).transpose(1, 2).reshape(b * h, t.shape[1], -1)
               for t in (q_in, k_in, v_in))
    s1 = torch.einsum("b i d, b j d -> b i j", q, k)
    s2 = s1.softmax(dim=-1, dtype=q.dtype)
    del s1
    r1 = torch.einsum("b i j, b j d -> b i d", s2, v)
    return self.to_out(r1.reshape(b, h, -1, r1.shape[-1]).transpose(1, 2).reshape(b, -1, h * r1.shape[-1]))


def _sdpa_forward(self: nn.Module, x: Tensor, context: Tensor | None = None, mask: Any = None, **_: Any) -> Tensor:
    """A1111's `scaled_dot_product_attention_forward` computed for real (tools/check_memory_gpu.py, on CUDA)."""
    context = x if context is None else context
    q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
    out = F.scaled_dot_product_attention(_heads(q, self.heads), _heads(k, self.heads), _heads(v, self.heads))
    b, _, n, d = out.shape
    return self.to_out(out.transpose(1, 2).reshape(b, n, self.heads * d).to(q.dtype))


@contextlib.contextmanager
def host_attention(kernel: str) -> Iterator[None]:
    """ldm's CrossAttention runs as the host's `kernel` would (the host replaces its forward the same way): "flash"
    and "split" as shapes for the count, "sdpa" computed for real."""
    from ldm.modules.attention import CrossAttention

    forward = {"flash": _flash_forward, "split": _split_forward, "sdpa": _sdpa_forward}[kernel]
    own = CrossAttention.forward
    CrossAttention.forward = forward
    try:
        yield
    finally:
        CrossAttention.forward = own


def peak_bytes(fn: Callable[[], Any], known: Iterable[Tensor]) -> int:
    """Peak live bytes allocated by `fn()` on the meta device, over the `known` tensors that existed before."""
    with meta_autocast(), LiveBytes(known) as live:
        fn()
        gc.collect()
    return live.peak


def pass_and_plain_step_bytes(calls: PassCalls, kernel: str) -> dict[str, int]:
    """Peak bytes of T-SAM's pass (normal and low memory) and of the plain CFG step with the host's `kernel`, the UNet
    on the meta device in fp16. TorchTooOld up front on a torch that cannot count it (`NEEDS`)."""
    require("bench.memory", *NEEDS)
    with host_attention(kernel):
        return {"pass": peak_bytes(lambda: calls.run_pass(False), calls.inputs),
                "pass_low": peak_bytes(lambda: calls.run_pass(True), calls.inputs),
                "plain_step": peak_bytes(calls.plain_step, calls.plain_inputs)}


def weight_bytes(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters()) * 2  # fp16


# -- the full-size families -----------------------------------------------------------------------------------------

FIT_SIDES = {"SD1": (32, 64, 96), "SD2": (48, 96, 128), "SDXL": (64, 96, 128)}  # latent sides the table is fit at


def family_bytes(name: str, side: int, kernel: str, batch: int = 1) -> dict[str, int]:
    """`pass_and_plain_step_bytes` for a full-size family at a square latent of `side`."""
    return pass_and_plain_step_bytes(full_size_family(name).calls(side, batch), kernel)


def fit(sides: tuple[int, int, int], values: list[float]) -> tuple[float, float, float]:
    """c0, c1, c2 with c0 + c1*A + c2*A² = value at each latent area A = side² (exact through the three points)."""
    areas = torch.tensor([float(s * s) for s in sides], dtype=torch.float64)
    system = torch.stack([torch.ones_like(areas), areas, areas**2], dim=1)
    c = torch.linalg.solve(system, torch.tensor(values, dtype=torch.float64))
    return float(c[0]), float(c[1]), float(c[2])


def needs_table() -> dict[tuple[str, str, str], tuple[float, float, float]]:
    """The coefficients of `lib_align.memory.NEEDS`, counted afresh (about a minute)."""
    table = {}
    for name, sides in FIT_SIDES.items():
        for kernel in KERNELS:
            counts = [family_bytes(name, side, kernel) for side in sides]
            for mode, key in (("normal", "pass"), ("low", "pass_low")):
                table[(name, kernel, mode)] = fit(sides, [float(c[key]) for c in counts])
    return table


def main() -> int:
    """`python -m bench.memory`: prints the table `lib_align/memory.py` holds, to paste there; on a torch that cannot
    count it, one line on stderr saying what it lacks, exit status 2."""
    if line := refused("bench.memory", *NEEDS):
        print(line, file=sys.stderr)
        return 2

    def number(c: float) -> str:
        return "0.0" if abs(c) < 1e-6 else f"{c:.6g}"

    for key, coefficients in needs_table().items():
        print(f"    {key!r}: PassNeed({', '.join(number(c) for c in coefficients)}),")
    return 0


def native_memory() -> dict[str, float]:
    """The figures for the JSON line, GiB in fp16 at each family's native size, batch 1: the pass (normal and low
    memory), the plain CFG step, the pass's need beyond the plain step's (what a generation needs more with T-SAM
    than without, the loaded weights being the same), and the UNet's weights; `_split` for Doggettx's kernel."""
    out: dict[str, float] = {}
    for name, key in (("SD1", "sd1_512"), ("SDXL", "sdxl_1024")):
        side = NATIVE_SIDE[name]
        out[f"{key}_unet_weights_gib_fp16"] = weight_bytes(full_size_family(name).unet) / GIB
        for kernel in KERNELS:
            counts = family_bytes(name, side, kernel)
            suffix = "" if kernel == "flash" else "_split"
            plain = counts["plain_step"]
            out[f"{key}_plain_step_gib_fp16{suffix}"] = plain / GIB
            out[f"{key}_pass_gib_fp16{suffix}"] = counts["pass"] / GIB
            out[f"{key}_pass_gib_fp16_low_memory{suffix}"] = counts["pass_low"] / GIB
            out[f"{key}_pass_extra_gib_fp16{suffix}"] = max(0, counts["pass"] - plain) / GIB
            out[f"{key}_pass_extra_gib_fp16_low_memory{suffix}"] = max(0, counts["pass_low"] - plain) / GIB
    # The names for the SDXL figures with SDPA/xformers.
    out["sdxl_pass_extra_gib_fp16"] = out["sdxl_1024_pass_extra_gib_fp16"]
    out["sdxl_pass_extra_gib_fp16_low_memory"] = out["sdxl_1024_pass_extra_gib_fp16_low_memory"]
    return out


if __name__ == "__main__":
    raise SystemExit(main())
