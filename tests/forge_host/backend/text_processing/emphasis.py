"""Mirrors backend/text_processing/emphasis.py: how (word:1.2) weights act on the encoder output.
"Original" scales each token's output by its weight and restores the overall mean.
Stand-in only: the restoration is skipped when the new mean is ~0 relative to the values (the random tiny encoders'
final LayerNorm has zero bias, so both means are ~0 and their ratio is noise); trained encoders never hit this.
"""

from __future__ import annotations

import torch


class Emphasis:
    name = "Base"
    tokens: list[list[int]]
    multipliers: torch.Tensor
    z: torch.Tensor

    def after_transformers(self) -> None:
        pass


class EmphasisNone(Emphasis):
    name = "None"


class EmphasisIgnore(Emphasis):
    name = "Ignore"


class EmphasisOriginal(Emphasis):
    name = "Original"

    def after_transformers(self) -> None:
        original_mean = self.z.mean()
        self.z = self.z * self.multipliers.reshape(self.multipliers.shape + (1,)).expand(self.z.shape)
        new_mean = self.z.mean()
        if abs(float(new_mean)) > 1e-4 * float(self.z.abs().mean()):
            self.z = self.z * (original_mean / new_mean)


class EmphasisOriginalNoNorm(EmphasisOriginal):
    name = "No norm"

    def after_transformers(self) -> None:
        self.z = self.z * self.multipliers.reshape(self.multipliers.shape + (1,)).expand(self.z.shape)


options = [EmphasisNone, EmphasisIgnore, EmphasisOriginal, EmphasisOriginalNoNorm]


def get_current_option(emphasis_option_name: str) -> type[Emphasis]:
    return next((x for x in options if x.name == emphasis_option_name), EmphasisOriginal)
