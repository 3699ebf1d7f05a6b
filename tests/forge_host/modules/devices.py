"""Mirrors Forge's modules/devices.py, which hands everything to backend.memory_management: `device`, `dtype` and
friends come from it, `autocast` / `without_autocast` are null contexts, and `test_for_nans` does NOTHING (Forge
removed A1111's NaN check: an all-NaN latent decodes to a broken image instead of raising NansException).
Simplified: CPU, float32.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from backend import memory_management

cpu = torch.device("cpu")
device = memory_management.get_torch_device()
dtype = torch.float32
dtype_vae = memory_management.vae_dtype()
dtype_unet = memory_management.unet_dtype()
dtype_inference = memory_management.unet_dtype()
unet_needs_upcast = False
fp8 = False


def get_optimal_device() -> torch.device:
    return memory_management.get_torch_device()


def torch_gc() -> None:
    memory_management.soft_empty_cache()


def cond_cast_unet(input: Any) -> Any:
    return input


def cond_cast_float(input: Any) -> Any:
    return input


def autocast(disable: bool = False) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


def without_autocast(disable: bool = False) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


class NansException(Exception):
    pass


def test_for_nans(x: torch.Tensor, where: str) -> None:
    return
