"""`HostModelSDXL`: what the host's shared.sd_model looks like for an SDXL checkpoint, around standalone's
StableDiffusionXL (like standin.HostModel for SD1).

Read from A1111 1.10.1 (paths are A1111's) and from sgm (Stability-AI/generative-models, which A1111 loads SDXL with):
- sd_models.set_model_type (sd_models.py:379-401): a model with a `conditioner` is SDXL: is_sdxl True, is_sd1 /
  is_sd2 / is_ssd / is_sd3 False; set_model_fields gives latent_channels 4 (:406-407); is_sdxl_inpaint (:448-456)
  is False for the base model (it needs a 9-channel UNet input).
- sd_models_xl.extend_sdxl (:90-104): model.model.conditioning_key = "crossattn", cond_stage_key "txt",
  parameterization "eps" (EpsScaling in sd_xl_base.yaml), alphas_cumprod from sgm's LegacyDDPMDiscretization,
  conditioner.wrapped = Module().
- sd_hijack.hijack (sd_hijack.py:205-229): conditioner.embedders[0] (sgm FrozenCLIPEmbedder) becomes
  FrozenCLIPEmbedderForSDXLWithCustomWords, embedders[1] (sgm FrozenOpenCLIPEmbedder2) becomes
  FrozenOpenCLIPEmbedder2WithCustomWords; with two text models cond_stage_model IS the conditioner.
- sd_models_xl.get_learned_conditioning (:12-34): the batch's width/height (default 1024), the crop options, the
  aesthetic score (read by the refiner only) go into the sgm batch; an all-empty negative prompt is encoded with
  force_zero_embeddings=['txt'] (both text parts zero). Returns {"crossattn": [B, 77n, 2048], "vector": [B, 2816]}.
- sd_models_xl.apply_model (:37-43): catenates c_concat only for SDXL inpainting, then `self.model(x, t, cond)`,
  sgm's OpenAIWrapper: context=cond["crossattn"], y=cond["vector"] ("c_concat" is not read).
- sd_models_xl's GeneralConditioner additions (tokenize, process_texts, get_target_prompt_token_count,
  encode_embedding_init_text): the first embedder that has the method answers (CLIP-L's wrapper).
Simplified: one stand-in Hijack for both wrappers (the host's model_hijack); the SDXL options are read with getattr
(the stand-in Options does not list them; defaults are shared_options.py:188-192's); no ucg (A1111 sets it to 0);
textual-inversion embeddings are the stand-in's hook-based fixes.

Import after `standin` (which puts the stand-in `modules` first on sys.path).
"""

from __future__ import annotations

import types
from typing import Any

import torch
from modules import devices, shared
from modules.sd_hijack_clip import FrozenCLIPEmbedderForSDXLWithCustomWords, Hijack
from modules.sd_hijack_open_clip import FrozenOpenCLIPEmbedder2WithCustomWords

from standalone.sdxl import Conditioner

# shared_options.py:188-192 (section "Stable Diffusion XL").
SDXL_OPTION_DEFAULTS = {
    "sdxl_crop_top": 0,
    "sdxl_crop_left": 0,
    "sdxl_refiner_low_aesthetic_score": 2.5,
    "sdxl_refiner_high_aesthetic_score": 6.0,
}


def sdxl_option(name: str) -> Any:
    return getattr(shared.opts, name, SDXL_OPTION_DEFAULTS[name])


class HostConditioner(Conditioner):
    """sgm's GeneralConditioner with the methods sd_models_xl.py adds so it can stand where SD1's
    cond_stage_model is used: each asks the first embedder that has the method."""

    def _first(self, method: str) -> Any:
        for embedder in self.embedders:
            if hasattr(embedder, method):
                return getattr(embedder, method)
        raise AssertionError(f"no embedder has {method}")

    def tokenize(self, texts: list[str]) -> Any:
        return self._first("tokenize")(texts)

    def process_texts(self, texts: list[str]) -> Any:
        return self._first("process_texts")(texts)

    def get_target_prompt_token_count(self, token_count: int) -> int:
        return self._first("get_target_prompt_token_count")(token_count)

    def encode_embedding_init_text(self, init_text: str, nvpt: int) -> torch.Tensor:
        found = [e.encode_embedding_init_text(init_text, nvpt) for e in self.embedders
                 if hasattr(e, "encode_embedding_init_text")]
        return torch.cat(found, dim=1)


