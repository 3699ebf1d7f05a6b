"""What tests do with a loaded stand-in web UI, whichever host it is (A1111: tests/host/standin.py; Forge:
tests/forge/forge_standin.py): load the scripts the way the host does, build the txt2img UI, run jobs, watch the
jobs T-SAM finished.

Host-free on purpose: both stand-ins call their packages `modules` and `gradio`, so each host's harness hands its own
modules in (`HostModules`) and this file never imports them; the same file serves both hosts' tests, each host in
its own pytest process (tests/a1111, tests/forge).
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from lib_align.config import AlignConfig
from lib_align.script_args import positional_args

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
XYZ = TESTS / "host" / "xyz_grid.py"  # the X/Y/Z stand-in (scripts/xyz_grid.py is the same file in both hosts)
SCRIPT = ROOT / "scripts" / "t_sam.py"
DEFAULT_PROMPT = "a black car and a white clock"


@dataclass
class HostModules:
    gradio: Any
    scripts: Any
    script_callbacks: Any
    processing: Any
    shared: Any


class WebUIHarness:
    """Scripts loaded (X/Y/Z stand-in, then T-SAM unless extension=False), before_ui run, the txt2img runner with its
    UI built. `script` is T-SAM's Script (None without the extension), `module` the adapter package."""

    def __init__(self, host: HostModules, model: Any, *, extension: bool = True) -> None:
        self.host = host
        host.shared.sd_model = model
        paths = [(str(XYZ.parent), str(XYZ))] + ([(str(ROOT), str(SCRIPT))] if extension else [])
        host.scripts.load_scripts(paths)
        host.script_callbacks.before_ui_callback()
        self.runner = host.scripts.ScriptRunner()
        # modules/ui.py create_ui: the tab's runner is current while its UI is built; the top row (prompt boxes)
        # exists before any script's ui() runs, so scripts see the prompt box in after_component first.
        host.scripts.scripts_current = self.runner
        try:
            self.runner.initialize_scripts(is_img2img=False)
            self.prompt_box = host.gradio.Textbox(label="Prompt", elem_id="txt2img_prompt", lines=3)
            self.runner.setup_ui()
        finally:
            host.scripts.scripts_current = None
        self.script = self.runner.title_map().get("t-sam")
        self.module = sys.modules.get("lib_align.webui") if extension else None
        self.xyz = next(d.module for d in host.scripts.scripts_data if d.script_class.__module__ == "xyz_grid.py")

    @property
    def model(self) -> Any:
        return self.host.shared.sd_model

    def args(self, tsam: Any = None) -> list[Any]:
        """The UI's argument vector with T-SAM's slice set: None = off (the accordion closed), a dict = on with
        those named settings (the preset's defaults for the rest), a list = our raw slice."""
        script_args = self.runner.default_args()
        if tsam is None:
            return script_args
        if self.script is None:
            raise ValueError("this host was built without the extension")
        if isinstance(tsam, dict):
            named = dict(tsam)
            enabled = named.pop("enabled", True)
            show = named.pop("show_attention", False)
            tsam = positional_args(enabled, AlignConfig.from_args(named), show)
        script_args[self.script.args_from:self.script.args_from + len(tsam)] = list(tsam)
        return script_args

    def make_p(self, prompt: Any = DEFAULT_PROMPT, *, tsam: Any = None, script_args: list | None = None,
               extension: bool = True, **fields: Any) -> Any:
        return self.host.processing.StableDiffusionProcessingTxt2Img(
            sd_model=self.host.shared.sd_model, prompt=prompt, scripts=self.runner if extension else None,
            script_args=script_args if script_args is not None else self.args(tsam), **fields)

    def txt2img(self, prompt: Any = DEFAULT_PROMPT, **kwargs: Any) -> tuple[Any, Any]:
        """Like modules/txt2img.py: the selected script's run() (when one is selected) or process_images, inside
        `closing(p)`. Returns (Processed, p)."""
        p = self.make_p(prompt, **kwargs)
        self.host.shared.state.begin("txt2img")
        try:
            run = getattr(p.scripts, "run", None)
            processed = run(p, *p.script_args) if run is not None else None
            return (processed if processed is not None else self.host.processing.process_images(p)), p
        finally:
            p.close()

    def txt2img_without_extension(self, prompt: Any = DEFAULT_PROMPT, **kwargs: Any) -> Any:
        """The same job with no extension at all: no scripts and no cfg_denoiser callback registered."""
        callbacks = self.host.script_callbacks.callback_map["callbacks_cfg_denoiser"]
        saved = list(callbacks)
        callbacks.clear()
        try:
            return self.txt2img(prompt, extension=False, **kwargs)[0]
        finally:
            callbacks[:] = saved


class EncoderCopy(torch.nn.Module):
    """What the ControlNet stand-ins' control models start from (a ControlNet is trained from a copy of the UNet's
    encoder): deep copies of the UNet's time embedding, input blocks and middle block, N(0, 0.05) added (seed)."""

    def __init__(self, unet: Any, seed: int = 5) -> None:
        super().__init__()
        self.model_channels = unet.model_channels
        self.time_embed = copy.deepcopy(unet.time_embed)
        self.input_blocks = copy.deepcopy(unet.input_blocks)
        self.middle_block = copy.deepcopy(unet.middle_block)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def reset_common_state(shared: Any, sd_samplers: Any, script_callbacks: Any, images: Any) -> None:
    """Between tests: the host's state and settings, and what the stand-in records (samplers made, callback errors,
    images saved)."""
    shared.state.reset()
    shared.opts.__init__()
    shared.cmd_opts.lowvram = False
    sd_samplers.created.clear()
    script_callbacks.reported.clear()
    images.saved.clear()


def keep_finished_jobs(module: Any, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every T-SAM job that reaches postprocess (which drops it from p), kept for inspection: None for a job that
    had none."""
    seen: list[Any] = []
    original = module.finish

    def keep(p: Any, *args: Any) -> None:
        seen.append(module.own_job(p))
        original(p, *args)

    monkeypatch.setattr(module, "finish", keep)
    return seen


def prehooks_left(sd_samplers: Any) -> int:
    """Forward pre-hooks left on the CFG denoisers of every sampler the host made."""
    return sum(len(s.model_wrap_cfg._forward_pre_hooks) for s in sd_samplers.created)


def assert_normal(res: Any, count: int, width: int, height: int) -> None:
    """A normal result: `count` images of the asked size (after the grid, if any) from finite latents."""
    assert len(res.images) == res.index_of_first_image + count
    assert all(image.size == (width, height) for image in res.images[res.index_of_first_image:])
    assert res.samples is not None and bool(torch.isfinite(res.samples).all())
