"""The benchmark: unit costs, peak memory, whole samplings side by side, the N = 50 totals, installed-but-off; then
the SDXL row (an iteration vs a plain step, peak memory, installed-but-off).

Every figure is a ratio to plain Stable Diffusion measured in the same process (interleaved repetitions, medians),
printed with the machine and the settings. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from lib_align.config import AlignConfig

from .flops import count_flops
from .measure import MemoryMeter, interleaved, load_average, machine, median, timed_peaks
from .memory import NEEDS as MEMORY_NEEDS
from .memory import native_memory
from .native import native_flops
from .needs import FLOP_FORMULAS, refused
from .workload import PROMPT, OffRunner, Sampling, Workload, build_model, off_runner, sdxl_workload

TARGETS = {  # the project's speed and memory targets (ratios to plain): key -> bound
    "iteration_vs_full": 0.65,
    "iteration_vs_plain_step": 1.0,
    "paper_total_vs_plain": 1.6,
    "official_total_vs_plain": 3.0,
    "off_overhead": 1.02,
    "peak_mem_ratio": 1.5,
    "sdxl_iteration_vs_plain_step": 1.0,
    "sdxl_iteration_flops_vs_plain_step": 0.85,
    "sdxl_off_overhead": 1.02,
    "sdxl_peak_mem_ratio": 1.5,
}
MEMORY_TARGETS = {  # GiB beyond a plain generation, fp16, counted on the meta device (bench/memory.py)
    "sdxl_pass_extra_gib_fp16_low_memory": 1.5,  # what auto runs at SDXL 1024² on a card the normal pass misses
}


@dataclass(frozen=True)
class Plan:
    """What one mode measures. N is the step count the totals are given for; e2e_steps the measured sampling's."""

    mode: str
    model: str  # "full" (SD1.x shapes) or "tiny"
    size: tuple[int, int]
    reps: int  # interleaved repetitions of the unit costs
    e2e_steps: int
    e2e_reps: int
    off_steps: int
    off_reps: int
    extra_sizes: tuple[tuple[int, int], ...] = ()  # further sizes for the unit costs only
    n: int = 50
    # The SDXL row: "full" = SDXL base's UNet (random weights), "tiny" = the tiny SDXL test model; its size; rounds
    # after one warm-up (each call of the full UNet takes minutes on a CPU); installed-but-off always runs the tiny
    # SDXL through the stand-in host (the full model's 1.4 GB of text encoders and N whole samplings at SDXL sizes
    # do not fit a CPU run), at sdxl_off_size with the plan's off_steps and off_reps.
    sdxl_model: str = "tiny"
    sdxl_size: tuple[int, int] = (64, 64)  # smoke: the stand-in tests' size, so CI stays fast
    sdxl_reps: int = 3
    sdxl_off_size: tuple[int, int] = (64, 64)


