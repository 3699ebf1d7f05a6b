"""On a CUDA machine: T-SAM's pass measured by `torch.cuda.max_memory_allocated` beside bench/memory.py's count.

    python tools/check_memory_gpu.py --family sdxl --side 128      # SDXL at 1024² (latent 128x128)
    python tools/check_memory_gpu.py --family sd1 --side 64        # SD1 at 512²

A full-size UNet with random weights in fp16 on the GPU, run as A1111 runs it with `--opt-sdp-attention` (CUDA
autocast, ldm's CrossAttention through PyTorch's scaled_dot_product_attention, as modules/sd_hijack_optimizations.py
`scaled_dot_product_attention_forward`): the plain CFG step, T-SAM's pass and the memory mode's pass, each as the
peak allocated over what was allocated before it; then the meta-device count of the same call (bench/memory.py,
kernel "flash") and their ratio. The count leaves out the CUDA caching allocator's block rounding, which the
measurement includes. Needs a CUDA device (about 8 GB for SDXL at 1024²); prints one JSON line last.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", choices=("sd1", "sdxl"), default="sdxl")
    ap.add_argument("--side", type=int, default=None, help="latent side (default: the family's native size)")
    return ap.parse_args(argv)


def measured(fn: Callable[[], Any]) -> int:
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("needs a CUDA device: this check compares with torch.cuda.max_memory_allocated", file=sys.stderr)
        return 2
    from bench.memory import GIB, NEEDS, family_bytes, host_attention
    from bench.needs import refused
    from bench.passes import NATIVE_SIDE, full_size_family, pass_calls

    if line := refused("bench.memory", *NEEDS):
        print(line, file=sys.stderr)
        return 2

    name = args.family.upper()
    side = args.side or NATIVE_SIDE[name]
    device = torch.device("cuda")
    counted = family_bytes(name, side, "flash")  # first: the UNet below is the cached meta one, moved to the GPU
    meta = full_size_family(name)
    unet = meta.unet.to_empty(device=device).half()  # random values: memory does not depend on them
    for p in unet.parameters():
        torch.nn.init.normal_(p, std=0.02)
    unet.dtype = torch.float16
    if name == "SDXL":
        def apply_model(z: Any, t: Any, c: Any) -> Any:
            return unet(z, t, context=c["crossattn"], y=c["vector"])
    else:
        def apply_model(z: Any, t: Any, c: Any) -> Any:
            return unet(z, t, context=c)
    cond = ({k: torch.randn(v.shape, device=device, dtype=torch.float16) for k, v in meta.cond.items()}
            if isinstance(meta.cond, dict) else torch.randn(meta.cond.shape, device=device, dtype=torch.float16))
    calls = pass_calls(unet, apply_model, cond, meta.targets, meta.level, (side, side))

    def autocast(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            with torch.autocast("cuda", torch.float16):  # as A1111 samples
                fn()
        return run

    steps = {"plain_step": autocast(calls.plain_step), "pass": autocast(lambda: calls.run_pass(False)),
             "pass_low": autocast(lambda: calls.run_pass(True))}
    with host_attention("sdpa"):
        for fn in steps.values():  # warm-up: cuDNN/SDPA workspaces
            fn()
        gpu = {key: measured(fn) for key, fn in steps.items()}
    out = {"family": name, "latent_side": side, "device": torch.cuda.get_device_name(), "torch": torch.__version__}
    for key in gpu:
        out[f"{key}_gib_measured"] = round(gpu[key] / GIB, 3)
        out[f"{key}_gib_counted"] = round(counted[key] / GIB, 3)
        out[f"{key}_measured_vs_counted"] = round(gpu[key] / counted[key], 3) if counted[key] else None
        print(f"{key:<11} measured {gpu[key] / GIB:7.3f} GiB, counted {counted[key] / GIB:7.3f} GiB")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
