"""How much memory T-SAM's pass needs, and the memory mode "auto"'s choice before the first update.

The pass keeps activations for a backward through the UNet's blocks down to the layers it reads; how many bytes
depends on the family, the latent's area, the batch, the precision and, above all, on the host's attention kernel:
fused kernels (PyTorch SDPA, xformers) keep q, k, v and the output, while A1111's default without flags (Doggettx's
split attention) keeps every layer's probability matrix, which grows with the square of the area.

`NEEDS` holds what `bench/memory.py` counts on the meta device for the full-size UNets (fp16 under A1111's autocast
policy, one image): per family, kernel and mode, bytes = c0 + c1*A + c2*A² for a latent of area A = h*w
(three sizes fit exactly; other sizes within a few percent; `python -m bench.memory` prints the table afresh).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FLASH, SPLIT = "flash", "split"  # the kernel kinds: keeps q/k/v/output (SDPA, xformers) or the probabilities
GIB = 1024.0**3
# Free memory must exceed the estimate by this factor: the caching allocator's block rounding and fragmentation,
# and what the host allocates around our pass, are not in the count.
HEADROOM = 1.25


@dataclass(frozen=True)
class PassNeed:
    """Bytes one image's pass needs, fp16: c0 + c1*A + c2*A² at latent area A."""

    c0: float
    c1: float
    c2: float

    def at(self, area: float) -> float:
        return self.c0 + self.c1 * area + self.c2 * area * area


# (family, kernel, mode) -> PassNeed; counted by `python -m bench.memory` (bench/memory.py), torch 2.13, ldm's UNet.
NEEDS: dict[tuple[str, str, str], PassNeed] = {
    ('SD1', 'flash', 'normal'): PassNeed(3.78675e+06, 106123, 0.0),
    ('SD1', 'flash', 'low'): PassNeed(113416, 32774.5, 0.0),
    ('SD1', 'split', 'normal'): PassNeed(6.48525e+07, 11122, 65.7149),
    ('SD1', 'split', 'low'): PassNeed(9736, 12854.5, 48),
    ('SD2', 'flash', 'normal'): PassNeed(3.78675e+06, 101216, 0.0),
    ('SD2', 'flash', 'low'): PassNeed(113416, 32110.5, 0.0),
    ('SD2', 'split', 'normal'): PassNeed(1.03207e+08, 14090.6, 40.6827),
    ('SD2', 'split', 'low'): PassNeed(9736, 12214.5, 30),
    ('SDXL', 'flash', 'normal'): PassNeed(2.68749e+07, 293610, 0.0),
    ('SDXL', 'flash', 'low'): PassNeed(1.41294e+07, 54900.8, 0.0),
    ('SDXL', 'split', 'normal'): PassNeed(4.51286e+07, 280714, 14.5452),
    ('SDXL', 'split', 'low'): PassNeed(1.44349e+08, 6004.02, 5.01215),
}


def attention_kind(name: str | None) -> str:
    """The kernel kind of a host's attention, by name: A1111's optimizer names (modules/sd_hijack_optimizations.py:
    "xformers", "sdp", "sdp-no-mem", "Doggettx", "sub-quadratic", "V1", "InvokeAI") and Forge's attention functions
    (backend/attention.py: attention_pytorch, attention_xformers, attention_split, attention_sub_quad). Anything
    else counts as keeping the probabilities: the larger need, so that auto errs on the side of fitting."""
    key = (name or "").lower()
    return FLASH if any(part in key for part in ("xformers", "sdp", "pytorch")) else SPLIT


def pass_bytes(family: str, latent_hw: tuple[int, int], batch: int, kind: str, low: bool,
               dtype: torch.dtype = torch.float16) -> float | None:
    """Estimated bytes of T-SAM's pass, or None for a family the table does not know. fp32 UNets (--no-half)
    count twice the fp16 figure (an upper bound: T-SAM's own maps are fp32 either way)."""
    need = NEEDS.get((family, kind, "low" if low else "normal"))
    if need is None:
        return None
    scale = 2.0 if dtype == torch.float32 else 1.0
    return max(0.0, need.at(float(latent_hw[0] * latent_hw[1]))) * batch * scale


def free_bytes(device: torch.device) -> int | None:
    """Memory the pass can use on `device` now: the driver's free memory plus what torch's caching allocator holds
    unused (it hands that out first). None off CUDA (nothing to ask: auto keeps the normal pass and its fallback)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(free + max(0, cached))


def streamed_weight_bytes(unet: torch.nn.Module, device: torch.device) -> int:
    """Bytes of the UNet's weights kept off `device` (Forge's GPU Weights below the model's size): the host streams
    them in layer by layer, and inside T-SAM's pass each streamed layer's copy stays on the device until the
    backward (the gradient to a layer's input needs its weight)."""
    return sum(p.numel() * p.element_size() for p in unet.parameters() if p.device != device)


@dataclass(frozen=True)
class MemoryPlan:
    """Auto's choice for one generation's pass: checkpoint or not, and the figures behind it (bytes)."""

    low: bool
    need: float
    free: float

    def message(self) -> str:
        return (f"memory mode auto: T-SAM's pass needs about {self.need / GIB:.1f} GiB and {self.free / GIB:.1f} GiB "
                f"are free, so it runs with gradient checkpointing (low memory; same result, slower updates).")


def plan(family: str, latent_hw: tuple[int, int], batch: int, kind: str, dtype: torch.dtype,
         free: int | None, streamed: int = 0) -> MemoryPlan | None:
    """Auto's choice before the first update: checkpointing when the normal pass, with headroom, would not fit in
    the memory free at that moment — which already reflects what the host has put on the device (--medvram(-sdxl)
    keeps the text encoders and VAE off it while sampling; Forge's GPU Weights setting decides how much of the UNet
    is loaded). None when there is nothing to decide from (no free-memory figure, or a family the table does not
    know): auto then keeps the normal pass and its out-of-memory fallback. `streamed`: weights the pass holds on
    top (`streamed_weight_bytes`), in both modes."""
    need = pass_bytes(family, latent_hw, batch, kind, low=False, dtype=dtype)
    if need is None or free is None:
        return None
    need += streamed
    return MemoryPlan(need * HEADROOM > free, need, float(free))