class OpenAIWrapperView:
    """`shared.sd_model.model`: sgm's OpenAIWrapper as extend_sdxl leaves it (`diffusion_model`, plus the
    `conditioning_key` A1111 sets on it). Calls the standalone model's wrapper, which it does not modify."""

    def __init__(self, wrapper: Any) -> None:
        self._wrapper = wrapper
        self.diffusion_model = wrapper.diffusion_model
        self.conditioning_key = "crossattn"

    def __call__(self, x: torch.Tensor, t: torch.Tensor, c: dict[str, Any], **kwargs: Any) -> torch.Tensor:
        return self._wrapper(x, t, c, **kwargs)


class HostModelSDXL:
    """The attributes of the host's shared.sd_model for an SDXL model that T-SAM and the stand-in read. Wraps the
    shared tiny model without changing it."""

    def __init__(self, sd: Any) -> None:
        self.sd = sd
        hijack = Hijack()
        raw = list(sd.conditioner.embedders)
        text = [FrozenCLIPEmbedderForSDXLWithCustomWords(raw[0], hijack),
                FrozenOpenCLIPEmbedder2WithCustomWords(raw[1], hijack)]
        for wrapper, wrapped in zip(text, raw[:2], strict=True):
            # The host's FrozenCLIPEmbedderWithCustomWordsBase copies these from the wrapped embedder
            # (sd_hijack_clip.py:302-306); GeneralConditioner reads input_key.
            wrapper.input_key = getattr(wrapped, "input_key", "txt")
            wrapper.is_trainable = False
            wrapper.legacy_ucg_val = None
        self.conditioner = HostConditioner([*text, *raw[2:]])
        self.conditioner.wrapped = torch.nn.Module()  # extend_sdxl
        self.cond_stage_model = self.conditioner
        self.model = OpenAIWrapperView(sd.model)
        self.cond_stage_key = "txt"
        self.is_sd1, self.is_sd2, self.is_sdxl, self.is_ssd, self.is_sd3 = False, False, True, False, False
        self.is_sdxl_inpaint = False
        self.latent_channels = 4
        self.parameterization = sd.parameterization
        self.alphas_cumprod = sd.alphas_cumprod
        self.lowvram = False
        self.sd_checkpoint_info = types.SimpleNamespace(name_for_extra="tiny-sdxl")

    def get_learned_conditioning(self, batch: Any) -> dict[str, torch.Tensor]:
        width = getattr(batch, "width", 1024) or 1024
        height = getattr(batch, "height", 1024) or 1024
        is_negative_prompt = getattr(batch, "is_negative_prompt", False)
        aesthetic_score = sdxl_option("sdxl_refiner_low_aesthetic_score" if is_negative_prompt
                                      else "sdxl_refiner_high_aesthetic_score")
        devices_args = dict(device=devices.device, dtype=devices.dtype)
        n = len(batch)
        sdxl_conds = {
            "txt": batch,
            "original_size_as_tuple": torch.tensor([height, width], **devices_args).repeat(n, 1),
            "crop_coords_top_left": torch.tensor([sdxl_option("sdxl_crop_top"), sdxl_option("sdxl_crop_left")],
                                                 **devices_args).repeat(n, 1),
            "target_size_as_tuple": torch.tensor([height, width], **devices_args).repeat(n, 1),
            "aesthetic_score": torch.tensor([aesthetic_score], **devices_args).repeat(n, 1),
        }
        force_zero_negative_prompt = is_negative_prompt and all(x == "" for x in batch)
        return self.conditioner(sdxl_conds, force_zero_embeddings=["txt"] if force_zero_negative_prompt else [])

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
        if self.is_sdxl_inpaint:
            x = torch.cat([x] + cond["c_concat"], dim=1)
        return self.model(x, t, cond)

    def decode_first_stage(self, z: torch.Tensor) -> torch.Tensor:
        return self.sd.decode_first_stage(z)
