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
for path in (str(ROOT), str(HOST)):
    if path in sys.path:
        sys.path.remove(path)
    sys.path.insert(0, path)

import gradio  # noqa: E402 — the stand-in
from modules import images, processing, script_callbacks, scripts, sd_samplers, shared  # noqa: E402
from modules.sd_hijack_clip import FrozenCLIPEmbedderWithCustomWords, Hijack  # noqa: E402

from lib_align.config import AlignConfig  # noqa: E402

DEFAULT_PROMPT = "a black car and a white clock"


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


class Host:
    """Scripts loaded (X/Y/Z stand-in, then T-SAM), before_ui run, txt2img runner with its UI built."""

    def __init__(self, sd: Any, model: Any = None) -> None:
        """`model`: the host's shared.sd_model (e.g. sdxl_model.HostModelSDXL); by default HostModel(sd), SD1."""
        shared.sd_model = model if model is not None else HostModel(sd)
        scripts.load_scripts([(str(HOST), str(HOST / "xyz_grid.py")), (str(ROOT), str(ROOT / "scripts" / "t_sam.py"))])
        script_callbacks.before_ui_callback()
        self.runner = scripts.ScriptRunner()
        # modules/ui.py create_ui: the tab's runner is current while its UI is built; the top row (prompt boxes)
        # exists before any script's ui() runs, so scripts see the prompt box in after_component first.
        scripts.scripts_current = self.runner
        try:
            self.runner.initialize_scripts(is_img2img=False)
            self.prompt_box = gradio.Textbox(label="Prompt", elem_id="txt2img_prompt", lines=3)
            self.runner.setup_ui()
        finally:
            scripts.scripts_current = None
        self.script = self.runner.title_map()["t-sam"]
        self.module = sys.modules["lib_align.webui"]
        self.xyz = next(d.module for d in scripts.scripts_data if d.script_class.__module__ == "xyz_grid.py")

    @property
    def model(self) -> HostModel:
        return shared.sd_model

    def args(self, tsam: Any = None) -> list[Any]:
        """The UI's argument vector with T-SAM's slice set: None = off (the accordion closed), a dict = on with
        those named settings (the preset's defaults for the rest), a list = our raw slice."""
        script_args = self.runner.default_args()
        if tsam is None:
            return script_args
        if isinstance(tsam, dict):
            named = dict(tsam)
            enabled = named.pop("enabled", True)
            show = named.pop("show_attention", False)
            tsam = [enabled, *AlignConfig.from_args(named).to_args(), show]
        script_args[self.script.args_from:self.script.args_from + len(tsam)] = list(tsam)
        return script_args

    def make_p(self, prompt: Any = DEFAULT_PROMPT, *, tsam: Any = None, script_args: list | None = None,
               extension: bool = True, **fields: Any) -> Any:
        return processing.StableDiffusionProcessingTxt2Img(
            sd_model=shared.sd_model, prompt=prompt, scripts=self.runner if extension else None,
            script_args=script_args if script_args is not None else self.args(tsam), **fields)

    def txt2img(self, prompt: Any = DEFAULT_PROMPT, **kwargs: Any) -> tuple[Any, Any]:
        """Like modules/txt2img.py: process_images inside `closing(p)`. Returns (Processed, p)."""
        p = self.make_p(prompt, **kwargs)
        shared.state.begin("txt2img")
        try:
            return processing.process_images(p), p
        finally:
            p.close()

    def txt2img_without_extension(self, prompt: Any = DEFAULT_PROMPT, **kwargs: Any) -> Any:
        """The same job with no extension at all: no scripts and no cfg_denoiser callback registered."""
        saved = list(script_callbacks.callback_map["callbacks_cfg_denoiser"])
        script_callbacks.callback_map["callbacks_cfg_denoiser"].clear()
        try:
            return self.txt2img(prompt, extension=False, **kwargs)[0]
        finally:
            script_callbacks.callback_map["callbacks_cfg_denoiser"][:] = saved


def reset_host_state() -> None:
    shared.state.reset()
    shared.opts.__init__()
    shared.cmd_opts.lowvram = False
    sd_samplers.created.clear()
    script_callbacks.reported.clear()
    images.saved.clear()
