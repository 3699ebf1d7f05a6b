"""The test harness around the Forge stand-in host (tests/forge_host), with the public API of tests/host/standin.py's
`Host`: loads the X/Y/Z stand-in and `scripts/t_sam.py` the way the host does, builds the txt2img UI (prompt box
first), and runs txt2img jobs through Forge's `process_images`. The loaded model (`shared.sd_model`) is a Forge
engine from `forge_models` (forge_sd15 / forge_sdxl / forge_flux).

Import it with the Forge modules installed (under tests/forge that is automatic, see host_swap.py); imported
elsewhere it puts tests/forge_host, tests/host and the repo root first on sys.path itself.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

FORGE_TESTS = Path(__file__).resolve().parent
ROOT = FORGE_TESTS.parents[1]
FORGE_HOST = ROOT / "tests" / "forge_host"
HOST = ROOT / "tests" / "host"
for _path in (str(ROOT), str(HOST), str(FORGE_HOST)):
    if _path in sys.path:
        sys.path.remove(_path)
    sys.path.insert(0, _path)

import gradio  # noqa: E402 — the A1111 stand-in's gradio, shared
from backend import memory_management  # noqa: E402
from backend.text_processing import classic_engine  # noqa: E402
from modules import images, processing, script_callbacks, scripts, sd_samplers, shared  # noqa: E402

from lib_align.config import AlignConfig  # noqa: E402

DEFAULT_PROMPT = "a black car and a white clock"


class ForgeHost:
    """Scripts loaded (X/Y/Z stand-in, then T-SAM unless extension=False), before_ui run, txt2img runner with its UI
    built. `script` is T-SAM's Script (None without the extension), `module` the adapter package."""

    def __init__(self, engine: Any, *, extension: bool = True) -> None:
        shared.sd_model = engine
        paths = [(str(HOST), str(HOST / "xyz_grid.py"))]
        if extension:
            paths.append((str(ROOT), str(ROOT / "scripts" / "t_sam.py")))
        scripts.load_scripts(paths)
        script_callbacks.before_ui_callback()
        self.runner = scripts.ScriptRunner()
        # modules/ui.py create_ui: the prompt box exists before any script's ui(); the tab's runner is current.
        scripts.scripts_current = self.runner
        try:
            self.runner.initialize_scripts(is_img2img=False)
            self.prompt_box = gradio.Textbox(label="Prompt", elem_id="txt2img_prompt", lines=3)
            self.runner.setup_ui()
        finally:
            scripts.scripts_current = None
        self.script = self.runner.title_map().get("t-sam")
        self.module = sys.modules.get("lib_align.webui") if extension else None
        self.xyz = next(d.module for d in scripts.scripts_data if d.script_class.__module__ == "xyz_grid.py")

    @property
    def model(self) -> Any:
        return shared.sd_model

    def args(self, tsam: Any = None) -> list[Any]:
        """The UI's argument vector with T-SAM's slice set: None = off, a dict = on with those named settings,
        a list = the raw slice (see standin.Host.args)."""
        script_args = self.runner.default_args()
        if tsam is None:
            return script_args
        if self.script is None:
            raise ValueError("this host was built without the extension")
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
        """Like modules/txt2img.py: process_images, then p.close(). Returns (Processed, p)."""
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
    memory_management.loaded.clear()
    memory_management.load_calls.clear()
    classic_engine.last_extra_generation_params.clear()
