"""pytest fixtures for the extension tests (imported by tests/a1111/test_extension*.py; kept out of conftest.py)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import harness
import pytest
import standin
from harness import assert_normal, keep_finished_jobs  # noqa: F401 — assert_normal for the tests
from modules import script_callbacks, shared

# The fixtures; test modules take them with `from fixtures import *` (helpers below are imported by name).
__all__ = ["host_session", "host", "jobs", "measure", "tsam_log"]


@pytest.fixture(scope="session")
def host_session(tiny_model: Any) -> standin.Host:
    return standin.Host(tiny_model)


@pytest.fixture
def host(host_session: standin.Host) -> Iterator[standin.Host]:
    """The loaded host with fresh state; checks afterwards that the test left no callback of its own behind."""
    standin.reset_host_state()
    callbacks = {name: list(items) for name, items in script_callbacks.callback_map.items()}
    yield host_session
    for name, items in callbacks.items():
        script_callbacks.callback_map[name][:] = items
    host_session.runner.errors.clear()
    shared.sd_model = host_session.model
    standin.reset_host_state()


@pytest.fixture
def jobs(host: standin.Host, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every T-SAM job that reaches postprocess, kept for inspection (postprocess drops it from p)."""
    return keep_finished_jobs(host.module, monkeypatch)


@pytest.fixture
def measure(host: standin.Host, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reports carry the loss after each update too."""
    monkeypatch.setattr(host.module.Job, "measure_after", True)


@pytest.fixture
def tsam_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger="t_sam")
    return caplog


def unet_hook_count(model: Any) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in model.sd.unet.modules())


def prehooks_left() -> int:
    from modules import sd_samplers

    return harness.prehooks_left(sd_samplers)
