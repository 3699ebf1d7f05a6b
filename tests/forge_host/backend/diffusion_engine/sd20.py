"""Mirrors backend/diffusion_engine/sd20.py: `StableDiffusion2`, Forge's SD 2.x engine.

forge_objects = (UnetPatcher around KModel(IntegratedUNet2DConditionModel, the predictor of the scheduler config —
v_prediction for 768-v checkpoints, which backend/loader.py takes from the `.yaml` beside the checkpoint), CLIP with
`clip_h`, VAE, no clipvision); one `text_processing_engine` on clip_h (embedding_key "clip_h", expected shape 1024,
minimal_clip_skip 1, clip_skip 1, final_layer_norm True, no pooled output); `is_sd2` True.
clip_h is OpenCLIP-H's text tower converted to a transformers CLIPTextModel with the config Forge ships in
backend/huggingface/stabilityai/stable-diffusion-2-1/text_encoder: 23 layers, so the checkpoint's 24th block is
left out ("CLIPTextModel Unexpected: [...layers.23...]" in Forge's log) and hidden_states[-1] + final_layer_norm at
clip skip 1 is ldm's "penultimate" cond (see forge_models.forge_sd2). Its tokenizer pads with "!" (id 0).
Simplified as sd15.py (whose code it shares): no encode_first_stage, no checkpoint saving.
"""

from __future__ import annotations

from backend.diffusion_engine.sd15 import StableDiffusion


class StableDiffusion2(StableDiffusion):
    """Forge's sd20.py repeats sd15.py line for line but for the text encoder's key and width and the flag."""

    text_key, text_width, flag = "clip_h", 1024, "is_sd2"