PLANS = {
    "smoke": Plan("smoke", "tiny", (128, 128), reps=3, e2e_steps=2, e2e_reps=3, off_steps=2, off_reps=3),
    # SDXL at 768x768, not its native 1024x1024: on 2 CPU cores a batch-2 forward of the full UNet took ~170 s
    # already at 512x512 (shared machine), and 1024x1024 is ~4x that per call.
    "quick": Plan("quick", "full", (256, 256), reps=3, e2e_steps=3, e2e_reps=3, off_steps=3, off_reps=3,
                  extra_sizes=((512, 512),), sdxl_model="full", sdxl_size=(768, 768), sdxl_reps=2,
                  sdxl_off_size=(256, 256)),
    "full": Plan("full", "full", (256, 256), reps=5, e2e_steps=50, e2e_reps=3, off_steps=10, off_reps=5,
                 extra_sizes=((512, 512),), sdxl_model="full", sdxl_size=(1024, 1024), sdxl_reps=3,
                 sdxl_off_size=(256, 256)),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick",
                      help="full-size SD1 at 256x256 (+512x512 unit costs) and full-size SDXL at 768x768: well over "
                           "half an hour on 2 CPU cores (its SD1 part took ~11 min here; the SDXL row at 512x512 alone "
                           "~21 min)")
    mode.add_argument("--smoke", action="store_const", dest="mode", const="smoke",
                      help="the tiny test models: exercises every code path (numbers mean nothing); minutes, not "
                           "seconds: alone on 2 shared CPU cores it took 18 min wall, 9.5 min CPU (load average 1 at "
                           "the start, ~10 at the end from other jobs); the whole CI run, which runs it once, took "
                           "490 s before the memory count at native sizes was added")
    ap.set_defaults(mode="full")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cpu)")
    ap.add_argument("--dtype", default=None, choices=("fp32", "fp16"), help="default fp32 on CPU, fp16 on CUDA")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    ap.add_argument("--size", default=None, help="WIDTHxHEIGHT in pixels (default per mode)")
    ap.add_argument("--reps", type=int, default=None, help="interleaved repetitions (at least 3)")
    ap.add_argument("--e2e-steps", type=int, default=None, help="sampling steps of the measured end-to-end runs")
    ap.add_argument("--prompt", default=PROMPT)
    ap.add_argument("--only", choices=("sd1", "sdxl"), default=None,
                    help="measure only the SD1 figures or only the SDXL row (default: both, side by side)")
    ap.add_argument("--sdxl-size", default=None, help="WIDTHxHEIGHT of the SDXL row (default per mode)")
    return ap.parse_args(argv)


