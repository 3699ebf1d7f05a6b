"""Mirrors backend/diffusion_engine/sd20.py: `StableDiffusion2`, Forge's SD 2.x engine.

forge_objects = (UnetPatcher around KModel(IntegratedUNet2DConditionModel, the predictor of the scheduler config —
v_prediction for 768-v checkpoints, which backend/loader.py takes from the `.yaml` beside the checkpoint), CLIP with
`clip_h`, VAE, no clipvision); one `text_processing_engine` on clip_h (embedding_key "clip_h", expected shape 1024,
minimal_clip_skip 1, clip_skip 1, final_layer_norm True, no pooled output); `is_sd2` True.
clip_h is OpenCLIP-H's text tower converted to a transformers CLIPTextModel with the config Forge ships in
backend/huggingface/stabilityai/stable-diffusion-2-1/text_encoder: 23 layers, so the checkpoint's 24th block is
left out ("CLIPTextModel Unexpected: [...layers.23...]" in Forge's log) and hidden_states[-1] + final_layer_norm at
clip skip 1 is ldm's "penultimate" cond (see forge_models.forge_sd2). Its tokenizer pads with "!" (id 0).
Simplified as sd15.py: no encode_first_stage, no checkpoint saving.
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


class StableDiffusion2(ForgeDiffusionEngine):
    def __init__(self, estimated_config: Any, huggingface_components: dict[str, Any]) -> None:
        super().__init__(estimated_config, huggingface_components)
        clip = CLIP(model_dict={"clip_h": huggingface_components["text_encoder"]},
                    tokenizer_dict={"clip_h": huggingface_components["tokenizer"]})
        vae = VAE(model=huggingface_components["vae"])
        unet = UnetPatcher.from_model(model=huggingface_components["unet"],
                                      diffusers_scheduler=huggingface_components["scheduler"], config=estimated_config)
        self.text_processing_engine = ClassicTextProcessingEngine(
            text_encoder=clip.cond_stage_model.clip_h, tokenizer=clip.tokenizer.clip_h, embedding_key="clip_h",
            embedding_expected_shape=1024, text_projection=False, minimal_clip_skip=1, clip_skip=1,
            return_pooled=False, final_layer_norm=True)
        self.forge_objects = ForgeObjects(unet=unet, clip=clip, vae=vae, clipvision=None)
        self.forge_objects_original = self.forge_objects.shallow_copy()
        self.forge_objects_after_applying_lora = self.forge_objects.shallow_copy()
        self.is_sd2 = True

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
