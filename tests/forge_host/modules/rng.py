"""Mirrors modules/rng.py's `ImageRNG`: one generator per seed, so image i's noise does not depend on the batch it
is in. Simplified: CPU generator only, no subseeds / variation / seed resize. Made inside Forge's inference mode, its
tensors are inference tensors."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from modules import devices


class ImageRNG:
    def __init__(self, shape: Sequence[int], seeds: Sequence[int], **_ignored: object) -> None:
        self.shape = tuple(shape)
        self.generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]

    def next(self) -> torch.Tensor:
        return torch.stack([torch.randn(self.shape, generator=g) for g in self.generators]).to(devices.device)
