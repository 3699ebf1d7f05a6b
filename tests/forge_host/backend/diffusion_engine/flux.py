"""Mirrors backend/diffusion_engine/flux.py: `Flux`, Forge's engine for a model with no UNet and no
cross-attention to steer. Kept: the class name, every webui-legacy flag False (`is_sd1` / `is_sd2` / `is_sdxl` /
`is_sd3`), `forge_objects` whose `unet.model` is a KModel with a flow ('const') predictor and a non-UNet
`diffusion_model`, 16 latent channels, `text_processing_engine_l` (clip_l with pooled output), conds
{"crossattn", "vector"}.
Simplified (a stand-in, to be refused by extensions and to generate a normal image without them): the transformer
is `TinyFluxTransformer`, a few convolutions and projections; the T5 engine is absent and clip_l's cond stands in for
T5's as "crossattn"; schnell-like (no distilled guidance, predictor mu = 1.0).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from backend import memory_management
from backend.diffusion_engine.base import ForgeDiffusionEngine, ForgeObjects
from backend.modules.k_prediction import PredictionFlux
from backend.patcher.clip import CLIP
from backend.patcher.unet import UnetPatcher
from backend.patcher.vae import VAE
from backend.text_processing.classic_engine import ClassicTextProcessingEngine


class TinyFluxTransformer(nn.Module):
    """Stand-in for backend/nn/flux.py's IntegratedFluxTransformer2DModel: (x, timestep, context, y) -> a velocity
    of x's shape; no attention modules at all."""

    def __init__(self, channels: int, context_dim: int, pooled_dim: int) -> None:
        super().__init__()
        self.img_in = nn.Conv2d(channels, channels, 3, padding=1)
        self.txt_in = nn.Linear(context_dim, channels)
        self.vector_in = nn.Linear(pooled_dim, channels)

    def forward(self, x: Tensor, timestep: Tensor, context: Tensor | None = None, y: Tensor | None = None,
                guidance: Tensor | None = None, **kwargs: Any) -> Tensor:
        shift = self.txt_in(context.mean(dim=1)) + self.vector_in(y)
        return 0.1 * self.img_in(x) + x + 0.1 * shift[:, :, None, None] * timestep.view(-1, 1, 1, 1)


class Flux(ForgeDiffusionEngine):
    def __init__(self, estimated_config: Any, huggingface_components: dict[str, Any]) -> None:
        super().__init__(estimated_config, huggingface_components)
        self.is_inpaint = False
        clip = CLIP(model_dict={"clip_l": huggingface_components["text_encoder"]},
                    tokenizer_dict={"clip_l": huggingface_components["tokenizer"]})
        vae = VAE(model=huggingface_components["vae"])
        unet = UnetPatcher.from_model(model=huggingface_components["transformer"], diffusers_scheduler=None,
                                      k_predictor=PredictionFlux(mu=1.0), config=estimated_config)
        self.text_processing_engine_l = ClassicTextProcessingEngine(
            text_encoder=clip.cond_stage_model.clip_l, tokenizer=clip.tokenizer.clip_l, embedding_key="clip_l",
            text_projection=False, minimal_clip_skip=1, clip_skip=1, return_pooled=True, final_layer_norm=True)
        self.forge_objects = ForgeObjects(unet=unet, clip=clip, vae=vae, clipvision=None)
        self.forge_objects_original = self.forge_objects.shallow_copy()
        self.forge_objects_after_applying_lora = self.forge_objects.shallow_copy()

    def set_clip_skip(self, clip_skip: int) -> None:
        self.text_processing_engine_l.clip_skip = clip_skip

    @torch.inference_mode()
    def get_learned_conditioning(self, prompt: list[str]) -> dict[str, Tensor]:
        memory_management.load_model_gpu(self.forge_objects.clip.patcher)
        cond_l, pooled_l = self.text_processing_engine_l(prompt)
        return dict(crossattn=cond_l, vector=pooled_l)

    @torch.inference_mode()
    def decode_first_stage(self, x: Tensor) -> Tensor:
        sample = self.forge_objects.vae.first_stage_model.process_out(x)
        sample = self.forge_objects.vae.decode(sample).movedim(-1, 1) * 2.0 - 1.0
        return sample.to(x)
