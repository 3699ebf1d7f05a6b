"""The test harness around the Forge stand-in host (tests/forge_host), with the public API of tests/host/standin.py's
`Host`: loads the X/Y/Z stand-in and `scripts/t_sam.py` the way the host does, builds the txt2img UI (prompt box
first), and runs txt2img jobs through Forge's `process_images`. The loaded model (`shared.sd_model`) is a Forge
engine from `forge_models` (forge_sd15 / forge_sdxl / forge_flux).

Imported under tests/forge, whose conftest.py puts the Forge stand-in first on sys.path.
"""

from __future__ import annotations

from typing import Any

import gradio  # the A1111 stand-in's gradio, shared
from backend import memory_management
from backend.text_processing import classic_engine
from harness import DEFAULT_PROMPT, HostModules, WebUIHarness, reset_common_state  # noqa: F401 — DEFAULT_PROMPT for the tests
from modules import images, processing, script_callbacks, scripts, sd_samplers, shared


class ForgeHost(WebUIHarness):
    """The Forge stand-in, with T-SAM loaded unless extension=False (tests/harness.py has what both hosts' harnesses
    share); `engine` is a Forge engine from `forge_models`."""

    def __init__(self, engine: Any, *, extension: bool = True) -> None:
        modules = HostModules(gradio, scripts, script_callbacks, processing, shared)
        super().__init__(modules, engine, extension=extension)


def reset_host_state() -> None:
    reset_common_state(shared, sd_samplers, script_callbacks, images)
    memory_management.loaded.clear()
    memory_management.load_calls.clear()
    classic_engine.last_extra_generation_params.clear()
