"""The refusal bench/ owes on the running torch, worked out from the versions its capabilities came in
(bench/needs.py) rather than from its probes. The tests of those paths assert this line on an older torch and the
real figures on a newer one: a probe that wrongly failed on CI's torch fails them instead of turning them into checks
of a refusal."""

from __future__ import annotations

import torch

from bench.needs import Capability

VERSION = torch.__version__.split("+")[0]


def _release(text: str) -> tuple[int, int]:
    major, minor = text.split(".")[:2]
    return int(major), int(minor)


def predates(capability: Capability) -> bool:
    """This torch is older than the release that brought `capability`."""
    return _release(VERSION) < _release(capability.since)


def expected_refusal(tool: str, *needs: Capability) -> str | None:
    missing = [c for c in needs if predates(c)]
    if not missing:
        return None
    since = max((c.since for c in missing), key=_release)
    return f"{tool} needs torch >= {since} ({', '.join(c.what for c in missing)}; this is {VERSION})"