def _size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    return int(w), int(h or w)


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def _plain(value: Any) -> Any:
    """Rounded floats; NaN (a ratio with nothing to compare, e.g. no memory above the weights) as JSON null."""
    if isinstance(value, float):
        return round(value, 4) if math.isfinite(value) else None
    return value


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Every mode prints the FLOP and memory figures counted on the meta device: refused up front where torch cannot.
    if line := refused("bench", FLOP_FORMULAS, *MEMORY_NEEDS):
        print(line, file=sys.stderr)
        return 2
    plan = PLANS[args.mode]
    if args.size:
        plan = replace(plan, size=_size(args.size))
    if args.sdxl_size:
        plan = replace(plan, sdxl_size=_size(args.sdxl_size))
    if args.reps:
        plan = replace(plan, reps=max(3, args.reps), e2e_reps=max(3, args.reps), off_reps=max(3, args.reps))
    if args.e2e_steps:
        plan = replace(plan, e2e_steps=args.e2e_steps)
    device = torch.device(args.device or "cpu")
    dtype = {"fp32": torch.float32, "fp16": torch.float16}[args.dtype or ("fp16" if device.type == "cuda" else "fp32")]
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    command = "python -m bench" + ("" if args.mode == "full" else f" --{args.mode}") + (
        f" --only {args.only}" if args.only else "")
    started = time.perf_counter()
    out = Printer()
    meter = MemoryMeter(device)  # first: on Linux it fixes glibc's thresholds before the model is allocated

    out.line(f"T-SAM benchmark, {plan.mode} mode ({command})")
    for key, value in machine(device, dtype).items():
        out.line(f"  {key}: {value}")
    out.line(f"  load average at start: {load_average()} (other processes on the machine add noise to every time)")
    results: dict[str, Any] = {}
    results.update(native_figures(args.prompt, out))
    results.update(memory_figures(out))
    if args.only != "sdxl":
        results.update(sd1_figures(plan, args.prompt, device, dtype, meter, out))
        gc.collect()  # the SD1 model is gone before the SDXL UNet (10 GB in fp32) is built
    if args.only != "sd1":
        results.update(sdxl_figures(plan, args.prompt, device, dtype, meter, out))

    out.line("")
    out.line("targets (ratios to plain):")
    notes: dict[str, str] = {}
    if "iteration_vs_full" in results:
        notes["iteration_vs_full"] = f"at {plan.size[0]}x{plan.size[1]}" + "".join(
            f"; {k[len('iteration_vs_full_'):]}: {v:.3f}" for k, v in results.items()
            if k.startswith("iteration_vs_full_")) + f"; in FLOPs {results['iteration_flops_vs_full']:.3f}"
        notes["official_total_vs_plain"] = (f"{results['official_iterations_at_n']} iterations run; every "
                                            f"refinement capped: {results['official_total_vs_plain_worst_case']:.3f}")
        notes["peak_mem_ratio"] = (f"above the weights: {results['peak_mem_extra_ratio']:.2f}; memory mode: "
                                   f"{results['lowmem_peak_mem_ratio']:.3f} / "
                                   f"{results['lowmem_peak_mem_extra_ratio']:.2f}")
    notes["sdxl_iteration_flops_vs_plain_step"] = (f"full-size UNet at 1024x1024 in FLOPs ("
                                                   f"{results['sdxl_1024_iteration_tflop']:.2f} vs "
                                                   f"{results['sdxl_1024_plain_step_tflop']:.2f} TFLOP)")
    if "sdxl_iteration_vs_plain_step" in results:
        where = f"SDXL {results['sdxl_model']} UNet at {results['sdxl_size']}"
        notes["sdxl_iteration_vs_plain_step"] = where
        notes["sdxl_peak_mem_ratio"] = f"{where}; above the weights: {results['sdxl_peak_mem_extra_ratio']:.2f}"
        notes["sdxl_off_overhead"] = f"tiny SDXL through the stand-in host at {results['sdxl_off_size']}"
    for key, bound in TARGETS.items():
        if key not in results:
            continue
        value = results[key]
        verdict = "met" if value <= bound else "NOT met"
        out.line(f"  {key:<28} {value:6.3f}  target <= {bound:<5} {verdict:<8} {notes.get(key, '')}")
    out.line("memory targets (GiB beyond a plain generation, fp16, SDPA/xformers):")
    for key, bound in MEMORY_TARGETS.items():
        verdict = "met" if results[key] <= bound else "NOT met"
        out.line(f"  {key:<36} {results[key]:6.3f}  target <= {bound:<5} {verdict}")
    if "reference_total_vs_plain" in results:
        out.line(f"  {'reference_total_vs_plain':<28} {results['reference_total_vs_plain']:6.3f}  the official "
                 f"pipeline's structure (every refinement capped: "
                 f"{results['reference_total_vs_plain_worst_case']:.3f})")
    out.line(f"load average at end: {load_average()}; wall time {time.perf_counter() - started:.0f} s")
    print(json.dumps({k: _plain(v) for k, v in results.items()}), flush=True)
    return 0


