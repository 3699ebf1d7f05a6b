"""Timing and peak-memory primitives: interleaved repetitions with medians, the resident or CUDA memory high-water
mark of one call, and a description of the machine the numbers came from."""

from __future__ import annotations

import ctypes
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: Mapping[str, Callable[[], Any]], reps: int, device: torch.device,
                warmup: int = 1, log: Callable[[str], None] | None = None) -> dict[str, list[float]]:
    """Seconds per call of each function, measured round-robin: rep 1 of every function, then rep 2, ...

    Interleaving spreads slow drifts of the machine (other processes, clocks) over all candidates alike, so their
    ratios stay fair even when the absolute times wander; the median then drops the outliers.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for rep in range(reps):
        for name, fn in fns.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
        if log:
            log(f"  rep {rep + 1}/{reps}: " + ", ".join(f"{n} {t[-1]:.2f}s" for n, t in times.items()))
    return times


def timed_peaks(fns: Mapping[str, Callable[[], Any]], reps: int, device: torch.device, meter: MemoryMeter,
                log: Callable[[str], None] | None = None) -> tuple[dict[str, list[float]], dict[str, Peak]]:
    """Seconds and peak memory of each function from the same calls, round-robin as in `interleaved`: one warm-up
    round (its times dropped), then `reps` rounds; the peaks are the last round's (the steady state).

    For a model whose every call takes minutes (full-size SDXL on a CPU) there is no time for separate memory
    runs; the meter's own work (a gc pass, reading /proc) happens outside the timed span.
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    peaks: dict[str, Peak] = {}
    for rep in range(reps + 1):
        for name, fn in fns.items():
            elapsed: list[float] = []

            def timed(fn: Callable[[], Any] = fn, elapsed: list[float] = elapsed) -> None:
                synchronize(device)
                start = time.perf_counter()
                fn()
                synchronize(device)
                elapsed.append(time.perf_counter() - start)

            peaks[name] = meter.peak(timed)
            if rep:
                times[name].append(elapsed[0])
            if log:
                label = "warm-up" if rep == 0 else f"rep {rep}/{reps}"
                log(f"  {label}: {name} {elapsed[0]:.2f}s, peak {peaks[name].total / 2**20:.0f} MiB")
    return times, peaks


def median(values: list[float]) -> float:
    return float(statistics.median(values))


# ---------------------------------------------------------------------------------------------------------------
# memory


def _fixed_malloc_thresholds() -> bool:
    """Make glibc return freed large blocks to the OS at once (fixed mmap threshold, small trim threshold).

    By default glibc raises its mmap threshold after the first large free, after which freed tensors stay in the
    heap and the resident size no longer follows what is in use: the high-water mark of a later call would then
    depend on what ran before it.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 128 * 1024)) and bool(libc.mallopt(m_trim_threshold, 128 * 1024))
    except OSError:
        return False


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _reset_rss_peak() -> bool:
    """Linux: writing 5 to clear_refs resets VmHWM (the resident high-water mark) to the current resident size."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@dataclass
class Peak:
    total: float  # bytes: the high-water mark of everything held (weights included), as max_memory_allocated
    extra: float  # bytes: that mark above what was held when the call began (the call's own working memory)


@dataclass
class MemoryMeter:
    """Peak memory of one call: `torch.cuda.max_memory_allocated` on CUDA, the resident high-water mark (VmHWM,
    reset before each call) on Linux CPUs. `method` names what was measured."""

    device: torch.device
    method: str = field(init=False)

    def __post_init__(self) -> None:
        if self.device.type == "cuda":
            self.method = "torch.cuda.max_memory_allocated"
        elif sys.platform.startswith("linux") and _reset_rss_peak():
            fixed = _fixed_malloc_thresholds()
            self.method = "resident set high-water mark (VmHWM, reset per call" + (
                "; glibc mmap threshold fixed at 128 KiB)" if fixed else ")")
        else:
            self.method = "unavailable"

    @property
    def available(self) -> bool:
        return self.method != "unavailable"

    def peak(self, fn: Callable[[], Any]) -> Peak:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            start = torch.cuda.memory_allocated(self.device)
            fn()
            torch.cuda.synchronize(self.device)
            top = torch.cuda.max_memory_allocated(self.device)
            return Peak(float(top), float(top - start))
        if not self.available:
            return Peak(float("nan"), float("nan"))
        _reset_rss_peak()
        start = _status_kib("VmRSS") * 1024
        fn()
        top = _status_kib("VmHWM") * 1024
        return Peak(float(top), float(top - start))


# ---------------------------------------------------------------------------------------------------------------
# the machine


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def machine(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "os": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
