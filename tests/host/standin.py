"""The test harness around the stand-in host: loads `scripts/t_sam.py` the way the host does, wraps the tiny SD1
model in the attributes the host's `shared.sd_model` has, and runs txt2img jobs through `process_images`.

Import this module (it puts the stand-in `modules` and `gradio` packages first on sys.path).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

HOST = Path(__file__).resolve().parent
ROOT = HOST.parents[1]
for path in (str(ROOT), str(HOST.parent), str(HOST)):
    if path in sys.path:
        sys.path.remove(path)
    sys.path.insert(0, path)

import gradio  # noqa: E402 — the stand-in
from harness import DEFAULT_PROMPT, HostModules, WebUIHarness, reset_common_state  # noqa: E402, F401 — DEFAULT_PROMPT for the tests
from modules import images, processing, script_callbacks, scripts, sd_samplers, shared  # noqa: E402
from modules.sd_hijack_clip import FrozenCLIPEmbedderWithCustomWords, Hijack  # noqa: E402


class HostModel:
    """The attributes of the host's shared.sd_model (ldm's LatentDiffusion after sd_models.load_model and the
    model hijack) that T-SAM and the stand-in read. Wraps the shared tiny model without changing it."""

    def __init__(self, sd: Any) -> None:
        self.sd = sd
        self.model = types.SimpleNamespace(diffusion_model=sd.unet, conditioning_key="crossattn")
        self.cond_stage_model = FrozenCLIPEmbedderWithCustomWords(sd.cond_stage_model, Hijack())
        self.cond_stage_key = "txt"
        self.is_sd1, self.is_sd2, self.is_sdxl, self.is_sd3 = True, False, False, False
        self.parameterization = "eps"
        self.alphas_cumprod = sd.alphas_cumprod
        self.lowvram = False
        self.sd_checkpoint_info = types.SimpleNamespace(name_for_extra="tiny")

    def apply_model(self, x: Any, t: Any, cond: Any) -> Any:
        return self.sd.apply_model(x, t, cond)

    def get_learned_conditioning(self, texts: list[str]) -> Any:
        return self.cond_stage_model(texts)

    def decode_first_stage(self, z: Any) -> Any:
        return self.sd.decode_first_stage(z)


class Host(WebUIHarness):
    """The A1111 stand-in with T-SAM loaded (tests/harness.py has what both hosts' harnesses share)."""

    def __init__(self, sd: Any, model: Any = None) -> None:
        """`model`: the host's shared.sd_model (e.g. sdxl_model.HostModelSDXL); by default HostModel(sd), SD1."""
        modules = HostModules(gradio, scripts, script_callbacks, processing, shared)
        super().__init__(modules, model if model is not None else HostModel(sd))


def reset_host_state() -> None:
    reset_common_state(shared, sd_samplers, script_callbacks, images)