def sd1_figures(plan: Plan, prompt: str, device: torch.device, dtype: torch.dtype, meter: MemoryMeter,
                out: Printer) -> dict[str, Any]:
    """The SD1 figures (unit costs at each size, memory, end to end, totals, installed-but-off). A function of its
    own so that the model is released when it returns."""
    t0 = time.perf_counter()
    sd = build_model(plan.model, device, dtype)
    described = ("SD1.x full size (ldm UNetModel v1 config: 320 ch, mult 1-2-4-4, 8 heads, context 768)"
                 if plan.model == "full" else "the tiny SD1-architecture test model")
    out.line(f"model: {described}, random weights widened (models.widen_random_init); "
             f"built in {time.perf_counter() - t0:.0f} s")
    out.line(f"prompt: {prompt!r}; sampler Euler, CFG 7.5, N = {plan.n} for totals; medians of interleaved "
             f"repetitions")

    results: dict[str, Any] = {}
    sizes = (plan.size, *plan.extra_sizes)
    units_by_size = {}
    for size in sizes:
        work = Workload(sd, size=size, device=device, dtype=dtype, prompt=prompt)
        units_by_size[size] = unit_costs(work, plan.reps, out, everything=size == plan.size)
        if size == plan.size:
            main_work = work
    units = units_by_size[plan.size]
    memory = peak_memory(main_work, meter, out)
    e2e = end_to_end(main_work, plan, out)
    totals = extrapolate(units, e2e, plan, out)
    off = installed_but_off(main_work, plan, out)

    results.update(
        iteration_vs_full=ratio(units["iteration"], units["iteration_full"]),
        iteration_vs_plain_step=ratio(units["iteration"], units["plain_step"]),
        paper_total_vs_plain=totals["paper"],
        official_total_vs_plain=totals["official"],
        reference_total_vs_plain=totals["reference"],
        off_overhead=off,
        peak_mem_ratio=ratio(memory["iteration"].total, memory["plain_step"].total),
        # Context for the figures above (not targets):
        iteration_flops_vs_full=ratio(units["flops_iteration"], units["flops_iteration_full"]),
        iteration_flops_vs_plain_step=ratio(units["flops_iteration"], units["flops_plain_step"]),
        lowmem_iteration_vs_plain_step=ratio(units["iteration_low_memory"], units["plain_step"]),
        peak_mem_extra_ratio=ratio(memory["iteration"].extra, memory["plain_step"].extra),
        lowmem_peak_mem_ratio=ratio(memory["iteration_low_memory"].total, memory["plain_step"].total),
        lowmem_peak_mem_extra_ratio=ratio(memory["iteration_low_memory"].extra, memory["plain_step"].extra),
        official_total_vs_plain_worst_case=totals["official_worst"],
        reference_total_vs_plain_worst_case=totals["reference_worst"],
        measured_e2e_steps=plan.e2e_steps,
        measured_paper_vs_plain=e2e["ratios"]["paper"],
        measured_official_vs_plain=e2e["ratios"]["official"],
        measured_reference_vs_plain=e2e["ratios"]["reference"],
        official_iterations_at_n=totals["official_iterations"],
    )
    for size in plan.extra_sizes:
        u = units_by_size[size]
        tag = f"{size[0]}x{size[1]}"
        results[f"iteration_vs_full_{tag}"] = ratio(u["iteration"], u["iteration_full"])
        results[f"iteration_vs_plain_step_{tag}"] = ratio(u["iteration"], u["plain_step"])
        results[f"iteration_flops_vs_full_{tag}"] = ratio(u["flops_iteration"], u["flops_iteration_full"])
    return results


