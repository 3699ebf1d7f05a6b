"""Tests against the Forge stand-in (tests/forge_host). Every test module here is collected and run with the Forge
host's modules installed (host_swap.forge_modules: tests/forge_host first on sys.path, tests/host second for the
shared stand-in files and gradio, the repo root third), so these tests and the A1111 stand-in's can share one
pytest process. Nothing host-bound is imported at this file's top level, for the same reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from host_swap import forge_modules, is_forge_test


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    if not isinstance(collector, pytest.Module) or not is_forge_test(collector.path):
        return (yield)
    with forge_modules():
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    if not is_forge_test(item.path):
        return (yield)
    with forge_modules():
        return (yield)


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
