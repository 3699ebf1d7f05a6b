"""tests/core: the host-free tests. Nothing here imports a web UI stand-in (tests/host, tests/forge_host); the fixture
below checks that at the end of every run that collected no host tier's tests (a pytest command may add tests/a1111
or tests/forge, whose stand-in is then loaded for their own tests)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
STAND_INS = (TESTS / "host", TESTS / "forge_host")
HOST_TESTS = (TESTS / "a1111", TESTS / "forge")


def _inside(path: Path, folders: tuple[Path, ...]) -> bool:
    return any(path == folder or folder in path.parents for folder in folders)


def stand_in_modules() -> list[str]:
    """The imported modules that are files of a stand-in host."""
    return sorted(name for name, module in list(sys.modules.items())
                  if getattr(module, "__file__", None) and _inside(Path(module.__file__).resolve(), STAND_INS))


@pytest.fixture(scope="session", autouse=True)
def no_stand_in_host(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if not any(_inside(Path(item.path), HOST_TESTS) for item in request.session.items):
        assert stand_in_modules() == [], "a host-free test imported a stand-in host"
