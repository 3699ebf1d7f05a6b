"""Shared fixtures. The tiny model is built once per test session (real ldm / transformers classes, random).

The tests are in three folders, each run in a pytest process of its own by tests/run.py: tests/core imports no web UI
stand-in (its conftest.py checks), tests/a1111 runs the extension in the A1111 stand-in (tests/host), tests/forge in
the Forge stand-in (tests/forge_host). Both stand-ins are top-level packages named `modules` (and `gradio`), and the
extension binds `modules.*` when it is imported, so one process can hold one host only: a pytest command that would
collect both host folders is refused here, before anything is imported.

tests/core's tests marked `slow` are tests/run.py's `slow` tier, the others its `core` tier; `python -m pytest` without
a path (pytest.ini's testpaths) leaves the slow ones out: the quick check.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

HOST_TIERS = {"a1111": TESTS / "a1111", "forge": TESTS / "forge"}

torch.set_num_threads(2)


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def hosts_in(args: list[str], cwd: Path) -> list[str]:
    """The host tiers a pytest command with these path arguments collects (a folder above a tier collects it)."""
    paths = [(cwd / arg.split("::")[0]).resolve() for arg in args if not arg.startswith("-")]
    return [name for name, folder in HOST_TIERS.items()
            if any(_inside(path, folder) or _inside(folder, path) for path in paths)]


def pytest_configure(config: pytest.Config) -> None:
    hosts = hosts_in(list(config.args), config.invocation_params.dir)
    if len(hosts) > 1:
        raise pytest.UsageError(
            f"this command collects the tests of two stand-in hosts ({', '.join(hosts)}): both are called `modules`, "
            "so each runs in its own process. `python tests/run.py` runs every tier that way; "
            "`python tests/run.py --help` lists them.")
    if config.args_source is pytest.Config.ArgsSource.TESTPATHS and not config.option.markexpr:
        config.option.markexpr = "not slow"  # `python -m pytest` alone: the quick check (pytest.ini)


@pytest.fixture(scope="session")
def tiny_model():
    from standalone.models import tiny_sd

    return tiny_sd(seed=0)
