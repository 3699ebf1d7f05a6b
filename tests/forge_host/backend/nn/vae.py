"""Mirrors backend/nn/vae.py's `IntegratedAutoencoderKL` on what decoding uses: `decoder`, `post_quant_conv`,
`scaling_factor`, `shift_factor`, `process_in` / `process_out`, `decode(z)`.
Simplified: the decoder is ldm's `Decoder` (the same layers as Forge's); no encoder (the stand-in's hires fix
upscales latents, so nothing is encoded).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class IntegratedAutoencoderKL(torch.nn.Module):
    def __init__(self, ddconfig: dict[str, Any], latent_channels: int = 4, scaling_factor: float = 0.18215,
                 shift_factor: float = 0.0) -> None:
        super().__init__()
        from ldm.modules.diffusionmodules.model import Decoder

        self.decoder = Decoder(**{**ddconfig, "z_channels": latent_channels})
        self.post_quant_conv = torch.nn.Conv2d(latent_channels, latent_channels, 1)
        self.config = dict(latent_channels=latent_channels, scaling_factor=scaling_factor, shift_factor=shift_factor)
        self.embed_dim = latent_channels
        self.scaling_factor = scaling_factor
        self.shift_factor = shift_factor

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(self.post_quant_conv(z))

    def process_in(self, latent: Tensor) -> Tensor:
        return (latent - self.shift_factor) * self.scaling_factor

    def process_out(self, latent: Tensor) -> Tensor:
        return (latent / self.scaling_factor) + self.shift_factor
