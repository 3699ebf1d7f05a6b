"""The interface every model family implements (see `lib_align.families`)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..capture import DEFAULT_LEVEL
from ..text import ChunkTarget


class ModelFamily:
    """One model family, bound to one loaded model (the host's `shared.sd_model` or a standalone model)."""

    name: ClassVar[str] = "?"
    # The level (latent / ds) whose cross-attention layers give the maps; 4 = the paper's 16x16 at SD1's 512^2.
    layout_level: ClassVar[int] = DEFAULT_LEVEL

    def __init__(self, model: Any, device: torch.device | None = None) -> None:
        self.model = model
        self._device = device

    @property
    def device(self) -> torch.device:
        """Where token ids go: the host's compute device (with --medvram the encoder is moved there on use, so its
        parameters' device at this moment is not the answer); standalone, the UNet's."""
        if self._device is None:
            self._device = next(self.unet.parameters(), torch.empty(0)).device
        return self._device

    @classmethod
    def detect(cls, model: Any) -> bool:
        """Whether this family runs this model."""
        raise NotImplementedError

    @property
    def unet(self) -> nn.Module:
        return self.model.model.diffusion_model

    def apply_model(self, z: Tensor, t: Tensor, cond: Any) -> Any:
        """The differentiable UNet call on the conditional rows (through the host's wrapper, e.g. --medvram)."""
        return self.model.apply_model(z, t, cond)

    def prompt_targets(self, text: str, power: float, clip_skip: int | None) -> list[ChunkTarget]:
        """T per 77-token chunk of one prompt, tokenised as the model's own text side does, with word labels.
        `clip_skip`: the host's Clip skip where the host applies it to this family's encoder, None where the
        encoder's configured layer is used."""
        raise NotImplementedError

    def uses_clip_skip(self, options: Any) -> bool:
        """Whether the host applies its "Clip skip" setting to the encoder T comes from (`options`: the host's
        settings object). SD1: always."""
        return True

    def analysis_targets(self, text: str, power: float, clip_skip: int | None) -> list[tuple[str, list[ChunkTarget]]]:
        """What "Analyze prompt" draws: (title, T per chunk) pairs; by default the one T that T-SAM uses."""
        return [("T", self.prompt_targets(text, power, clip_skip))]

    def cond_rows(self, text_cond: Any, image_cond: Tensor, batch: int) -> Any:
        """The conditioning of the first `batch` rows (the conditional ones) in the form `apply_model` takes, or
        None when the rows are not one per image (multi-cond, another extension's extra rows)."""
        raise NotImplementedError
