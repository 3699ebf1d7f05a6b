"""Two stand-in hosts in one pytest process: the A1111 stand-in (tests/host) and the Forge stand-in (tests/forge_host)
both provide a top-level package named `modules` (and `gradio`), and the extension's adapter binds `modules.*` when
it is imported. `python -m pytest tests` collects and runs both, so whichever host is imported first would otherwise
be used by the other's tests (and `find_spec("modules_forge")` would make A1111 tests pick the Forge adapter).

`forge_modules()` is a context in which the Forge set is installed: the modules bound to the other host are taken
out of `sys.modules` (and out of their parent packages' attributes, which `from package import name` reads first),
the Forge set from the previous visit is put back, and sys.path is tests/forge_host, tests/host, repo root first.
On exit the reverse happens and sys.path is restored. Host-bound = a module of the host packages (modules,
modules_forge, backend, gradio) or a project module that references one of them or another host-bound module (e.g.
tests/host/standin.py, lib_align.webui.*). Host-free modules (torch, standalone, lib_align's core) are shared.
tests/forge/conftest.py enters it around the collection and the run of every test under tests/forge.
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Iterator
from pathlib import Path

FORGE_TESTS = Path(__file__).resolve().parent
ROOT = FORGE_TESTS.parents[1]
FORGE_HOST = ROOT / "tests" / "forge_host"
HOST = ROOT / "tests" / "host"
HOST_PACKAGES = ("modules", "modules_forge", "backend", "gradio")
PATHS = [str(FORGE_HOST), str(HOST), str(ROOT)]

_forge_set: dict[str, types.ModuleType] = {}
_is_project_cache: dict[str, bool] = {}


def _is_project(name: str, module: types.ModuleType) -> bool:
    file = getattr(module, "__file__", None)
    key = f"{name}:{file}"
    if key not in _is_project_cache:
        path = Path(file).resolve() if file else None
        _is_project_cache[key] = (path is not None and ROOT in path.parents and (ROOT / ".venv") not in path.parents
                                  and not name.startswith(("conftest", "test_")))  # pytest keeps these
    return _is_project_cache[key]


def _references(module: types.ModuleType, names: set[str]) -> bool:
    for value in list(vars(module).values()):
        owner = value.__name__ if isinstance(value, types.ModuleType) else getattr(type(value), "__module__", None)
        if isinstance(value, type) or callable(value):
            owner = getattr(value, "__module__", owner)
        if isinstance(owner, str) and owner in names:
            return True
    return False


def host_bound() -> dict[str, types.ModuleType]:
    """The modules in sys.modules that belong to the currently installed host."""
    modules = {n: m for n, m in list(sys.modules.items()) if m is not None}
    bound = {n for n in modules if n.split(".")[0] in HOST_PACKAGES and _is_project(n, modules[n])}
    candidates = {n for n, m in modules.items() if n not in bound and _is_project(n, m)}
    changed = True
    while changed:
        found = {n for n in candidates if _references(modules[n], bound)}
        bound |= found
        candidates -= found
        changed = bool(found)
    return {n: modules[n] for n in bound}


def _install(outgoing: dict[str, types.ModuleType], incoming: dict[str, types.ModuleType]) -> None:
    for name, module in outgoing.items():
        sys.modules.pop(name, None)
        parent, _, child = name.rpartition(".")
        if parent in sys.modules and getattr(sys.modules[parent], child, None) is module:
            delattr(sys.modules[parent], child)
    sys.modules.update(incoming)
    for name, module in incoming.items():
        parent, _, child = name.rpartition(".")
        if parent in sys.modules:
            setattr(sys.modules[parent], child, module)


@contextlib.contextmanager
def forge_modules() -> Iterator[None]:
    global _forge_set
    saved_path = list(sys.path)
    outside = host_bound()
    _install(outside, _forge_set)
    sys.path[:] = PATHS + [p for p in saved_path if p not in PATHS]
    try:
        yield
    finally:
        _forge_set = host_bound()
        _install(_forge_set, outside)
        sys.path[:] = saved_path


def is_forge_test(path: Path | str) -> bool:
    return FORGE_TESTS in Path(path).resolve().parents or Path(path).resolve() == FORGE_TESTS
