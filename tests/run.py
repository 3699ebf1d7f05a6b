"""The test suite in tiers, each in its own pytest process (`python tests/run.py`; .ci/run runs it after ruff).

Both web UI stand-ins are top-level packages named `modules` (and `gradio`): tests/host mirrors A1111, tests/forge_host
Forge, and the extension binds `modules.*` when it is imported. So each host's tests have a folder and a process of
their own (tests/conftest.py refuses a pytest command that would collect both folders); tests/core imports no
stand-in at all and runs in two: its quick tests (`core`, also what `python -m pytest` runs) and its slow ones (`slow`,
the tests marked so).

    python tests/run.py                        every tier, in TIERS' order; exit status 1 if any failed
    python tests/run.py core                   one tier
    python tests/run.py a1111 forge -- -x -k clip     tiers, then options for each pytest (after `--`)
    python tests/run.py tests/forge/test_forge_sd2.py tests/core/test_core_loss.py::test_x   paths and node ids:
                                               all of their tests, in one process per folder

Each process's output comes as it is written; then a table of the tests per outcome and the wall time of each
process, and the totals.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


@dataclass(frozen=True)
class Tier:
    folder: str  # under tests/
    about: str
    marks: str | None = None  # pytest's -m expression within the folder; None: all of it


# The order `python tests/run.py` runs them in.
TIERS = {
    "core": Tier("core", "host-free and quick (under a minute on 2 cores; also what `python -m pytest` runs): "
                 "the loss, T, capture and optimizer formulas, settings, the pictures, the evaluation's statistics",
                 marks="not slow"),
    "slow": Tier("core", "host-free, the rest of tests/core: the tiny UNet through whole sessions, the "
                 "released refinement loop, memory counts, the demo, evaluation and bench commands", marks="slow"),
    "a1111": Tier("a1111", "the extension in the A1111 stand-in (tests/host)"),
    "forge": Tier("forge", "the extension in the Forge stand-in (tests/forge_host)"),
}
FOLDERS = sorted({tier.folder for tier in TIERS.values()})
OUTCOMES = ("passed", "failed", "errors", "skipped", "xfailed", "xpassed", "deselected", "collected")


def folder_of(path: Path) -> str | None:
    """The tier folder that holds `path` (a file or a folder), or None."""
    path = path.resolve()
    for folder in FOLDERS:
        where = TESTS / folder
        if path == where or where in path.parents:
            return folder
    return None


def plan(selection: list[str]) -> list[tuple[str, list[str]]]:
    """[(label, pytest's arguments)], one per process: the named tiers in TIERS' order, then the paths grouped by
    folder (a path runs all of its tests, whatever their tier)."""
    names = [name for name in TIERS if name in selection] if selection else list(TIERS)
    runs = []
    for name in names:
        tier = TIERS[name]
        runs.append((name, [f"tests/{tier.folder}", *(["-m", tier.marks] if tier.marks else [])]))
    paths: dict[str, list[str]] = {}
    for arg in selection:
        if arg in TIERS:
            continue
        file, sep, node = arg.partition("::")
        folder = folder_of(Path(file))
        if folder is None or not Path(file).exists():
            raise SystemExit(f"tests/run.py: {arg!r} is neither a tier ({', '.join(TIERS)}) nor a path in "
                             f"{', '.join('tests/' + f for f in FOLDERS)}")
        paths.setdefault(folder, []).append(str(Path(file).resolve().relative_to(ROOT)) + sep + node)
    runs += [(f"tests/{folder}", args) for folder, args in sorted(paths.items())]
    return runs


def counts(summary: str) -> dict[str, int]:
    """pytest's final line ("3 failed, 210 passed, 1 warning in 52.31s") as {outcome: count}; with --collect-only
    ("130/179 tests collected (49 deselected)") the tests it would run as "collected"."""
    found = {}
    collected = re.search(r"(\d+)(?:/\d+)? tests? collected", summary)
    if collected:
        found["collected"] = int(collected.group(1))
    for number, word in re.findall(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|deselected)", summary):
        found["errors" if word.startswith("error") else word] = int(number)
    return found


def summary_line(output: str) -> str:
    """pytest's last line with counts ("= 3 failed, 210 passed, 1 warning in 52.31s ="), or ""."""
    lines = re.sub(r"\x1b\[[0-9;]*m", "", output).splitlines()
    pattern = r"\d+ (passed|failed|errors?|skipped|deselected)\b|tests? collected|no tests ran"
    found = [line for line in lines if re.search(pattern, line)]
    return found[-1] if found else ""


def run(label: str, args: list[str], pytest_args: list[str]) -> tuple[int, dict[str, int], float]:
    """One pytest process; its output goes to ours as it comes (pytest's progress dots too). Returns (exit status,
    counts, seconds)."""
    cmd = [sys.executable, "-m", "pytest", *args, *pytest_args]
    if sys.stdout.isatty():
        cmd.append("--color=yes")
    print(f"\n=== {label}: python -m pytest {' '.join(cmd[3:])}", flush=True)
    start = time.monotonic()
    tail = b""
    with subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        assert proc.stdout is not None
        while chunk := os.read(proc.stdout.fileno(), 65536):
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
            tail = (tail + chunk)[-65536:]
    found = counts(summary_line(tail.decode(errors="replace")))
    return proc.returncode, found, time.monotonic() - start


def main(argv: list[str]) -> int:
    at = argv.index("--") if "--" in argv else len(argv)
    argv, pytest_args = argv[:at], argv[at + 1:]
    parser = argparse.ArgumentParser(
        prog="python tests/run.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Runs the test tiers, one pytest process each; pytest's own options go after `--` (default -q).",
        epilog="tiers, in the order they run:\n" + "\n".join(
            f"  {name:<6} tests/{t.folder}{f' -m {t.marks!r}' if t.marks else ''}: {t.about}"
            for name, t in TIERS.items()))
    parser.add_argument("selection", nargs="*", metavar="TIER|PATH", help="default: every tier")
    runs = plan(parser.parse_args(argv).selection)

    results = [(label, *run(label, args, pytest_args or ["-q"])) for label, args in runs]

    print("\n=== one pytest process each")
    total: dict[str, int] = {}
    for label, rc, found, seconds in results:
        for key, value in found.items():
            if key != "deselected":  # a tier's deselected tests are another tier's
                total[key] = total.get(key, 0) + value
        shown = ", ".join(f"{found[k]} {k}" for k in OUTCOMES if k in found) or "no summary line"
        print(f"{label:<18} {shown:<44} {seconds:7.1f}s  exit {rc}")
    failed = [label for label, rc, _, _ in results if rc != 0]
    shown = ", ".join(f"{total[k]} {k}" for k in OUTCOMES if k in total) or "no tests ran"
    wall = sum(seconds for _, _, _, seconds in results)
    print(f"total: {shown} in {wall:.1f}s; {'FAILED: ' + ', '.join(failed) if failed else 'every process passed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
