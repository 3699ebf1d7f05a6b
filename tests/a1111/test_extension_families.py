"""T-SAM through the stand-in host on each model family: SD1, SD2 (eps and v) and SDXL.

The models are tiny and random (real ldm / transformers / open_clip classes; SDXL's UNet is ldm's restacked to sgm's
layout with sgm's module names): they show the mechanics (the update reaches the sampler, the loss falls, nothing
leaks), not image quality. The host models mirror what A1111 1.10 makes of each checkpoint (tests/host/standin.py,
sd2_model.py, sdxl_model.py name the files). Not shown by the stand-in: A1111's real sgm package, --medvram hooks,
and real checkpoints' attention (the defaults for SD2/SDXL are untuned on trained weights).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "host"))

import standin  # noqa: E402
from fixtures import *  # noqa: E402, F403 — pytest fixtures
from fixtures import assert_normal, prehooks_left  # noqa: E402
from modules import shared  # noqa: E402
from sd2_model import HostModelSD2  # noqa: E402
from sdxl_model import HostModelSDXL  # noqa: E402

from lib_align.families import SD1, SD2, SDXL, family_for  # noqa: E402
from lib_align.families.ldm import LdmReach  # noqa: E402
from standalone.sd2 import tiny_sd2  # noqa: E402
from standalone.sdxl import tiny_sdxl  # noqa: E402

BASE = dict(steps=4, width=64, height=64, seed=7)
PROMPT = "a black car and a white clock"
FAMILIES = ["sd1", "sd2", "sd2-v", "sdxl"]


@pytest.fixture(scope="module")
def family_models(tiny_model: Any) -> dict[str, Any]:
    return {"sd1": standin.HostModel(tiny_model), "sd2": HostModelSD2(tiny_sd2(seed=0)),
            "sd2-v": HostModelSD2(tiny_sd2(seed=1, v=True)), "sdxl": HostModelSDXL(tiny_sdxl(seed=0))}


@pytest.fixture(params=FAMILIES)
def family(request: Any, host: standin.Host, family_models: dict[str, Any]) -> Iterator[str]:
    """The host with this family's model loaded (shared.sd_model), restored afterwards."""
    saved = shared.sd_model
    shared.sd_model = family_models[request.param]
    try:
        yield request.param
    finally:
        shared.sd_model = saved


def test_each_family_is_detected_as_itself(family_models):
    expected = {"sd1": SD1, "sd2": SD2, "sd2-v": SD2, "sdxl": SDXL}
    for name, model in family_models.items():
        assert family_for(model, LdmReach()).spec is expected[name], name


def test_off_is_bitwise_the_host_without_the_extension(host, family):
    closed, _ = host.txt2img(PROMPT, **BASE)
    absent = host.txt2img_without_extension(PROMPT, **BASE)
    assert torch.equal(closed.samples, absent.samples)
    assert closed.infotexts == absent.infotexts


def test_on_lowers_the_loss_at_every_step_and_changes_the_image(host, family, jobs, measure):
    off, _ = host.txt2img(PROMPT, **BASE)
    on, _ = host.txt2img(PROMPT, tsam={"step_size": 20}, **BASE)
    job = jobs[-1]
    assert job.family.name == {"sd1": "SD1", "sd2": "SD2", "sd2-v": "SD2", "sdxl": "SDXL"}[family]
    assert [r.step for r in job.reports] == [0, 1]  # the first half of 4 steps
    for report in job.reports:
        assert report.loss_after[0] < report.loss_before[0], report
    assert not torch.equal(on.samples, off.samples)
    assert_normal(on, 1, 64, 64)
    assert "T-SAM preset: Paper" in on.infotexts[0]
    assert prehooks_left() == 0


