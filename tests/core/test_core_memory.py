"""The pass's memory: the counting method of bench/memory.py against the CPU allocator, the table auto decides by
against a fresh count, and auto's decision from a device's free memory."""

from __future__ import annotations

import pytest
import torch
from refusals import expected_refusal
from torch.profiler import ProfilerActivity, profile

from bench.memory import NEEDS, LiveBytes, family_bytes
from bench.needs import STORAGE_RELEASE, TorchTooOld
from bench.passes import pass_calls
from lib_align import memory
from standalone.pipeline import standalone_family


def allocator_peak(fn) -> int:
    """Peak bytes the CPU allocator holds during `fn()` over what it held before, from the profiler's own
    allocation and release events (independent of bench/memory.py's bookkeeping)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns() if hasattr(e, "start_ns") else e.start_us())  # torch 2.1: start_us
    current = peak = 0
    for event in events:
        current += event.nbytes()
        peak = max(peak, current)
    return peak


@pytest.mark.slow
@pytest.mark.parametrize("low", [False, True])
def test_counted_peak_is_the_cpu_allocators_peak(tiny_model, low):
    """The counter follows storages from creation to release; on the CPU the same pass, run for real, has a peak
    the allocator reports: they agree within 1 % (normal pass and the memory mode's checkpointed pass). On a torch
    whose storages do not show their release (< 2.2) the counter refuses in one line instead of over-counting."""
    family = standalone_family(tiny_model)
    unet = tiny_model.model.diffusion_model
    chunks, words = family.tokenize("a black car and a white clock")
    calls = pass_calls(unet, lambda z, t, c: unet(z, t, context=c), torch.randn(1, 77, 64),
                       family.targets(chunks, words, 1.0), family.layout_level, (32, 32))
    refusal = expected_refusal("bench.memory", STORAGE_RELEASE)
    if refusal:
        with pytest.raises(TorchTooOld) as refused:
            LiveBytes(calls.inputs)
        assert str(refused.value) == refusal
        return
    calls.run_pass(low)  # first-call allocations (e.g. lazily built buffers) out of the way
    expected = allocator_peak(lambda: calls.run_pass(low))
    with LiveBytes(calls.inputs) as live:
        calls.run_pass(low)
    assert expected > 1_000_000
    assert live.peak == pytest.approx(expected, rel=0.01)


@pytest.mark.slow
@pytest.mark.parametrize("kernel", ["flash", "split"])
def test_table_matches_a_fresh_count_at_a_size_it_was_not_fit_at(kernel):
    """lib_align.memory.NEEDS is fit at three latent sizes; at SD1's native 512² (64x64, not among them) and in
    batch 2 the estimate is within 2 % of what the counter finds now — a stale table (changed pass) fails here. On a
    torch that cannot count the memory mode's pass on the meta device (< 2.6) the count refuses in one line."""
    refusal = expected_refusal("bench.memory", *NEEDS)
    if refusal:
        with pytest.raises(TorchTooOld) as refused:
            family_bytes("SD1", 64, kernel, batch=2)
        assert str(refused.value) == refusal
        return
    counted = family_bytes("SD1", 64, kernel, batch=2)
    for mode, key in (("normal", "pass"), ("low", "pass_low")):
        estimate = memory.pass_bytes("SD1", (64, 64), 2, kernel, low=mode == "low")
        assert estimate == pytest.approx(counted[key], rel=0.02), (kernel, mode)


@pytest.mark.parametrize(("name", "kind"), [
    ("xformers", memory.FLASH), ("sdp", memory.FLASH), ("sdp-no-mem", memory.FLASH),  # A1111's optimizer names
    ("Doggettx", memory.SPLIT), ("sub-quadratic", memory.SPLIT), ("V1", memory.SPLIT), ("InvokeAI", memory.SPLIT),
    ("attention_pytorch", memory.FLASH), ("attention_xformers", memory.FLASH),  # Forge's backend/attention.py
    ("attention_split", memory.SPLIT), ("attention_sub_quad", memory.SPLIT), (None, memory.SPLIT)])
def test_attention_kinds_by_the_hosts_names(name, kind):
    assert memory.attention_kind(name) == kind


def test_free_memory_is_the_drivers_free_plus_the_allocators_unused_cache(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (3 * 2**30, 8 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 5 * 2**30)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 4 * 2**30)
    assert memory.free_bytes(torch.device("cuda", 0)) == 4 * 2**30
    assert memory.free_bytes(torch.device("cpu")) is None


@pytest.mark.parametrize(("free_gib", "low"), [(2, True), (12, False)])
def test_auto_plans_checkpointing_for_sdxl_1024_on_a_small_card(monkeypatch, free_gib, low):
    """SDXL at 1024² with SDPA: the normal pass needs ~4.5 GiB (bench/memory.py); 2 GiB free (an 8 GB card with the
    UNet loaded) plans the memory mode, 12 GiB free does not. With a fake mem_get_info, as the job reads it."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free_gib * 2**30, 24 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 0)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 0)
    free = memory.free_bytes(torch.device("cuda", 0))
    choice = memory.plan("SDXL", (128, 128), 1, memory.FLASH, torch.float16, free)
    assert choice is not None and choice.low is low
    assert 4.0 * memory.GIB < choice.need < 5.0 * memory.GIB
    assert memory.plan("SDXL", (128, 128), 1, memory.FLASH, torch.float16, None) is None  # no figure: no plan
    assert memory.plan("Flux", (128, 128), 1, memory.FLASH, torch.float16, free) is None  # unknown family


def test_the_memory_mode_needs_less_than_the_normal_pass_everywhere():
    for (family, kernel, mode), _need in memory.NEEDS.items():
        if mode == "low":
            for side in (64, 96, 128, 160):
                normal = memory.pass_bytes(family, (side, side), 1, kernel, low=False)
                assert memory.pass_bytes(family, (side, side), 1, kernel, low=True) < normal, (family, kernel, side)


def test_weights_streamed_in_by_the_host_count_on_top_of_the_pass():
    """Forge with GPU Weights below the model's size keeps some layers off the GPU and streams them in; the pass
    holds those copies until its backward, so they add to the need (a UNet with one layer on another device)."""
    unet = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 64).to(torch.float16))
    assert memory.streamed_weight_bytes(unet, torch.device("cpu")) == 0
    assert memory.streamed_weight_bytes(unet, torch.device("meta")) == (64 * 64 + 64) * (4 + 2)
    free = int(7 * memory.GIB)  # the normal pass (~4.5 GiB) fits with headroom; 2 GiB more does not
    alone = memory.plan("SDXL", (128, 128), 1, memory.FLASH, torch.float16, free)
    streamed = memory.plan("SDXL", (128, 128), 1, memory.FLASH, torch.float16, free, streamed=int(2 * memory.GIB))
    assert not alone.low and streamed.low and streamed.need == alone.need + 2 * memory.GIB
