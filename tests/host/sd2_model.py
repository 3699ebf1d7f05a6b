"""`HostModelSD2`: what the host's shared.sd_model looks like for an SD 2.x checkpoint, around standalone's
StableDiffusion2 (like standin.HostModel for SD1).

Read from A1111 1.10.1: sd_models.set_model_type (sd_models.py:379-401) sets is_sd1/is_sd2/is_sdxl/is_ssd/is_sd3
(is_sd2 because cond_stage_model has `.model`, i.e. ldm's FrozenOpenCLIPEmbedder); set_model_fields gives
latent_channels 4; load_model_weights sets is_sdxl_inpaint (False unless SDXL); sd_hijack.hijack (sd_hijack.py:242-244)
replaces cond_stage_model by FrozenOpenCLIPEmbedderWithCustomWords around the embedder. parameterization comes from
the config (v2-inference-v.yaml: "v"; v2-inference.yaml: ldm's default "eps").

Import after `standin` (which puts the stand-in `modules` first on sys.path).
"""

from __future__ import annotations

import types
from typing import Any

from modules.sd_hijack_clip import Hijack
from modules.sd_hijack_open_clip import FrozenOpenCLIPEmbedderWithCustomWords


class HostModelSD2:
    """The attributes of the host's shared.sd_model for an SD 2.x model that T-SAM and the stand-in read. Wraps the
    shared tiny model without changing it."""

    def __init__(self, sd: Any) -> None:
        self.sd = sd
        self.model = types.SimpleNamespace(diffusion_model=sd.unet, conditioning_key="crossattn")
        self.cond_stage_model = FrozenOpenCLIPEmbedderWithCustomWords(sd.cond_stage_model, Hijack())
        self.cond_stage_key = "txt"
        self.is_sd1, self.is_sd2, self.is_sdxl, self.is_ssd, self.is_sd3 = False, True, False, False, False
        self.is_sdxl_inpaint = False
        self.latent_channels = 4
        self.parameterization = sd.parameterization
        self.alphas_cumprod = sd.alphas_cumprod
        self.lowvram = False
        self.sd_checkpoint_info = types.SimpleNamespace(name_for_extra="tiny-sd2")

    def apply_model(self, x: Any, t: Any, cond: Any) -> Any:
        return self.sd.apply_model(x, t, cond)

    def get_learned_conditioning(self, texts: list[str]) -> Any:
        return self.cond_stage_model(texts)

    def decode_first_stage(self, z: Any) -> Any:
        return self.sd.decode_first_stage(z)
