"""Mirrors backend/patcher/vae.py's `VAE` on decoding: `first_stage_model`, `patcher`, `latent_channels`,
`decode(samples)` -> pixels in [0, 1], channels LAST ([B, H, W, 3]), after loading the patcher.
Simplified: no tiling, no out-of-memory fallback, no encoding.
"""

from __future__ import annotations

import torch
from torch import Tensor

from backend import memory_management
from backend.patcher.base import ModelPatcher


class VAE:
    def __init__(self, model: torch.nn.Module) -> None:
        self.first_stage_model = model.eval()
        self.latent_channels = int(model.config["latent_channels"])
        self.device = memory_management.vae_device()
        self.vae_dtype = memory_management.vae_dtype()
        self.output_device = memory_management.cpu
        self.patcher = ModelPatcher(self.first_stage_model, load_device=self.device,
                                    offload_device=memory_management.vae_offload_device())

    def decode(self, samples_in: Tensor) -> Tensor:
        memory_management.load_models_gpu([self.patcher])
        decoded = self.first_stage_model.decode(samples_in.to(self.vae_dtype).to(self.device))
        pixels = torch.clamp((decoded.to(self.output_device).float() + 1.0) / 2.0, min=0.0, max=1.0)
        return pixels.movedim(1, -1)