def test_a_batch_of_two_prompts_aligns_each_image_to_its_own_text(host, family, jobs, measure):
    prompts = [PROMPT, "a red cube on a blue sphere and a green cone"]
    res, _ = host.txt2img(prompts, tsam={"step_size": 20}, batch_size=2, **BASE)
    job = jobs[-1]
    (session,) = job.sessions.values()
    lengths = [sum(c.length for c in targets) for targets in session.targets]
    assert lengths[0] != lengths[1]
    assert all(len(r.loss_before) == 2 and all(a < b for a, b in zip(r.loss_after, r.loss_before, strict=True))
               for r in job.reports)
    assert_normal(res, 2, 64, 64)


def test_hires_fix_steers_the_first_pass_only(host, family, jobs):
    res, _ = host.txt2img(PROMPT, tsam={}, enable_hr=True, hr_scale=1.5, hr_second_pass_steps=2, **BASE)
    assert_normal(res, 1, 96, 96)
    assert [r.step for r in jobs[-1].reports] == [0, 1]


def test_show_attention_adds_three_pictures(host, family):
    res, _ = host.txt2img(PROMPT, tsam={"show_attention": True}, **BASE)
    assert len(res.images) == 1 + 3
    assert all(text == res.infotexts[0] for text in res.infotexts[1:])


def test_analyze_prompt_draws_t_from_the_text_encoder(host, family):
    picture, note = host.module.analyze_prompt(PROMPT, 4.0)
    assert picture is not None and "7 tokens" in note, note
    if family == "sdxl":  # T-SAM's T (CLIP-L) and bigG's beside it
        assert 'T-SAM uses the panel titled "T (CLIP-L, used…"; the others are for comparison.' in note
        one = host.module.current_family().prompt_targets(PROMPT, 4.0, None)
        from lib_align.pictures import target_picture

        assert picture.width > target_picture(one, 4.0).width


def test_analyze_prompt_with_break_names_every_chunk_of_the_t_used(host, family):
    """Two chunks: on SDXL four panels (two per encoder), of which both CLIP-L chunks are used — not "the first"."""
    picture, note = host.module.analyze_prompt("a black car BREAK a white clock", 4.0)
    assert picture is not None and "in 2 chunks" in note, note
    if family == "sdxl":
        assert 'T-SAM uses both panels (one per chunk) titled "T (CLIP-L, used…"' in note
        assert "the first T" not in note
    else:  # one encoder: nothing to tell apart
        assert "T-SAM uses" not in note


def test_the_spec_alone_decides_which_encoder_gives_t(family_models):
    """A family's decisions live in its spec only (lib_align/families/sdxl.py: T from CLIP-L). A spec that names
    bigG instead must make the A1111 reach and the demo's compute T from bigG — equal to the "not used" panel of the
    real spec's analysis — with no code of either host touched. (Fails if a reach hard-codes an encoder.)"""
    import dataclasses

    from lib_align.families import ModelFamily
    from standalone.pipeline import StandaloneFamily

    model = family_models["sdxl"]
    real = ModelFamily(SDXL, LdmReach(), model)
    (_, clip_l), (bigg_title, bigg) = real.analysis_targets(PROMPT, 4.0, None)
    assert bigg_title == "T of OpenCLIP-bigG (not used)"
    bigg_spec = dataclasses.replace(SDXL, t_encoder=1)
    from_bigg = ModelFamily(bigg_spec, LdmReach(), model).prompt_targets(PROMPT, 4.0, None)
    assert [t.tokens for t in from_bigg] == [t.tokens for t in bigg]
    torch.testing.assert_close(from_bigg[0].target, bigg[0].target)
    assert not torch.allclose(from_bigg[0].target, clip_l[0].target, atol=1e-3)  # the two encoders do differ

    demo = StandaloneFamily(model.sd, spec=bigg_spec)
    chunks, words = demo.tokenize(PROMPT)
    torch.testing.assert_close(demo.targets(chunks, words, 4.0)[0].target, bigg[0].target, rtol=1e-5, atol=1e-6)
    assert StandaloneFamily(model.sd).spec is SDXL and StandaloneFamily(model.sd).layout_level == SDXL.layout_level
