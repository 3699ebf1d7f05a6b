"""What bench/ needs of torch beyond what the extension needs, checked up front: on a torch without it a figure
would be a traceback deep inside torch or, worse, a wrong number. Each capability is probed (tried once on tiny
tensors, cached), not read off the version; the release that brought it is only quoted in the refusal. Those
releases are observed: the probes run under the hosts' 2.1.2 (A1111) and 2.3.1 (Forge), 2.2.0 and CI's 2.13, and
torch's own sources of 2.0.1, 2.4.1, 2.5.0, 2.5.1 and 2.6.0 read where no run was made.

- `CHECKPOINT_ON_META`: `torch.utils.checkpoint` (non-reentrant, as the memory mode calls it) on meta tensors,
  forward and backward. Before 2.5 its forward looks `torch.meta` up as a device module (AttributeError); 2.5 lets
  the forward through, but the backward's recomputation still forks the RNG of device type "meta" (`fork_rng`:
  RuntimeError "torch has no module of `meta`") until 2.6. bench counts the memory mode's pass on the meta device
  (bench/memory.py its bytes, bench/native.py its FLOPs).
- `STORAGE_RELEASE`: a storage's Python object lives as long as the storage (PyObject preservation, 2.2), so a
  weakref to it fires when the storage is released; bench/memory.py's counter sees releases that way. Under 2.1
  each `untyped_storage()` call makes a new object whose weakrefs never fire (the counter then reads 2-3x the
  allocator's peak) and are left dangling: the interpreter crashes at exit. Its probe makes no weakref there.
- `FLOP_FORMULAS`: `torch.utils.flop_counter`'s per-op formulas (2.1; 2.0.1 has no such module), which
  bench/flops.py counts with.
"""

from __future__ import annotations

import functools
import gc
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch


class TorchTooOld(RuntimeError):
    """The running torch lacks a capability a bench tool needs; the message is one line saying which."""


@dataclass(frozen=True)
class Capability:
    what: str  # as the refusal names it
    since: str  # the first torch release that has it
    probe: Callable[[], bool]

    def present(self) -> bool:
        return self.probe()


@functools.cache
def _checkpoint_on_meta() -> bool:
    from torch.utils.checkpoint import checkpoint

    x = torch.empty(2, device="meta", requires_grad=True)
    try:
        with torch.enable_grad():
            y = checkpoint(torch.sin, x, use_reentrant=False)
            torch.autograd.grad(y.sum(), [x])
    except Exception:  # < 2.5 in the forward (AttributeError), 2.5 in the backward (fork_rng's RuntimeError)
        return False
    return True


@functools.cache
def _storage_release_seen() -> bool:
    t = torch.empty(1)
    if t.untyped_storage() is not t.untyped_storage():
        return False  # a new Python object per call: no weakref to it is made (under 2.1 one crashes at exit)
    released: list[bool] = []
    weakref.finalize(t.untyped_storage(), released.append, True)
    del t
    gc.collect()
    return bool(released)


@functools.cache
def _flop_formulas() -> bool:
    try:
        from torch.utils import flop_counter
    except ImportError:
        return False
    return hasattr(flop_counter, "flop_registry") or hasattr(flop_counter, "flop_mapping")


CHECKPOINT_ON_META = Capability("checkpoint on the meta device", "2.6", _checkpoint_on_meta)
STORAGE_RELEASE = Capability("a storage's release seen through its Python object", "2.2", _storage_release_seen)
FLOP_FORMULAS = Capability("torch.utils.flop_counter's formulas", "2.1", _flop_formulas)
CAPABILITIES = (FLOP_FORMULAS, STORAGE_RELEASE, CHECKPOINT_ON_META)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("+")[0].split(".")[:2])


def refusal(tool: str, lacking: list[Capability], version: str | None = None) -> str:
    """The one line a tool refuses with: "bench.memory needs torch >= 2.6 (checkpoint on the meta device; this is
    2.3.1)"."""
    since = max((c.since for c in lacking), key=_version)
    version = (version or torch.__version__).split("+")[0]
    return f"{tool} needs torch >= {since} ({', '.join(c.what for c in lacking)}; this is {version})"


def lacking(*needs: Capability) -> list[Capability]:
    return [c for c in needs if not c.present()]


def refused(tool: str, *needs: Capability) -> str | None:
    """`refusal`'s line when this torch lacks any of `needs`, else None (a command prints it and exits 2)."""
    missing = lacking(*needs)
    return refusal(tool, missing) if missing else None


def require(tool: str, *needs: Capability) -> None:
    """Raises TorchTooOld with `refusal`'s line when this torch lacks any of `needs` (a library function)."""
    line = refused(tool, *needs)
    if line:
        raise TorchTooOld(line)
