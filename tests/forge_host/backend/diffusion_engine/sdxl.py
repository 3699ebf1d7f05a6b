"""Mirrors backend/diffusion_engine/sdxl.py: `StableDiffusionXL`, Forge's SDXL engine.

Two engines: `text_processing_engine_l` (clip_l: minimal_clip_skip 2, no final layer norm, no pooled output) and
`text_processing_engine_g` (clip_g, a transformers CLIPTextModel with a text_projection: minimal_clip_skip 2,
pooled output through text_projection). `get_learned_conditioning` (under inference mode) returns
{"crossattn": cat(cond_l, cond_g, dim=2) [B, 77k, 768+1280], "vector": cat(pooled_g, six size embeddings)
[B, 1280 + 6*256]}: original height/width, crop top/left (opts.sdxl_crop_top/left), target height/width, each
through `Timestep`. An all-empty negative prompt gives zeros for the text parts (the size embeddings stay).
`is_sdxl` True.
Simplified: the size-embedding width comes from the shapes, (adm_in_channels - bigG width) / 6 (256 for SDXL,
16 for the tiny test model; Forge hard-codes 256); no refiner engine, no checkpoint saving.
"""

from __future__ import annotations

from typing import Any

import torch
from modules.shared import opts

from backend import memory_management
from backend.diffusion_engine.base import ForgeDiffusionEngine, ForgeObjects
from backend.nn.unet import Timestep
from backend.patcher.clip import CLIP
from backend.patcher.unet import UnetPatcher
from backend.patcher.vae import VAE
from backend.text_processing.classic_engine import ClassicTextProcessingEngine


class StableDiffusionXL(ForgeDiffusionEngine):
    def __init__(self, estimated_config: Any, huggingface_components: dict[str, Any]) -> None:
        super().__init__(estimated_config, huggingface_components)
        clip = CLIP(model_dict={"clip_l": huggingface_components["text_encoder"],
                                "clip_g": huggingface_components["text_encoder_2"]},
                    tokenizer_dict={"clip_l": huggingface_components["tokenizer"],
                                    "clip_g": huggingface_components["tokenizer_2"]})
        vae = VAE(model=huggingface_components["vae"])
        unet = UnetPatcher.from_model(model=huggingface_components["unet"],
                                      diffusers_scheduler=huggingface_components["scheduler"], config=estimated_config)
        common = dict(embedding_expected_shape=2048, minimal_clip_skip=2, clip_skip=2, final_layer_norm=False)
        self.text_processing_engine_l = ClassicTextProcessingEngine(
            text_encoder=clip.cond_stage_model.clip_l, tokenizer=clip.tokenizer.clip_l, embedding_key="clip_l",
            text_projection=False, return_pooled=False, **common)
        self.text_processing_engine_g = ClassicTextProcessingEngine(
            text_encoder=clip.cond_stage_model.clip_g, tokenizer=clip.tokenizer.clip_g, embedding_key="clip_g",
            text_projection=True, return_pooled=True, **common)
        width_g = clip.cond_stage_model.clip_g.transformer.config.hidden_size
        self.embedder = Timestep((unet.model.diffusion_model.config["adm_in_channels"] - width_g) // 6)
        self.forge_objects = ForgeObjects(unet=unet, clip=clip, vae=vae, clipvision=None)
        self.forge_objects_original = self.forge_objects.shallow_copy()
        self.forge_objects_after_applying_lora = self.forge_objects.shallow_copy()
        self.is_sdxl = True

    def set_clip_skip(self, clip_skip: int) -> None:
        self.text_processing_engine_l.clip_skip = clip_skip
        self.text_processing_engine_g.clip_skip = clip_skip

    @torch.inference_mode()
    def get_learned_conditioning(self, prompt: list[str]) -> dict[str, torch.Tensor]:
        memory_management.load_model_gpu(self.forge_objects.clip.patcher)
        cond_l = self.text_processing_engine_l(prompt)
        cond_g, clip_pooled = self.text_processing_engine_g(prompt)
        width = getattr(prompt, "width", 1024) or 1024
        height = getattr(prompt, "height", 1024) or 1024
        is_negative_prompt = getattr(prompt, "is_negative_prompt", False)
        crop_w, crop_h = getattr(opts, "sdxl_crop_left", 0), getattr(opts, "sdxl_crop_top", 0)
        sizes = [height, width, crop_h, crop_w, height, width]
        flat = torch.flatten(torch.cat([self.embedder(torch.Tensor([s])) for s in sizes]))
        flat = flat.unsqueeze(dim=0).repeat(clip_pooled.shape[0], 1).to(clip_pooled)
        if is_negative_prompt and all(x == "" for x in prompt):
            clip_pooled, cond_l, cond_g = (torch.zeros_like(t) for t in (clip_pooled, cond_l, cond_g))
        return dict(crossattn=torch.cat([cond_l, cond_g], dim=2), vector=torch.cat([clip_pooled, flat], dim=1))

    @torch.inference_mode()
    def get_prompt_lengths_on_ui(self, prompt: str) -> tuple[int, int]:
        _, token_count = self.text_processing_engine_l.process_texts([prompt])
        return token_count, self.text_processing_engine_l.get_target_prompt_token_count(token_count)

    @torch.inference_mode()
    def decode_first_stage(self, x: torch.Tensor) -> torch.Tensor:
        sample = self.forge_objects.vae.first_stage_model.process_out(x)
        sample = self.forge_objects.vae.decode(sample).movedim(-1, 1) * 2.0 - 1.0
        return sample.to(x)
