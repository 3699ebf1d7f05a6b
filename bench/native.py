"""Each family's iteration against a plain CFG step in FLOPs at its native size — SD1 at 512², SDXL at 1024² —
counted on the meta device: the full-size UNets exist as shapes only (no weights, no compute), so the figures are
deterministic, need no GPU and take seconds. FLOPs do not depend on the dtype (fp16 here, as on a GPU).

The iteration is T-SAM's pass and the plain step the host's CFG call, as bench/passes.py defines them (batch 1);
T (token count) from the tiny model of the family for the benchmark's prompt: the loss's cost depends on the token
count only.
"""

from __future__ import annotations

from functools import partial

from .flops import count_flops
from .memory import host_attention
from .needs import CHECKPOINT_ON_META, FLOP_FORMULAS, require
from .passes import NATIVE_SIDE, full_size_family, meta_autocast


def native_flops(prompt: str) -> dict[str, float]:
    """The figures for the JSON line: ratios, and the TFLOP of each side for context (an iteration, one with the
    memory mode's checkpointing, a plain CFG step). TorchTooOld up front on a torch that cannot count the memory
    mode's pass on the meta device (< 2.6)."""
    require("bench.native", FLOP_FORMULAS, CHECKPOINT_ON_META)
    out: dict[str, float] = {}
    counted = {}
    for name, key in (("SD1", "sd1_512"), ("SDXL", "sdxl_1024")):
        calls = full_size_family(name, prompt).calls(NATIVE_SIDE[name])
        # Doggettx's kernel: the matmuls of ldm's own attention (the shape-only SDPA kernel has no FLOP formula).
        with meta_autocast(), host_attention("split"):
            counted[key] = (count_flops(partial(calls.run_pass, False)), count_flops(partial(calls.run_pass, True)),
                            count_flops(calls.plain_step))
    for key, (iteration, low, plain) in counted.items():
        out[f"{key}_iteration_tflop"] = iteration / 1e12
        out[f"{key}_iteration_tflop_low_memory"] = low / 1e12
        out[f"{key}_plain_step_tflop"] = plain / 1e12
    sd1, xl = counted["sd1_512"], counted["sdxl_1024"]
    out["iteration_flops_vs_plain_step_sd1_512"] = sd1[0] / sd1[2]
    out["sdxl_iteration_flops_vs_plain_step"] = xl[0] / xl[2]
    out["sdxl_iteration_flops_vs_plain_step_low_memory"] = xl[1] / xl[2]
    return out
