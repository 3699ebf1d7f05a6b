"""Cross-attention capture: the UNet's attention maps of every text token, independent of the attention backend.

A1111 replaces `CrossAttention.forward` with its optimised kernels (Doggettx, xformers, SDP, ...), which never
materialise the probabilities. We therefore hook the `to_q` / `to_k` projections (so LoRA and hypernetwork effects
on them are seen) and recompute softmax(q k^T * scale) ourselves, in fp32, once the attention module has run.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

DEFAULT_LEVEL = 4  # the paper's 16x16 maps at 512^2: latent / 4


@dataclass
class AttentionLayer:
    name: str
    module: nn.Module
    ds: int | None  # downsampling factor of the feature map it sees (None: unknown structure)


class StopForward(Exception):
    """Raised from a hook to end the UNet forward once the last needed map exists (the rest is not needed)."""


class NotAlignable(ValueError):
    """The UNet's cross-attention is not one map per prompt token (another extension splits it): T-SAM cannot
    read the maps it aligns. The message is a user's one line, without consequence."""


SPLIT_ATTENTION = ("another extension computes the cross-attention in several parts (Regional Prompter's "
                   "Attention mode, or alike): T-SAM cannot read one map per word")


def top_level_blocks(unet: nn.Module) -> list[nn.Module] | None:
    """An ldm/sgm UNet's top-level blocks in execution order, or None for a UNet of another structure."""
    if not all(hasattr(unet, a) for a in ("input_blocks", "middle_block", "output_blocks")):
        return None
    return [*unet.input_blocks, unet.middle_block, *unet.output_blocks]


def _is_cross_attention(name: str, module: nn.Module) -> bool:
    return name.endswith("attn2") and all(hasattr(module, a) for a in ("to_q", "to_k", "heads"))


def cross_attention_layers(unet: nn.Module) -> list[AttentionLayer]:
    """All cross-attention modules in execution order with the downsampling level they run at.

    For ldm/sgm `UNetModel` the level is read off the structure: it doubles after each input block holding a
    Downsample and halves after each output block holding an Upsample. Other UNets get ds=None and are matched by
    the query length at run time.
    """
    if top_level_blocks(unet) is None:
        return [AttentionLayer(n, m, None) for n, m in unet.named_modules() if _is_cross_attention(n, m)]

    def layers_in(prefix: str, block: nn.Module, ds: int) -> list[AttentionLayer]:
        return [AttentionLayer(f"{prefix}.{n}", m, ds) for n, m in block.named_modules() if _is_cross_attention(n, m)]

    def has(block: nn.Module, kind: str) -> bool:
        return any(type(m).__name__ == kind for m in block.modules())

    out: list[AttentionLayer] = []
    ds = 1
    for i, block in enumerate(unet.input_blocks):
        out += layers_in(f"input_blocks.{i}", block, ds)
        if has(block, "Downsample"):
            ds *= 2
    out += layers_in("middle_block", unet.middle_block, ds)
    for i, block in enumerate(unet.output_blocks):
        out += layers_in(f"output_blocks.{i}", block, ds)
        if has(block, "Upsample"):
            ds //= 2
    return out


def level_size(height: int, width: int, ds: int) -> tuple[int, int]:
    """Feature-map size at downsampling `ds` for a latent of height x width (each stride-2 conv rounds up)."""
    for _ in range(int(math.log2(ds))):
        height, width = (height + 1) // 2, (width + 1) // 2
    return height, width