def sdxl_figures(plan: Plan, prompt: str, device: torch.device, dtype: torch.dtype, meter: MemoryMeter,
                 out: Printer) -> dict[str, Any]:
    """The SDXL row: one T-SAM iteration (truncated forward + backward of the conditional row, batch 1, through
    AlignSession at the SDXL family's layout level) vs one plain CFG step (batch 2), time and peak memory from the
    same calls; then installed-but-off with the tiny SDXL through the stand-in host."""
    w, h = plan.sdxl_size
    out.line("")
    t0 = time.perf_counter()
    work = sdxl_workload(plan.sdxl_model, plan.sdxl_size, device, dtype, prompt)
    described = ("SDXL base's UNet at full size (standalone.sdxl.full_size_sdxl_unet: 320 ch, mult 1-2-4, "
                 "transformer depth 1-2-10, context 2048, adm 2816), random weights widened; a random context and "
                 "vector stand in for the text encoders (not part of these figures), T from the tiny SDXL's CLIP-L"
                 if plan.sdxl_model == "full" else "the tiny SDXL test model (CLIP-L + bigG text side)")
    out.line(f"SDXL row: {described}; built in {time.perf_counter() - t0:.0f} s")
    if plan.sdxl_model == "full" and plan.sdxl_size != (1024, 1024):
        out.line(f"  at {w}x{h}, not SDXL's native 1024x1024: a call of the full UNet on a few CPU cores takes "
                 "minutes (pass --sdxl-size 1024x1024 where there is the time)")
    capture = work.session()._capture_once()
    out.line(f"SDXL unit costs and peak memory at {w}x{h} (latent {h // 8}x{w // 8}, level-{work.level} maps "
             f"{capture.size[0]}x{capture.size[1]}); one warm-up round, then median of {plan.sdxl_reps}:")
    fns = {"plain_step": work.plain_step, "iteration": work.iteration}
    times, peaks = timed_peaks(fns, plan.sdxl_reps, device, meter, log=out.line)
    plain, iteration = median(times["plain_step"]), median(times["iteration"])
    out.line(f"  plain CFG step (UNet batch 2, no grad)        {plain:8.2f} s")
    out.line(f"  T-SAM iteration, optimised (batch 1)          {iteration:8.2f} s  {iteration / plain:6.3f} x plain")
    for name, p in peaks.items():
        out.line(f"  peak {name:<12} total {p.total / 2**20:9.0f} MiB "
                 f"({p.total / peaks['plain_step'].total:5.3f} x plain)   extra {p.extra / 2**20:8.0f} MiB "
                 f"({ratio(p.extra, peaks['plain_step'].extra):5.2f} x plain)  ({meter.method})")
    del work, fns, capture
    gc.collect()  # the full UNet is released before the stand-in runs

    off_plan = replace(plan, size=plan.sdxl_off_size)
    off_work = sdxl_workload("tiny", plan.sdxl_off_size, device, dtype, prompt)
    off = installed_but_off(off_work, off_plan, out, label=f"SDXL (tiny model, {off_plan.size[0]}x{off_plan.size[1]})")
    return {
        "sdxl_iteration_vs_plain_step": ratio(iteration, plain),
        "sdxl_off_overhead": off,
        "sdxl_peak_mem_ratio": ratio(peaks["iteration"].total, peaks["plain_step"].total),
        # Context (not targets):
        "sdxl_peak_mem_extra_ratio": ratio(peaks["iteration"].extra, peaks["plain_step"].extra),
        "sdxl_plain_step_s": plain,
        "sdxl_iteration_s": iteration,
        "sdxl_model": plan.sdxl_model,
        "sdxl_size": f"{w}x{h}",
        "sdxl_off_size": f"{off_plan.size[0]}x{off_plan.size[1]}",
    }


def native_figures(prompt: str, out: Printer) -> dict[str, float]:
    """FLOPs of an iteration and of a plain CFG step at each family's native size, counted on the meta device
    (bench/native.py): hardware-independent, the measure SDXL's cost is judged by (CPU time at 512² is not its
    workload)."""
    t0 = time.perf_counter()
    figures = native_flops(prompt)
    out.line("")
    seconds = time.perf_counter() - t0
    out.line(f"FLOPs at native sizes (full-size UNets on the meta device: shapes only, {seconds:.0f} s):")
    for name, label in (("sd1_512", "SD1 at 512x512"), ("sdxl_1024", "SDXL at 1024x1024")):
        iteration, plain = figures[f"{name}_iteration_tflop"], figures[f"{name}_plain_step_tflop"]
        low = figures[f"{name}_iteration_tflop_low_memory"]
        out.line(f"  {label:<18} iteration {iteration:6.2f} TFLOP, plain CFG step {plain:6.2f} TFLOP: "
                 f"{iteration / plain:.3f} x plain; memory mode {low:6.2f} TFLOP: {low / plain:.3f} x plain")
    return figures


def memory_figures(out: Printer) -> dict[str, float]:
    """The pass's memory at native sizes in fp16, counted on the meta device (bench/memory.py)."""
    t0 = time.perf_counter()
    figures = native_memory()
    out.line("")
    out.line(f"memory at native sizes, GiB in fp16, batch 1 (full-size UNets on the meta device, A1111's autocast "
             f"policy, {time.perf_counter() - t0:.0f} s):")
    out.line(f"  {'':<18} {'kernel':<16} {'plain step':>10} {'pass':>6} {'low':>6} {'extra':>6} {'extra low':>9}")
    for name, label in (("sd1_512", "SD1 at 512x512"), ("sdxl_1024", "SDXL at 1024x1024")):
        for suffix, kernel in (("", "SDPA/xformers"), ("_split", "Doggettx")):
            out.line(f"  {label:<18} {kernel:<16} {figures[f'{name}_plain_step_gib_fp16{suffix}']:10.2f} "
                     f"{figures[f'{name}_pass_gib_fp16{suffix}']:6.2f} "
                     f"{figures[f'{name}_pass_gib_fp16_low_memory{suffix}']:6.2f} "
                     f"{figures[f'{name}_pass_extra_gib_fp16{suffix}']:6.2f} "
                     f"{figures[f'{name}_pass_extra_gib_fp16_low_memory{suffix}']:9.2f}")
        out.line(f"  {label:<18} UNet weights {figures[f'{name}_unet_weights_gib_fp16']:.2f} GiB")
    return figures


