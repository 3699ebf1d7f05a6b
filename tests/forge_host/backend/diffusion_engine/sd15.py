"""Mirrors backend/diffusion_engine/sd15.py: `StableDiffusion`, Forge's SD 1.x engine.

forge_objects = (UnetPatcher around KModel(IntegratedUNet2DConditionModel, SD's eps predictor), CLIP with
`clip_l`, VAE, no clipvision); one `text_processing_engine` on clip_l (minimal_clip_skip 1, final_layer_norm True,
no pooled output); `is_sd1` True. `get_learned_conditioning` runs under `torch.inference_mode()` (a decorator in
Forge too: the cond is an inference tensor [B, 77 * chunks, 768]) after loading the text encoder's patcher;
`decode_first_stage` too. Components come as Forge's loader passes them (`huggingface_components`: unet,
text_encoder, tokenizer, vae, scheduler).
Simplified: no encode_first_stage (nothing is encoded), no checkpoint saving.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from backend import memory_management
from backend.diffusion_engine.base import ForgeDiffusionEngine, ForgeObjects
from backend.patcher.clip import CLIP
from backend.patcher.unet import UnetPatcher
from backend.patcher.vae import VAE
from backend.text_processing.classic_engine import ClassicTextProcessingEngine


class StableDiffusion(ForgeDiffusionEngine):
    # Forge's sd20.py is this file with clip_h, 1024 and is_sd2 (sd20.py here overrides just these three).
    text_key, text_width, flag = "clip_l", 768, "is_sd1"

    def __init__(self, estimated_config: Any, huggingface_components: dict[str, Any]) -> None:
        super().__init__(estimated_config, huggingface_components)
        key = self.text_key
        clip = CLIP(model_dict={key: huggingface_components["text_encoder"]},
                    tokenizer_dict={key: huggingface_components["tokenizer"]})
        vae = VAE(model=huggingface_components["vae"])
        unet = UnetPatcher.from_model(model=huggingface_components["unet"],
                                      diffusers_scheduler=huggingface_components["scheduler"], config=estimated_config)
        self.text_processing_engine = ClassicTextProcessingEngine(
            text_encoder=getattr(clip.cond_stage_model, key), tokenizer=getattr(clip.tokenizer, key),
            embedding_key=key, embedding_expected_shape=self.text_width, text_projection=False, minimal_clip_skip=1,
            clip_skip=1, return_pooled=False, final_layer_norm=True)
        self.forge_objects = ForgeObjects(unet=unet, clip=clip, vae=vae, clipvision=None)
        self.forge_objects_original = self.forge_objects.shallow_copy()
        self.forge_objects_after_applying_lora = self.forge_objects.shallow_copy()
        setattr(self, self.flag, True)

    def set_clip_skip(self, clip_skip: int) -> None:
        self.text_processing_engine.clip_skip = clip_skip

    @torch.inference_mode()
    def get_learned_conditioning(self, prompt: list[str]) -> Tensor:
        memory_management.load_model_gpu(self.forge_objects.clip.patcher)
        return self.text_processing_engine(prompt)

    @torch.inference_mode()
    def get_prompt_lengths_on_ui(self, prompt: str) -> tuple[int, int]:
        _, token_count = self.text_processing_engine.process_texts([prompt])
        return token_count, self.text_processing_engine.get_target_prompt_token_count(token_count)

    @torch.inference_mode()
    def decode_first_stage(self, x: Tensor) -> Tensor:
        sample = self.forge_objects.vae.first_stage_model.process_out(x)
        sample = self.forge_objects.vae.decode(sample).movedim(-1, 1) * 2.0 - 1.0
        return sample.to(x)
