"""Shared fixtures. The tiny model is built once per test session (real ldm / transformers classes, random)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_model():
    from standalone.models import tiny_sd

    return tiny_sd(seed=0)
