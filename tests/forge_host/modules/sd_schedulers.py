"""Mirrors modules/sd_schedulers.py on the two schedules the stand-in offers: "Automatic" (no function: the
sampler's own `model_wrap.get_sigmas`) and "Simple" (every len(sigmas)/n-th model sigma from the top, then 0;
Forge's default for Flux). Simplified: no Karras, Exponential, SGM Uniform, Align Your Steps, Beta, ..."""

from __future__ import annotations

from collections import namedtuple
from typing import Any

import torch

Scheduler = namedtuple("Scheduler", ["name", "label", "function", "default_rho", "need_inner_model", "aliases"],
                       defaults=(-1, False, None))


def simple_scheduler(n: int, sigma_min: float, sigma_max: float, inner_model: Any, device: Any) -> torch.Tensor:
    step = len(inner_model.sigmas) / n
    sigmas = [float(inner_model.sigmas[-(1 + int(i * step))]) for i in range(n)] + [0.0]
    return torch.FloatTensor(sigmas).to(device)


schedulers = [
    Scheduler("automatic", "Automatic", None),
    Scheduler("simple", "Simple", simple_scheduler, need_inner_model=True),
]
schedulers_map = {**{x.name: x for x in schedulers}, **{x.label: x for x in schedulers}}
