"""Mirrors modules/devices.py: CPU only, autocast is a no-op (the host's is a real autocast on GPU)."""

from __future__ import annotations

import contextlib

import torch

from modules import shared

device = torch.device("cpu")
cpu = torch.device("cpu")
dtype = torch.float32
unet_needs_upcast = False


def autocast(disable: bool = False) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


def without_autocast(disable: bool = False) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


class NansException(Exception):
    pass


def test_for_nans(x: torch.Tensor, where: str) -> None:
    """Like the host: raises only when the whole tensor is NaN (a partial NaN slips through to the image)."""
    if shared.cmd_opts.disable_nan_check:
        return
    if not bool(torch.all(torch.isnan(x))):
        return
    raise NansException(f"A tensor with all NaNs was produced in {where}.")