class Printer:
    def line(self, text: str) -> None:
        print(text, flush=True)


# ---------------------------------------------------------------------------------------------------------------


def unit_costs(work: Workload, reps: int, out: Printer, everything: bool = True) -> dict[str, float]:
    """Seconds of one plain CFG step and of one optimisation iteration in each variant, on the same shapes
    (everything=False: only the plain step and the optimised and full iterations)."""
    h, w = work.latent_hw
    out.line("")
    out.line(f"unit costs at {work.width}x{work.height} (latent {h}x{w}, level-4 maps "
             f"{work.session()._capture_once().size[0]}x{work.session()._capture_once().size[1]}), "
             f"median of {reps}:")
    fns: dict[str, Callable[[], Any]] = {
        "plain_step": work.plain_step,
        "iteration": work.iteration,
        "iteration_full": lambda: work.iteration(optimised=False),
        "iteration_low_memory": lambda: work.iteration(low_memory=True),
        "forward_with_grad_full": work.forward_with_grad,
        "forward_with_grad": lambda: work.forward_with_grad(optimised=True),
        "unet_forward_b1": lambda: work.unet_forward(capture=False),
        "unet_forward_b1_capture": lambda: work.unet_forward(capture=True),
        "text_target": work.text_target,
    }
    if not everything:
        fns = {k: fns[k] for k in ("plain_step", "iteration", "iteration_full", "forward_with_grad",
                                   "forward_with_grad_full")}
    times = interleaved(fns, reps, work.device, log=out.line)
    units = {name: median(t) for name, t in times.items()}
    plain = units["plain_step"]
    labels = {
        "plain_step": "plain CFG step (UNet batch 2, no grad)",
        "iteration": "T-SAM iteration, optimised",
        "iteration_full": "T-SAM iteration, full UNet forward (reference)",
        "iteration_low_memory": "T-SAM iteration, memory mode",
        "forward_with_grad_full": "full forward with grad, no backward",
        "forward_with_grad": "truncated forward with grad, no backward",
        "unet_forward_b1": "UNet forward batch 1, no grad",
        "unet_forward_b1_capture": "  the same with the capture's hooks",
        "text_target": "T (text encoder with attentions)",
    }
    for name, value in units.items():
        out.line(f"  {labels[name]:<48} {value:8.3f} s  {value / plain:6.3f} x plain step")
    out.line(f"  -> optimised / full-forward iteration: {units['iteration'] / units['iteration_full']:.3f}")
    # Why the saving depends on the resolution: the loss never depends on the decoder blocks after the last map,
    # so autograd does not visit them even in the full pass. Both iterations pay the same backward; only the
    # forward is cut, and the skipped blocks' share of it grows with the image (quadratic self-attention at ds 1).
    backward = units["iteration"] - units["forward_with_grad"]
    skipped = ratio(units["forward_with_grad_full"] - units["forward_with_grad"], units["forward_with_grad_full"])
    out.line(f"  -> backward (the same in both iterations) ~{backward:.3f} s = "
             f"{ratio(backward, units['iteration_full']):.0%} of the full-forward iteration; truncation skips "
             f"{skipped:.0%} of the forward")
    flops = {name: count_flops(fns[name]) for name in ("plain_step", "iteration", "iteration_full")}
    units.update({f"flops_{k}": v for k, v in flops.items()})
    out.line(f"  -> FLOPs (hardware-independent): plain step {flops['plain_step'] / 1e9:.1f} G, optimised "
             f"iteration {flops['iteration'] / 1e9:.1f} G, full-forward iteration "
             f"{flops['iteration_full'] / 1e9:.1f} G: "
             f"ratio {ratio(flops['iteration'], flops['iteration_full']):.3f}")
    if everything:
        out.line(f"  -> the capture's hooks add {units['unet_forward_b1_capture'] / units['unet_forward_b1'] - 1:+.1%} "
                 f"to a forward; T costs {units['text_target'] / plain:.3f} plain steps, once per prompt")
    return units