def full_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast off on `device`: the host samples under autocast, which would run our fp32 matmuls in fp16."""
    if device.type in ("cuda", "cpu"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def _head_mean_probs(q: Tensor, k: Tensor, heads: int, scale: float, dtype: torch.dtype) -> Tensor:
    b, n, inner = q.shape
    d = inner // heads
    with full_precision(q.device):
        qh = q.to(dtype).reshape(b, n, heads, d).transpose(1, 2)
        kh = k.to(dtype).reshape(k.shape[0], k.shape[1], heads, d).transpose(1, 2)
        sim = torch.matmul(qh, kh.transpose(-1, -2)) * scale
        return sim.softmax(dim=-1).mean(dim=1)


class _RecomputedProbs(torch.autograd.Function):
    """The head-averaged probabilities, keeping only q and k for the backward and recomputing the rest there.

    Autograd of the plain formula would keep each layer's softmax [B, heads, n, tokens] in fp32 and an fp32 copy of
    k until the backward: at SDXL 1024² about 0.35 GiB per image over the 60 layers the pass reads. q and k are the
    attention layer's own projections, which the host's attention kernel keeps for its backward anyway; the
    recomputation is the same operations, so the gradient is unchanged."""

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, heads: int, scale: float, dtype: torch.dtype) -> Tensor:
        ctx.save_for_backward(q, k)
        ctx.formula = (heads, scale, dtype)
        return _head_mean_probs(q, k, heads, scale, dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        q, k = ctx.saved_tensors
        needs = ctx.needs_input_grad[:2]
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(need) for t, need in zip((q, k), needs, strict=True)]
            probs = _head_mean_probs(*leaves, *ctx.formula)
            wanted = [t for t in leaves if t.requires_grad]
            grads = iter(torch.autograd.grad(probs, wanted, grad)) if wanted else iter(())
        return (*(next(grads) if need else None for need in needs), None, None, None)


def attention_probs(q: Tensor, k: Tensor, heads: int, scale: float, dtype: torch.dtype = torch.float32) -> Tensor:
    """Head-averaged softmax(q k^T * scale) in fp32 (or `dtype`): q [B, n, heads*d], k [B, m, heads*d] -> [B, n, m]."""
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad):
        return _RecomputedProbs.apply(q, k, heads, scale, dtype)
    return _head_mean_probs(q, k, heads, scale, dtype)


def attention_scale(attn: nn.Module, inner: int) -> float:
    """The softmax scale of an attention module: ldm's `scale` attribute; Forge's CrossAttention (backend/nn/unet.py)
    has none and its attention functions (backend/attention.py) use the default dim_head^-0.5."""
    scale = getattr(attn, "scale", None)
    if scale is not None:
        return float(scale)
    return float(getattr(attn, "dim_head", inner // attn.heads)) ** -0.5


class CrossAttentionCapture:
    """Inside `with`, records head- and layer-averaged cross-attention probabilities at one level.

    latent_hw: the latent's (height, width); level: the downsampling factor (4 = the paper's 16x16 at 512^2).
    rows: which batch rows to keep (e.g. the conditional rows of a CFG batch); None keeps all.
    stop_early: after the last layer of the level has run, raise StopForward so the rest of the UNet (the
    decoder's high-resolution levels, most of the FLOPs) is skipped; use `run()` to call the UNet.
    Hooks exist only inside the `with` block and are removed on every exit path.
    """

    def __init__(
        self,
        unet: nn.Module,
        latent_hw: tuple[int, int],
        level: int = DEFAULT_LEVEL,
        rows: slice | Tensor | None = None,
        stop_early: bool = False,
        precision: torch.dtype = torch.float32,
    ) -> None:
        self.size = level_size(latent_hw[0], latent_hw[1], level)
        all_layers = cross_attention_layers(unet)
        self.layers = [a for a in all_layers if a.ds in (level, None)]
        if not self.layers:
            raise ValueError(f"no cross-attention layers at level {level} in {type(unet).__name__}")
        structural = all(a.ds is not None for a in self.layers)
        self.stop_after = self.layers[-1].module if (stop_early and structural) else None
        self.rows = rows
        self.precision = precision  # of the maps; float64 only for checks against finite differences
        self._handles: list[Any] = []
        self._q: dict[nn.Module, Tensor] = {}
        self._k: dict[nn.Module, Tensor] = {}
        self._sum: Tensor | None = None
        self._count = 0
        self._paused = 0  # > 0 inside `paused()`: a forward whose maps are not ours to record
        # The context each map is computed in. The memory mode (`BlockCheckpointing`) sets it so that what the maps
        # keep for the backward stays out of its checkpoints (see there).
        self.map_saving: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext

    # -- hooks ------------------------------------------------------------------------------------------------
    def __enter__(self) -> CrossAttentionCapture:
        try:
            for layer in self.layers:
                attn = layer.module
                self._handles.append(attn.to_q.register_forward_hook(self._keep(self._q, attn)))
                self._handles.append(attn.to_k.register_forward_hook(self._keep(self._k, attn)))
                self._handles.append(attn.register_forward_hook(self._on_attention))
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._q.clear()
        self._k.clear()

    def _keep(self, store: dict, attn: nn.Module) -> Callable:
        def hook(_module: nn.Module, _inputs: Any, output: Tensor) -> None:
            if self._paused:
                return
            if attn in store:  # a second query or key set before this attention finished: its forward splits it
                raise NotAlignable(SPLIT_ATTENTION)
            store[attn] = output

        return hook

    def _on_attention(self, attn: nn.Module, _inputs: Any, _output: Any) -> None:
        if self._paused:
            return
        q, k = self._q.pop(attn, None), self._k.pop(attn, None)
        if q is None or k is None:
            return
        if self.rows is not None:
            q, k = q[self.rows], k[self.rows]
        h, w = self.size
        if q.shape[1] != h * w:  # a layer of another level (only possible for unknown structures)
            return
        with self.map_saving():
            probs = attention_probs(q, k, attn.heads, attention_scale(attn, q.shape[-1]), self.precision)
            self._sum = probs if self._sum is None else self._sum + probs
        self._count += 1
        if attn is self.stop_after:
            raise StopForward

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """A context in which the capture records nothing: a forward whose maps are not T-SAM's to read (another
        extension's, `own_blocks`) or were read already (a checkpoint's recomputation, `BlockCheckpointing`)."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    # -- results ----------------------------------------------------------------------------------------------
    def reset(self) -> None:
        self._sum, self._count = None, 0
        self._q.clear()
        self._k.clear()

    def run(self, forward: Callable[[], Any]) -> Tensor:
        """Reset, call `forward()` (a UNet call), and return the maps it produced."""
        self.reset()
        try:
            forward()
        except StopForward:
            pass
        return self.maps

    @property
    def layer_count(self) -> int:
        return self._count

    @property
    def maps(self) -> Tensor:
        """[B, h, w, context] averaged over the captured layers (differentiable when the forward was)."""
        if self._sum is None:
            raise RuntimeError("no cross-attention was captured: did the UNet run inside the `with` block?")
        b, _, m = self._sum.shape
        return (self._sum / self._count).reshape(b, self.size[0], self.size[1], m)


