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
- **The pass** is T-SAM's as `AlignSession` runs it: the conditional rows, frozen weights, the capture stopping the
  forward after the last map, the loss and its gradient to the latent; `low` wraps it in the memory mode's
  block checkpointing. **The plain step** is the host's CFG call: the full UNet on batch 2 without gradient.

A figure is the peak of live bytes allocated inside the call, over what existed before it (weights, latent and
conditioning): what the call needs on top of the loaded model, as `torch.cuda.max_memory_allocated()` minus
`memory_allocated()` before it would say.
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

META = torch.device("meta")
GIB = 1024.0**3
KERNELS = ("flash", "split")


class LiveBytes(TorchDispatchMode):
    """Follows every storage created inside the mode until it is released; `peak` is the most bytes alive at once.

    Storages that existed before (`known`) are not counted, nor their views."""

    def __init__(self, known: Iterable[Tensor] = ()) -> None:
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


@contextlib.contextmanager
def meta_autocast() -> Iterator[None]:
    """CUDA autocast's fp16 policy for the UNet's layers on the meta device (which autocast does not cover):
    linear and convolution in fp16, group and layer norm in fp32, as autograd sees them. Written as wrappers of
    `torch.nn.functional` (what the layers call) rather than a torch-function mode, because such a mode is off
    inside `torch.autograd.grad`, where the memory mode's checkpoints recompute their blocks. T-SAM's own maps and
    loss are fp32 by themselves (the real autocast is off there: `capture.full_precision`)."""
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
        gc_collect()
    return live.peak


def gc_collect() -> None:
    import gc

    gc.collect()


def pass_and_plain_step_bytes(unet: nn.Module, apply_model: Callable[[Tensor, Tensor, Any], Any], cond: Any,
                              targets: list, level: int, latent_hw: tuple[int, int], kernel: str,
                              batch: int = 1) -> dict[str, int]:
    """Peak bytes of T-SAM's pass (normal and low memory) and of the plain CFG step, for `batch` images, with the
    host's `kernel`; the UNet on the meta device in fp16 (`unet.half()`)."""
    from lib_align.capture import checkpointed_blocks
    from lib_align.config import AlignConfig
    from lib_align.session import AlignSession, frozen_weights

    def rows(value: Any, n: int) -> Any:
        if isinstance(value, dict):
            return {k: rows(v, n) for k, v in value.items()}
        return torch.cat([value] * n)

    session = AlignSession(unet, apply_model, [targets] * batch, AlignConfig.paper(), 50, latent_hw, level=level)
    capture = session._capture_once()
    z0 = torch.randn((batch, 4, *latent_hw), device=META)
    t = torch.full((batch,), 999.0, device=META)
    cond_rows = rows(cond, batch)
    known = [*unet.parameters(), *unet.buffers(), z0, t, *tree_flatten(cond_rows)[0]]

    def one_pass(low: bool) -> Callable[[], None]:
        def run() -> None:
            z = z0.detach().requires_grad_(True)
            memory_mode = checkpointed_blocks(unet, capture) if low else contextlib.nullcontext()
            with capture, memory_mode, frozen_weights(unet), torch.enable_grad():
                maps = capture.run(lambda: apply_model(z, t, cond_rows))
                torch.autograd.grad(session.losses(maps).sum(), [z])
            capture.reset()
        return run

    x2, t2, c2 = torch.cat([z0, z0]), torch.cat([t, t]), rows(cond_rows, 2)
    known_plain = [*known, x2, t2, *tree_flatten(c2)[0]]

    def plain_step() -> None:
        with torch.no_grad():
            apply_model(x2, t2, c2)

    with host_attention(kernel):
        return {"pass": peak_bytes(one_pass(False), known), "pass_low": peak_bytes(one_pass(True), known),
                "plain_step": peak_bytes(plain_step, known_plain)}


def weight_bytes(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters()) * 2  # fp16


# -- the full-size families -----------------------------------------------------------------------------------------

PROMPT = "a black car and a white clock"
FIT_SIDES = {"SD1": (32, 64, 96), "SD2": (48, 96, 128), "SDXL": (64, 96, 128)}  # latent sides the table is fit at
NATIVE_SIDE = {"SD1": 64, "SD2": 96, "SDXL": 128}  # 512², 768², 1024²


@functools.cache
def full_size_family(name: str) -> tuple[nn.Module, Callable[[Tensor, Tensor, Any], Any], Any, list, int]:
    """(UNet on meta in fp16, apply_model, one image's conditioning, targets, level) for a full-size family; T from
    the family's tiny model for `PROMPT` (the memory depends on the token count only)."""
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    from lib_align.config import AlignConfig
    from standalone.models import allow_any_latent_size, full_size_config, tiny_sd
    from standalone.pipeline import standalone_family
    from standalone.sd2 import full_size_sd2_config, tiny_sd2
    from standalone.sdxl import full_size_config as full_size_sdxl_config
    from standalone.sdxl import full_size_sdxl_unet, tiny_sdxl

    from .workload import UNetOnlyXL

    allow_any_latent_size()
    tiny = {"SD1": tiny_sd, "SD2": tiny_sd2, "SDXL": tiny_sdxl}[name]()
    family = standalone_family(tiny)
    chunks, words = family.tokenize(PROMPT)
    targets = family.targets(chunks, words, AlignConfig.paper().power)
    if name == "SDXL":
        unet = full_size_sdxl_unet(META, torch.float16)
        params = full_size_sdxl_config().unet
        model = UNetOnlyXL(unet, tiny.alphas_cumprod).to(META)
        cond = {"crossattn": torch.randn((1, 77, params["context_dim"]), device=META, dtype=torch.float16),
                "vector": torch.randn((1, params["adm_in_channels"]), device=META, dtype=torch.float16)}
        return unet, model.apply_model, cond, targets, family.layout_level
    config = (full_size_config() if name == "SD1" else full_size_sd2_config()).unet
    with META:
        unet = UNetModel(**config).half()
    unet.dtype = torch.float16
    context = torch.randn((1, 77, config["context_dim"]), device=META, dtype=torch.float16)
    return unet, lambda z, t, c: unet(z, t, context=c), context, targets, family.layout_level


def family_bytes(name: str, side: int, kernel: str, batch: int = 1) -> dict[str, int]:
    """`pass_and_plain_step_bytes` for a full-size family at a square latent of `side`."""
    unet, apply_model, cond, targets, level = full_size_family(name)
    return pass_and_plain_step_bytes(unet, apply_model, cond, targets, level, (side, side), kernel, batch)


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


def main() -> None:
    """`python -m bench.memory`: prints the table `lib_align/memory.py` holds, to paste there."""
    def number(c: float) -> str:
        return "0.0" if abs(c) < 1e-6 else f"{c:.6g}"

    for key, coefficients in needs_table().items():
        print(f"    {key!r}: PassNeed({', '.join(number(c) for c in coefficients)}),")


if __name__ == "__main__":
    main()


def native_memory() -> dict[str, float]:
    """The figures for the JSON line, GiB in fp16 at each family's native size, batch 1: the pass (normal and low
    memory), the plain CFG step, the pass's need beyond the plain step's (what a generation needs more with T-SAM
    than without, the loaded weights being the same), and the UNet's weights; `_split` for Doggettx's kernel."""
    out: dict[str, float] = {}
    for name, key in (("SD1", "sd1_512"), ("SDXL", "sdxl_1024")):
        side = NATIVE_SIDE[name]
        out[f"{key}_unet_weights_gib_fp16"] = weight_bytes(full_size_family(name)[0]) / GIB
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
