"""Tests against the Forge stand-in (tests/forge_host), in a pytest process of their own (tests/run.py's `forge`
tier; tests/conftest.py refuses a command that also collects tests/a1111): tests/forge_host first on sys.path, then
tests/host for the stand-in files and the gradio both hosts share, tests/ (harness.py) and the repo root. The A1111
stand-in's `modules` package is never imported here: tests/forge_host's `modules` takes the shared files from
tests/host/modules through its own __path__.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

TESTS = Path(__file__).resolve().parents[1]
for _path in (TESTS.parent, TESTS, TESTS / "host", TESTS / "forge_host"):  # the last one inserted ends up first
    if str(_path) in sys.path:
        sys.path.remove(str(_path))
    sys.path.insert(0, str(_path))


@pytest.fixture(scope="session")
def forge_sd15_engine(tiny_model: Any) -> Any:
    """Forge's SD1 engine with the shared tiny model's weights (built under inference mode, like forge_loader)."""
    import forge_models

    return forge_models.forge_sd15(tiny_model)


@pytest.fixture(scope="session")
def tiny_sdxl_model() -> Any:
    from standalone.sdxl import tiny_sdxl

    return tiny_sdxl(seed=0)


@pytest.fixture(scope="session")
def forge_sdxl_engine(tiny_sdxl_model: Any) -> Any:
    import forge_models

    return forge_models.forge_sdxl(tiny_sdxl_model)


@pytest.fixture(scope="session")
def forge_flux_engine(tiny_model: Any) -> Any:
    import forge_models

    return forge_models.forge_flux(tiny_model)


@pytest.fixture(scope="session")
def bare_forge_session(forge_sd15_engine: Any) -> Any:
    """The stand-in host without the extension (X/Y/Z stand-in only): for tests of the stand-in itself."""
    import forge_standin

    return forge_standin.ForgeHost(forge_sd15_engine, extension=False)


@pytest.fixture
def bare_forge(bare_forge_session: Any, forge_sd15_engine: Any) -> Iterator[Any]:
    """Fresh host state, the SD1 engine loaded; callbacks a test registers are removed afterwards."""
    import forge_standin
    from modules import script_callbacks, shared

    forge_standin.reset_host_state()
    shared.sd_model = forge_sd15_engine
    callbacks = {name: list(items) for name, items in script_callbacks.callback_map.items()}
    yield bare_forge_session
    for name, items in callbacks.items():
        script_callbacks.callback_map[name][:] = items
    shared.sd_model = forge_sd15_engine
    forge_standin.reset_host_state()