class BlockCheckpointing:
    """The memory mode: gradient checkpointing of the optimisation pass, for small GPUs. One object owns it: which
    blocks are wrapped, their restoration, and what the capture must do differently meanwhile.

    Inside `with`, every top-level block of an ldm/sgm UNet except the one holding the capture's last layer keeps
    only its inputs during a differentiable forward and recomputes its activations in the backward
    (`torch.utils.checkpoint`, non-reentrant), one block at a time. The pass's activation memory drops to about
    one block's worth for about 40 % more compute; the gradient is the same within float tolerance. Forwards without
    grad run as they are. `with` gives how many blocks were wrapped (0 for a UNet of unknown structure, which then
    runs unchanged). The blocks' own `forward` is restored on every exit path.

    The capture meanwhile: a recomputation runs paused (its maps were taken in the original forward), and so the
    map computation does not run again there — what it saves for its backward must therefore not be handed to the
    checkpoint, which would expect it again, in order: `map_saving` keeps it outside.
    """

    def __init__(self, unet: nn.Module, capture: CrossAttentionCapture) -> None:
        self.unet = unet
        self.capture = capture
        self._saved: list[tuple[nn.Module, Any]] = []

    def __enter__(self) -> int:
        blocks = top_level_blocks(self.unet)
        if blocks is None:
            return 0
        last = self.capture.layers[-1].module
        # The block with the last map is left alone: checkpointing it gains little (the forward stops inside it) and
        # its recomputation would have to run past the point where the original forward stopped.
        wrapped = [b for b in blocks if not any(m is last for m in b.modules())]
        self._saved = [(b, b.__dict__.get("forward")) for b in wrapped]
        try:
            for block in wrapped:
                block.forward = self._checkpointed(block.forward)
            self.capture.map_saving = _kept_outside_checkpoints
        except BaseException:
            self.__exit__()
            raise
        return len(wrapped)

    def __exit__(self, *exc: Any) -> None:
        self.capture.map_saving = contextlib.nullcontext
        for block, own in self._saved:
            if own is None:
                block.__dict__.pop("forward", None)
            else:
                block.forward = own
        self._saved = []

    def _checkpointed(self, forward: Callable[..., Any]) -> Callable[..., Any]:
        capture = self.capture

        def run(*args: Any, **kwargs: Any) -> Any:
            if not torch.is_grad_enabled():
                return forward(*args, **kwargs)
            calls = 0

            def once_then_paused(*a: Any, **kw: Any) -> Any:
                nonlocal calls
                calls += 1
                if calls == 1:
                    return forward(*a, **kw)
                with capture.paused():  # the backward's recomputation
                    return forward(*a, **kw)

            return checkpoint(once_then_paused, *args, use_reentrant=False, **kwargs)

        return run


def checkpointed_blocks(unet: nn.Module, capture: CrossAttentionCapture) -> BlockCheckpointing:
    """The memory mode for `unet` and its capture (see `BlockCheckpointing`)."""
    return BlockCheckpointing(unet, capture)


def _same(tensor: Tensor) -> Tensor:
    return tensor


def _kept_outside_checkpoints() -> contextlib.AbstractContextManager:
    """Saved tensors kept as they are, whatever checkpoint's own saved-tensor hooks around them would do."""
    return torch.autograd.graph.saved_tensors_hooks(_same, _same)