def peak_memory(work: Workload, meter: MemoryMeter, out: Printer) -> dict[str, Any]:
    out.line("")
    out.line(f"peak memory ({meter.method}); 'extra' = above what was held before the call (weights excluded):")
    fns = {
        "plain_step": work.plain_step,
        "iteration": work.iteration,
        "iteration_full": lambda: work.iteration(optimised=False),
        "iteration_low_memory": lambda: work.iteration(low_memory=True),
        "iteration_weights_not_frozen": lambda: _unfrozen(work),
    }
    peaks = {}
    for name, fn in fns.items():
        if name == "iteration_weights_not_frozen":
            fn()  # the only one not yet run by the timings: its first call is not the steady state
        peaks[name] = meter.peak(fn)
    base = peaks["plain_step"]
    for name, p in peaks.items():
        out.line(f"  {name:<28} total {p.total / 2**20:9.0f} MiB ({p.total / base.total:5.3f} x plain)   "
                 f"extra {p.extra / 2**20:8.0f} MiB ({ratio(p.extra, base.extra):5.2f} x plain)")
    return peaks


def _unfrozen(work: Workload) -> None:
    """The optimised iteration with the weights left requiring grad: what freezing them saves in memory."""
    session = work.session()
    session.freeze_weights = False
    try:
        work.iteration()
    finally:
        session.freeze_weights = True


def end_to_end(work: Workload, plan: Plan, out: Printer) -> dict[str, Any]:
    """Whole samplings side by side (interleaved): plain, Paper, Official code, and the reference structure."""
    n = plan.e2e_steps
    out.line("")
    out.line(f"end to end at N = {n} (text encoding + T + sampling, no decode), median of {plan.e2e_reps}:")
    runs: dict[str, Sampling] = {}

    def keep(name: str, fn: Callable[[], Sampling]) -> Callable[[], None]:
        def run() -> None:
            runs[name] = fn()

        return run

    fns = {
        "plain": keep("plain", lambda: work.sample(None, n)),
        "paper": keep("paper", lambda: work.sample(AlignConfig.paper(), n)),
        "official": keep("official", lambda: work.sample(AlignConfig.official(), n)),
        "reference": keep("reference", lambda: work.sample(AlignConfig.official(), n, reference=True)),
    }
    times = interleaved(fns, plan.e2e_reps, work.device, warmup=0, log=out.line)
    totals = {name: median(t) for name, t in times.items()}
    ratios = {name: totals[name] / totals["plain"] for name in totals}
    same = bool(torch.allclose(runs["official"].latent, runs["reference"].latent, rtol=1e-4, atol=1e-4))
    for name in fns:
        its = runs[name].iterations
        detail = f"{its} iterations" if runs[name].reports else ""
        if runs[name].reports:
            detail += " (per step: " + " ".join(str(r.iterations) for r in runs[name].reports) + ")"
        out.line(f"  {name:<10} {totals[name]:8.2f} s  {ratios[name]:6.3f} x plain  {detail}")
    out.line(f"  official and reference give the same latent: {same}")
    return {"totals": totals, "ratios": ratios, "runs": runs}


