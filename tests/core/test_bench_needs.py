"""bench/needs.py: what the benchmark needs of torch beyond the extension, probed up front, and the one line it
refuses with on a torch that lacks it (the hosts' 2.1.2 and 2.3.1) instead of a traceback or a wrong figure."""

from __future__ import annotations

import pytest
from refusals import VERSION, predates

from bench import needs
from bench.needs import CAPABILITIES, CHECKPOINT_ON_META, STORAGE_RELEASE, TorchTooOld, refusal


@pytest.mark.parametrize("capability", CAPABILITIES, ids=lambda c: c.what)
def test_each_probe_agrees_with_the_release_that_brought_it(capability):
    """Checkpoint on the meta device from 2.6 (2.3.1 lacks it; 2.5 has only the forward), a storage's release seen
    through its Python object from 2.2 (2.1.2 lacks it), the FLOP formulas from 2.1. On CI's torch every probe must
    pass."""
    assert capability.present() is not predates(capability), (capability.what, capability.since, VERSION)


def test_a_refusal_is_one_line_naming_the_torch_it_needs_what_it_lacks_and_this_one():
    assert refusal("bench.memory", [CHECKPOINT_ON_META], "2.3.1+cu121") == (
        "bench.memory needs torch >= 2.6 (checkpoint on the meta device; this is 2.3.1)")
    assert refusal("bench.memory", [STORAGE_RELEASE, CHECKPOINT_ON_META], "2.1.2+cu121") == (
        "bench.memory needs torch >= 2.6 (a storage's release seen through its Python object, checkpoint on the meta "
        "device; this is 2.1.2)")


def test_the_commands_and_the_counter_refuse_before_doing_anything(monkeypatch, capsys):
    """Whatever the torch: with a capability taken away, `python -m bench` and `python -m bench.memory` print the
    refusal alone on stderr and exit 2 before building anything, and the counter refuses before following a
    storage."""
    from bench import memory, run

    monkeypatch.setattr(needs, "lacking", lambda *wanted: [c for c in wanted if c is CHECKPOINT_ON_META])
    line = f"needs torch >= 2.6 (checkpoint on the meta device; this is {VERSION})"
    assert run.main(["--smoke"]) == 2
    assert capsys.readouterr() == ("", f"bench {line}\n")
    assert memory.main() == 2
    assert capsys.readouterr() == ("", f"bench.memory {line}\n")
    memory.LiveBytes()  # the counter itself needs no checkpoint

    monkeypatch.setattr(needs, "lacking", lambda *wanted: [c for c in wanted if c is STORAGE_RELEASE])
    with pytest.raises(TorchTooOld, match=r"^bench\.memory needs torch >= 2\.2 \(a storage's release seen through its "
                                          r"Python object; this is "):
        memory.LiveBytes()