def extrapolate(units: dict[str, float], e2e: dict[str, Any], plan: Plan, out: Printer) -> dict[str, float]:
    """Totals at N from unit costs and the iterations the optimiser ran; checked against the measured runs."""
    p, it, full, fwd, tt = (units[k] for k in ("plain_step", "iteration", "iteration_full",
                                                "forward_with_grad_full", "text_target"))
    runs: dict[str, Sampling] = e2e["runs"]

    def model(steps: int, iters: int, refinements: int = 0, reference: bool = False) -> float:
        per = full if reference else it
        return (steps * p + iters * per + (refinements * fwd if reference else 0.0) + tt) / (steps * p)

    n = plan.n
    official = AlignConfig.official()
    refine_steps_small = official.refinement_steps(plan.e2e_steps)
    # Iterations per optimised step as the optimiser ran them; refinement steps separately (they run up to the cap).
    off_reports = runs["official"].reports
    refine_counts = [r.iterations for r in off_reports if r.step in refine_steps_small]
    plain_counts = [r.iterations for r in off_reports if r.step not in refine_steps_small]
    per_refine = sum(refine_counts) / max(1, len(refine_counts))
    per_plain = sum(plain_counts) / max(1, len(plain_counts)) if plain_counts else 1.0
    paper_counts = [r.iterations for r in runs["paper"].reports]
    per_paper = sum(paper_counts) / max(1, len(paper_counts))
    n_refine = len(official.refinement_steps(n))
    n_paper = round(AlignConfig.paper().optimised_steps(n) * per_paper)
    n_official = round((official.optimised_steps(n) - n_refine) * per_plain + n_refine * per_refine)
    if plan.e2e_steps == n:  # measured at N itself: the counts are the run's own
        n_paper, n_official = runs["paper"].iterations, runs["official"].iterations
    worst = official.optimised_steps(n) - n_refine + n_refine * (official.refine_iters + 1)
    totals = {
        "paper": model(n, n_paper),
        "official": model(n, n_official),
        "reference": model(n, n_official, n_refine, reference=True),
        "official_worst": model(n, worst),
        "reference_worst": model(n, worst, n_refine, reference=True),
        "official_iterations": n_official,
    }
    out.line("")
    out.line(f"totals at N = {n} from unit costs x iterations run (+ T once), as ratios to plain:")
    out.line(f"  paper      {totals['paper']:6.3f}  ({n_paper} iterations)")
    out.line(f"  official   {totals['official']:6.3f}  ({n_official} iterations: {per_refine:.1f} per refinement step "
             f"x {n_refine}, as measured at N = {plan.e2e_steps}; worst case with every refinement capped: "
             f"{worst} iterations, {totals['official_worst']:.3f})")
    out.line(f"  reference  {totals['reference']:6.3f}  (same iterations, full UNet forward, + {n_refine} extra "
             f"forwards after refinement)")
    small = plan.e2e_steps
    predicted = {
        "paper": model(small, runs["paper"].iterations),
        "official": model(small, runs["official"].iterations),
        "reference": model(small, runs["official"].iterations, len(refine_steps_small), reference=True),
    }
    out.line(f"  check at N = {small}: predicted / measured  " + ", ".join(
        f"{k} {v:.3f} / {e2e['ratios'][k]:.3f}" for k, v in predicted.items()))
    return totals


def installed_but_off(work: Workload, plan: Plan, out: Printer, label: str = "") -> float:
    runner: OffRunner = off_runner(work, plan.off_steps)
    out.line("")
    out.line(f"installed but off{', ' + label if label else ''}, N = {plan.off_steps}, median of {plan.off_reps}: "
             f"{runner.kind}")
    times = interleaved({"off": runner.with_extension, "absent": runner.without_extension}, plan.off_reps,
                        work.device, log=out.line)
    with_ext, without = median(times["off"]), median(times["absent"])
    counts_on, counts_off = runner.counts()
    out.line(f"  installed, off {with_ext:8.2f} s   not installed {without:8.2f} s   ratio {with_ext / without:.4f}")
    out.line(f"  work done: installed-off {counts_on}, not installed {counts_off}: "
             f"{'identical' if counts_on == counts_off else 'DIFFERENT'}")
    runner.close()
    return with_ext / without
