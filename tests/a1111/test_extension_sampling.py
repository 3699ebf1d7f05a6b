"""T-SAM inside the stand-in A1111 sampling loop: real tiny ldm UNet, real k-diffusion CompVisDenoiser and samplers
(Euler, Euler a, DPM++ 2M, Heun) and a DDIM loop, driven by the host's CFG denoiser and hook order (tests/host)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "host"))

import standin  # noqa: E402
from fixtures import *  # noqa: E402, F403 — pytest fixtures
from fixtures import assert_normal, prehooks_left, unet_hook_count  # noqa: E402
from modules import processing, script_callbacks, scripts, sd_samplers, shared  # noqa: E402
from modules.script_callbacks import ScriptCallback  # noqa: E402
from modules.sd_hijack_clip import Embedding  # noqa: E402

from lib_align.config import OFFICIAL, AlignConfig  # noqa: E402
from lib_align.families import ModelFamily  # noqa: E402
from lib_align.session import AlignSession  # noqa: E402
from lib_align.text import chunk_targets  # noqa: E402
from standalone.models import import_k_diffusion  # noqa: E402
from standalone.pipeline import generate  # noqa: E402

SAMPLERS = ["Euler", "Euler a", "DPM++ 2M", "Heun", "DDIM"]
BASE = dict(steps=6, width=128, height=128)  # 16x16 latents
SMALL = dict(steps=4, width=64, height=64)
STRONG = {"step_size": 40.0}


def cfg_callbacks() -> list:
    return script_callbacks.callback_map["callbacks_cfg_denoiser"]


def optimised(steps: int, **settings) -> int:
    return AlignConfig(**settings).optimised_steps(steps)


def unchanged_latent(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the optimisation (losses, reports) but hand the latent back untouched: the trajectory without updates."""
    update, update_sigma = AlignSession.update, AlignSession.update_sigma_space

    def keep_z(self, z, *args, **kwargs):
        return z, update(self, z, *args, **kwargs)[1]

    def keep_x(self, x, *args, **kwargs):
        return x, update_sigma(self, x, *args, **kwargs)[1]

    monkeypatch.setattr(AlignSession, "update", keep_z)
    monkeypatch.setattr(AlignSession, "update_sigma_space", keep_x)


# -- off / on --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_disabled_is_bitwise_the_host_without_the_extension(host, sampler):
    without = host.txt2img_without_extension(sampler_name=sampler, **BASE)
    res, p = host.txt2img(sampler_name=sampler, **BASE)
    assert torch.equal(res.samples, without.samples)
    assert "T-SAM" not in res.infotexts[0] and p.tsam_job is None and prehooks_left() == 0


def test_off_does_no_work(host, monkeypatch):
    """Closed accordion: process() returns before reading settings, the callback before touching the job."""

    def never(*args, **kwargs):
        raise AssertionError("T-SAM did work while off")

    monkeypatch.setattr(AlignConfig, "from_args", never)
    monkeypatch.setattr(host.module, "refusal", never)
    monkeypatch.setattr(host.module.Job, "on_denoiser", never)
    res, _ = host.txt2img(**SMALL)
    assert_normal(res, 1, 64, 64)
    assert host.runner.errors == [] and script_callbacks.reported == []


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_enabled_steers_the_trajectory_and_lowers_the_loss(host, jobs, measure, monkeypatch, sampler):
    without = host.txt2img_without_extension(sampler_name=sampler, **BASE)
    with monkeypatch.context() as m:
        unchanged_latent(m)
        plain, _ = host.txt2img(sampler_name=sampler, tsam=STRONG, **BASE)
    assert torch.equal(plain.samples, without.samples)  # measuring along the way changes nothing
    steered, _ = host.txt2img(sampler_name=sampler, tsam=STRONG, **BASE)
    baseline, job = jobs
    n = optimised(BASE["steps"])
    # Once per sampler step, also for Heun (two model calls per step) — and only in the optimised steps.
    assert [r.step for r in job.reports] == [r.step for r in baseline.reports] == list(range(n))
    assert not torch.equal(steered.samples, without.samples)
    assert_normal(steered, 1, 128, 128)
    for mine, ref in zip(job.reports, baseline.reports, strict=True):
        assert mine.loss_after[0] < ref.loss_before[0]  # lower than the plain trajectory at the same step
    assert sum(r.loss_before[0] for r in job.reports[1:]) < sum(r.loss_before[0] for r in baseline.reports[1:])


def test_works_under_the_hosts_autocast(host, jobs, measure, monkeypatch):
    """The host samples inside devices.autocast() (fp16 on GPU); CPU bf16 autocast stands in for it here."""
    from modules import devices

    monkeypatch.setattr(devices, "autocast", lambda disable=False: torch.autocast("cpu", dtype=torch.bfloat16))
    plain = host.txt2img_without_extension(**BASE)
    res, _ = host.txt2img(tsam=STRONG, **BASE)
    assert_normal(res, 1, 128, 128)
    assert res.samples.dtype == torch.float32 and not torch.equal(res.samples, plain.samples)
    reports = jobs[0].reports
    assert len(reports) == optimised(BASE["steps"]) and all(r.loss_after[0] < r.loss_before[0] for r in reports)


def test_the_update_persists_in_the_samplers_own_x(host, monkeypatch):
    """Fails if only params.x (the CFG denoiser's copy) were edited: Euler's next step reads the sampler's x."""
    kd = import_k_diffusion()
    seen_by_sampler = []
    to_d = kd.sampling.to_d

    def spy(x, sigma, denoised):
        seen_by_sampler.append(x.clone())
        return to_d(x, sigma, denoised)

    monkeypatch.setattr(kd.sampling, "to_d", spy)
    before, after = [], []
    cfg_callbacks().insert(0, ScriptCallback("test", lambda params: before.append(params.x.clone()), "before"))
    cfg_callbacks().append(ScriptCallback("test", lambda params: after.append(params.x.clone()), "after"))
    host.txt2img(sampler_name="Euler", tsam=STRONG, **BASE)
    n = optimised(BASE["steps"])
    assert len(before) == len(after) == len(seen_by_sampler) == BASE["steps"]
    for k in range(BASE["steps"]):
        assert (not torch.equal(before[k], after[k])) == (k < n)  # T-SAM changed the latent at optimised steps
        assert torch.equal(seen_by_sampler[k], after[k][:1])  # ... and the sampler continues from the new one
        assert torch.equal(after[k][1:], after[k][:1])  # uncond rows rebuilt from the same latent


def test_matches_the_reference_pipeline(host, tiny_model):
    """Euler is one model call per step: the extension is exactly lib_align's reference run (same space, step,
    targets, CFG)."""
    config = AlignConfig(step_size=40.0)
    ref = generate(tiny_model, standin.DEFAULT_PROMPT, config, steps=6, width=128, height=128, seed=1, cfg_scale=7.0,
                   sampler="euler", measure_after=False, decode=False)
    res, _ = host.txt2img(tsam=[True, *config.to_args()], seed=1, cfg_scale=7.0, **BASE)
    torch.testing.assert_close(res.samples, ref.latent, rtol=1e-5, atol=1e-5)


def test_batch_of_two_prompts_optimises_each_image_with_its_own_target(host, jobs):
    prompts = ["a black car and a white clock", "a red cat on a small blue sofa"]
    batch, _ = host.txt2img(prompts, tsam=STRONG, batch_size=2, **BASE)
    singles = [host.txt2img(prompt, tsam=STRONG, seed=1 + i, **BASE)[0] for i, prompt in enumerate(prompts)]
    plain = host.txt2img_without_extension(prompts, batch_size=2, **BASE)
    for i in range(2):
        torch.testing.assert_close(batch.samples[i], singles[i].samples[0], rtol=1e-4, atol=1e-4)
        assert not torch.allclose(batch.samples[i], plain.samples[i], atol=1e-3)
    (session,) = jobs[0].sessions.values()
    assert [t[0].length for t in session.targets] == [7, 8]  # each image has its own prompt's T
    assert len(jobs[0].reports[0].loss_before) == 2


# -- lifecycle -------------------------------------------------------------------------------------------------


def explode_on_third_host_call():
    """A forward hook that fails the host's third UNet call (T-SAM's own, differentiable calls pass)."""
    calls = []

    def explode(module, inputs, output):
        if not torch.is_grad_enabled():
            calls.append(1)
            if len(calls) == 3:
                raise RuntimeError("CUDA out of memory (simulated)")

    return explode


def test_no_hooks_or_callbacks_left_after_20_jobs(host, tiny_model, jobs):
    unet_hooks = unet_hook_count(host.model)
    callbacks = {name: len(items) for name, items in script_callbacks.callback_map.items()}
    for i in range(20):
        sampler = SAMPLERS[i % len(SAMPLERS)]
        tsam = None if i % 4 == 1 else {"step_size": 20.0}
        if i == 6:  # the host raises mid-sampling (an OOM, a NaN check): post_sample and postprocess are skipped
            handle = tiny_model.unet.out.register_forward_hook(explode_on_third_host_call())
            try:
                with pytest.raises(RuntimeError, match="simulated"):
                    host.txt2img(sampler_name=sampler, tsam=tsam, **SMALL)
            finally:
                handle.remove()
            assert prehooks_left() == 1  # left behind by the failed job; the next job's process() removes it
        elif i == 14:  # Interrupt pressed during sampling

            def interrupt(params):
                if params.denoiser.step == 1:
                    shared.state.interrupt()

            cfg_callbacks().append(ScriptCallback("test", interrupt, "interrupt"))
            res, _ = host.txt2img(sampler_name=sampler, tsam=tsam, **SMALL)
            cfg_callbacks().pop()
            assert_normal(res, 1, 64, 64)
        else:
            res, p = host.txt2img(sampler_name=sampler, tsam=tsam, **SMALL)
            assert p.tsam_job is None
    assert prehooks_left() == 0
    assert unet_hook_count(host.model) == unet_hooks
    assert {name: len(items) for name, items in script_callbacks.callback_map.items()} == callbacks
    assert len(cfg_callbacks()) == 1
    assert host.module.hooked_jobs() == []
    assert len([job for job in jobs if job is not None]) == 14  # 15 enabled jobs, one of which raised


@pytest.mark.parametrize("flag", ["interrupted", "skipped"])
def test_interrupt_and_skip_stop_the_optimisation_loop(host, tiny_model, flag):
    forwards = []

    def press(module, inputs, output):
        if torch.is_grad_enabled():  # T-SAM's own differentiable pass
            forwards.append(1)
            setattr(shared.state, flag, True)

    unet_hooks = unet_hook_count(host.model)
    handle = tiny_model.unet.input_blocks[0].register_forward_hook(press)
    try:
        res, p = host.txt2img(tsam={"preset": OFFICIAL, "refine_iters": 30}, **BASE)
    finally:
        handle.remove()
    assert len(forwards) == 1  # stopped inside the refinement loop, after its first iteration
    assert_normal(res, 1, 128, 128)
    assert prehooks_left() == 0 and unet_hook_count(host.model) == unet_hooks and p.tsam_job is None
    assert shared.state.textinfo is None  # the progress text is put back


@pytest.mark.parametrize(("flag", "reason"), [("interrupted", "interrupted"),
                                             ("skipped", "the user skipped this image")])
def test_an_interrupt_inside_the_loop_is_the_reason_the_infotext_gives(host, tiny_model, flag, reason):
    """Interrupt while the progress reads 'T-SAM: step 1/k, update 3/31' (as found in the real A1111): no step was
    finished, and the infotext must say why (it said 'no step was optimised (strength 0, ...)')."""
    forwards = []

    def press(module, inputs, output):
        if torch.is_grad_enabled():
            forwards.append(1)
            if len(forwards) == 3:
                setattr(shared.state, flag, True)

    handle = tiny_model.unet.input_blocks[0].register_forward_hook(press)
    try:
        res, _ = host.txt2img(tsam={"preset": OFFICIAL}, **BASE)
    finally:
        handle.remove()
    assert f"T-SAM: skipped ({reason})" in res.infotexts[0], res.infotexts[0]
    assert "T-SAM preset" not in res.infotexts[0]


def test_an_interrupt_after_some_steps_is_noted_with_the_settings(host):
    def interrupt(params):
        if params.denoiser.step == 1:  # after T-SAM's own callback has updated step 2 of 3
            shared.state.interrupt()

    cfg_callbacks().append(ScriptCallback("test", interrupt, "interrupt"))
    try:
        res, _ = host.txt2img(tsam={"step_size": 20.0}, **BASE)
    finally:
        cfg_callbacks().pop()
    assert "T-SAM preset: Paper" in res.infotexts[0]
    assert "T-SAM note: stopped after step 2 (interrupted)" in res.infotexts[0], res.infotexts[0]


# -- memory mode ---------------------------------------------------------------------------------------------------


OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError


def out_of_memory_once(model, monkeypatch):
    """The first differentiable UNet call raises what torch raises when the GPU is full; later calls run."""
    original = type(model).apply_model
    raised = []

    def apply(self, *args, **kwargs):
        if torch.is_grad_enabled() and not raised:
            raised.append(1)
            # torch.OutOfMemoryError is torch >= 2.5; A1111's torch 2.1.2 has only torch.cuda's
            raise OUT_OF_MEMORY("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "apply_model", apply)
    return raised


def test_auto_memory_mode_retries_an_out_of_memory_update_with_checkpointing(host, jobs, tiny_model, monkeypatch):
    low, _ = host.txt2img(tsam={**STRONG, "low_memory": "on"}, **BASE)
    normal, _ = host.txt2img(tsam=STRONG, **BASE)
    assert "T-SAM memory: auto → normal" in normal.infotexts[0]
    raised = out_of_memory_once(tiny_model, monkeypatch)
    res, _ = host.txt2img(tsam=STRONG, **BASE)
    assert raised and jobs[-1].checkpointing
    assert [r.loss_before for r in jobs[-1].reports] == [r.loss_before for r in jobs[0].reports]  # as Low memory
    torch.testing.assert_close(res.samples, low.samples)
    assert "T-SAM memory: auto → low" in res.infotexts[0] and "T-SAM note" not in res.infotexts[0]
    assert res.comments.count("ran out of memory in T-SAM's pass") == 1
    assert "T-SAM memory: on" in low.infotexts[0]


def test_memory_mode_off_lets_an_out_of_memory_stop_tsam_and_keeps_the_image(host, jobs, tiny_model, monkeypatch):
    out_of_memory_once(tiny_model, monkeypatch)
    res, _ = host.txt2img(tsam={**STRONG, "low_memory": "off"}, **BASE)
    assert_normal(res, 1, 128, 128)
    text = res.infotexts[0]
    assert "T-SAM preset" not in text and "skipped (OutOfMemoryError: CUDA out of memory" in text


def test_long_optimisation_shows_progress(host):
    host.txt2img(tsam={"preset": OFFICIAL, "refine_iters": 3}, **BASE)
    last = optimised(BASE["steps"], steps_fraction=0.6)
    assert any(text.startswith(f"T-SAM: step 1/{last}, update 1/4") for text in shared.state.textinfo_history)


def test_nested_job_does_not_disturb_the_outer_job(host, jobs):
    nested = []

    class ADetailerLike(scripts.Script):
        def title(self):
            return "nested"

        def show(self, is_img2img):
            return scripts.AlwaysVisible

        def postprocess_image(self, p, pp, *args):
            if nested or p.prompt != standin.DEFAULT_PROMPT:
                return
            inner = host.make_p("a green apple next to a yellow banana", tsam={"step_size": 20.0}, **SMALL)
            try:
                nested.append(processing.process_images(inner))
            finally:
                inner.close()
            host.module.process(processing.StableDiffusionProcessingImg2Img(), [True])  # given our args: ignored

    alone, _ = host.txt2img(tsam=STRONG, n_iter=2, **BASE)
    outer_alone = jobs.pop()
    script = ADetailerLike()
    script.args_from = script.args_to = len(host.runner.inputs)
    host.runner.alwayson_scripts.append(script)
    try:
        res, p = host.txt2img(tsam=STRONG, n_iter=2, **BASE)
    finally:
        host.runner.alwayson_scripts.remove(script)
    inner_job, outer_job = jobs
    assert torch.equal(res.samples, alone.samples)  # both outer batches, before and after the nested job
    assert [r.step for r in outer_job.reports] == [r.step for r in outer_alone.reports]
    assert inner_job.p is not outer_job.p and inner_job.reports  # the nested job ran T-SAM on its own
    assert "T-SAM preset" in nested[0].infotexts[0] and res.infotexts == alone.infotexts
    assert prehooks_left() == 0


def test_exception_in_our_code_turns_t_sam_off_for_the_rest_of_the_job(host, jobs, tsam_log, monkeypatch):
    original = AlignSession.update_sigma_space
    calls = []

    def flaky(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(AlignSession, "update_sigma_space", flaky)
    res, _ = host.txt2img(tsam=STRONG, **BASE)
    assert_normal(res, 1, 128, 128)
    assert len(calls) == 2 and len(jobs[0].reports) == 1  # off after the failure, sampling went on
    assert res.comments.count("RuntimeError: boom") == 1
    assert [r.getMessage() for r in tsam_log.records] == ["T-SAM: RuntimeError: boom; T-SAM is off for the rest of "
                                                          "this generation."]  # logged once, with the reason
    assert script_callbacks.reported == []  # we caught it; the host never saw it


def test_exception_before_sampling_gives_the_plain_image(host, tsam_log, monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("no tokenizer")

    monkeypatch.setattr(ModelFamily, "prompt_targets", broken)
    without = host.txt2img_without_extension(**BASE)
    res, _ = host.txt2img(tsam=STRONG, **BASE)
    assert torch.equal(res.samples, without.samples)
    assert "ValueError: no tokenizer" in res.comments


def test_hires_fix_second_pass_is_left_alone(host, jobs):
    res, _ = host.txt2img(tsam=STRONG, enable_hr=True, hr_scale=1.5, hr_second_pass_steps=2, **BASE)
    assert_normal(res, 1, 192, 192)
    assert [r.step for r in jobs[0].reports] == list(range(optimised(BASE["steps"])))  # first pass only
    assert len(sd_samplers.created) == 2 and prehooks_left() == 0


# -- inputs ----------------------------------------------------------------------------------------------------

LONG = "a black car and a white clock, " * 38  # ~300 tokens: four to five chunks
BAD_INPUTS = [
    ("empty prompt", "", {}, "the prompt has fewer than two tokens"),
    ("one token", "car", {}, "the prompt has fewer than two tokens"),
    ("300 tokens", LONG, {}, None),
    ("BREAK", "a black car BREAK a white clock", {}, None),
    ("emphasis", "a black (car:1.4) and a white clock", {}, None),
    ("prompt editing", "a [black:red:0.5] car and a white clock", {}, None),
    ("264x392", standin.DEFAULT_PROMPT, dict(width=264, height=392), None),
    ("1024x256", standin.DEFAULT_PROMPT, dict(width=1024, height=256, steps=2), None),
    ("batch 4", standin.DEFAULT_PROMPT, dict(batch_size=4), None),
]


@pytest.mark.parametrize("prompt, fields, message", [case[1:] for case in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_awkward_inputs_give_a_normal_image(host, jobs, prompt, fields, message):
    fields = {**BASE, **fields}
    res, _ = host.txt2img(prompt, tsam=STRONG, **fields)
    assert_normal(res, fields.get("batch_size", 1), fields["width"], fields["height"])
    job = jobs[0]
    if message is None:
        assert job.reports and not job.stopped and "T-SAM:" not in res.comments
    else:
        assert f"T-SAM: {message}" in res.comments and not job.reports
        assert torch.equal(res.samples, host.txt2img_without_extension(prompt, **fields).samples)


def test_long_prompts_and_break_give_one_target_per_chunk(host, jobs):
    host.txt2img(LONG, tsam=STRONG, **SMALL)
    host.txt2img("a black car BREAK a white clock", tsam=STRONG, **SMALL)
    long_targets = jobs[0].targets[LONG]
    assert len(long_targets) >= 4 and [c.offset for c in long_targets] == [77 * i for i in range(len(long_targets))]
    assert [c.length for c in jobs[1].targets["a black car BREAK a white clock"]] == [3, 3]


def test_emphasis_does_not_change_t(host, jobs):
    host.txt2img("a black (car:1.4) and a [white] clock", tsam=STRONG, **SMALL)
    host.txt2img("a black car and a white clock", tsam=STRONG, **SMALL)
    (weighted,), (plain,) = jobs[0].targets.values(), jobs[1].targets.values()
    torch.testing.assert_close(weighted[0].target, plain[0].target)


def test_prompt_editing_uses_the_text_in_force_at_each_step(host, jobs):
    prompt = "a [black:red:0.5] car and a white clock"
    host.txt2img(prompt, tsam={**STRONG, "steps_fraction": 1.0}, **BASE)
    job = jobs[0]
    assert set(job.sessions) == {("a black car and a white clock",), ("a red car and a white clock",)}
    assert [r.step for r in job.reports] == list(range(BASE["steps"]))


def test_textual_inversion_vectors_reach_t(host, jobs, monkeypatch):
    wrapper = host.model.cond_stage_model
    monkeypatch.setattr(wrapper.hijack.embedding_db, "ids_lookup", {})
    vec = torch.randn(2, 64, generator=torch.Generator().manual_seed(3))
    wrapper.hijack.embedding_db.register(wrapper.tokenize(["tsamstyle"])[0], Embedding(vec, "tsamstyle"))
    prompt = "a tsamstyle car and a white clock"
    host.txt2img(prompt, tsam=STRONG, **SMALL)
    (chunk,), _ = wrapper.tokenize_line(prompt)
    ids = torch.tensor([chunk.tokens])
    transformer = wrapper.wrapped.transformer
    with_fix = chunk_targets(transformer, ids, 4.0, 1, [[(chunk.fixes[0].offset, vec)]])
    without = chunk_targets(transformer, ids, 4.0, 1)
    torch.testing.assert_close(jobs[0].targets[prompt][0].target, with_fix[0].target)
    assert not torch.allclose(with_fix[0].target, without[0].target)


def test_clip_skip_selects_the_layers_that_feed_the_cond(host, jobs):
    shared.opts.CLIP_stop_at_last_layers = 2
    host.txt2img(tsam=STRONG, **SMALL)
    wrapper = host.model.cond_stage_model
    (chunk,), _ = wrapper.tokenize_line(standin.DEFAULT_PROMPT)
    ids = torch.tensor([chunk.tokens])
    skip2 = chunk_targets(wrapper.wrapped.transformer, ids, 4.0, 2)
    skip1 = chunk_targets(wrapper.wrapped.transformer, ids, 4.0, 1)
    torch.testing.assert_close(jobs[0].targets[standin.DEFAULT_PROMPT][0].target, skip2[0].target)
    assert not torch.allclose(skip1[0].target, skip2[0].target)


def test_nan_gradient_leaves_the_latent_alone_with_a_message(host, jobs, tiny_model):
    def poison(module, grad_input, grad_output):
        return tuple(torch.full_like(g, float("nan")) if g is not None else None for g in grad_input)

    handle = tiny_model.unet.input_blocks[7].register_full_backward_hook(poison)
    try:
        res, _ = host.txt2img(tsam=STRONG, **BASE)
    finally:
        handle.remove()
    assert "T-SAM: non-finite gradient (image 1)" in res.comments
    assert torch.equal(res.samples, host.txt2img_without_extension(**BASE).samples)
    assert jobs[0].reports and all(r.skipped_rows == [0] for r in jobs[0].reports)


def _reforge(monkeypatch, host):
    """A process with Forge's `modules_forge` but without its 2024 `backend` (reForge, older Forge): the host is
    picked when the script loads (lib_align/webui/host.py), so the pick is re-run here under that import table."""
    common = sys.modules["lib_align.webui.common"]
    real = importlib.util.find_spec
    present = {"modules_forge": importlib.machinery.ModuleSpec("modules_forge", None)}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: present.get(name) if name in present
                        or name.startswith("backend") else real(name, *a))
    monkeypatch.setattr(common, "HOST", common.pick_host())


REFUSALS = [
    ("lowvram", lambda m, h: m.setattr(shared.cmd_opts, "lowvram", True), "--lowvram"),
    ("SDXL inpainting", lambda m, h: m.setattr(h.model, "is_sdxl_inpaint", True, raising=False),
     "SDXL inpainting models are not supported"),
    ("SD3", lambda m, h: m.setattr(h.model, "is_sd3", True), "SD3 models are not supported"),
    ("other model", lambda m, h: m.setattr(h.model, "is_sd1", False), "this model type is not supported"),
    ("InstructPix2Pix", lambda m, h: m.setattr(h.model, "cond_stage_key", "edit"), "InstructPix2Pix"),
    ("reForge", _reforge, "this Forge variant is not supported"),
]


@pytest.mark.parametrize("setup, message", [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_refusals_say_why_and_generate_normally(host, tsam_log, monkeypatch, setup, message):
    setup(monkeypatch, host)
    without = host.txt2img_without_extension(**BASE)
    res, p = host.txt2img(tsam=STRONG, **BASE)
    assert torch.equal(res.samples, without.samples)
    assert f"T-SAM: {message}" in res.comments and "T-SAM preset" not in res.infotexts[0]
    assert [r.getMessage() for r in tsam_log.records if message in r.getMessage()]
    assert p.tsam_job is None and prehooks_left() == 0


def test_and_prompts_are_refused(host):
    prompt = "a black car AND a white clock"
    without = host.txt2img_without_extension(prompt, **BASE)
    res, _ = host.txt2img(prompt, tsam=STRONG, **BASE)
    assert torch.equal(res.samples, without.samples)
    assert "T-SAM: prompts with AND" in res.comments


def test_auto_memory_mode_checkpoints_from_the_start_when_the_pass_would_not_fit(host, jobs, monkeypatch):
    """Auto decides before the first update from the table's estimate and the device's free memory: little free
    memory gives the Low memory pass from step 1 (the same latents as "on"), plenty gives the normal pass."""
    from lib_align import memory

    low, _ = host.txt2img(tsam={**STRONG, "low_memory": "on"}, **BASE)
    off, _ = host.txt2img(tsam={**STRONG, "low_memory": "off"}, **BASE)
    seen = []

    def free(device):
        seen.append(device)
        return free_memory

    monkeypatch.setattr(memory, "free_bytes", free)
    free_memory = 64 * 2**20  # the estimate for SD1's full-size table at a 16x16 latent is ~30 MB per image
    res, _ = host.txt2img(tsam=STRONG, **BASE)
    assert jobs[-1].checkpointing and seen
    torch.testing.assert_close(res.samples, low.samples)
    assert "T-SAM memory: auto → low" in res.infotexts[0]
    assert res.comments.count("memory mode auto: T-SAM's pass needs about") == 1
    free_memory = 64 * 2**30
    res, _ = host.txt2img(tsam=STRONG, **BASE)
    assert not jobs[-1].checkpointing
    torch.testing.assert_close(res.samples, off.samples)
    assert "T-SAM memory: auto → normal" in res.infotexts[0] and "memory mode auto" not in res.comments


def test_auto_memory_mode_reads_the_hosts_attention_kernel(host, jobs, monkeypatch):
    """The kernel named by A1111's sd_hijack.current_optimizer decides which estimate applies: with free memory
    between the SDPA estimate and Doggettx's, Doggettx checkpoints and sdp does not."""
    from modules import sd_hijack

    from lib_align import memory

    hw, batch, dtype = (16, 16), 1, torch.float32  # the tiny model runs in fp32 on the CPU
    flash = memory.pass_bytes("SD1", hw, batch, memory.FLASH, low=False, dtype=dtype)
    split = memory.pass_bytes("SD1", hw, batch, memory.SPLIT, low=False, dtype=dtype)
    assert flash * memory.HEADROOM < split
    monkeypatch.setattr(memory, "free_bytes", lambda device: int(flash * memory.HEADROOM) + 1)
    for name, low in (("Doggettx", True), ("sdp", False), ("xformers", False), ("sub-quadratic", True)):
        monkeypatch.setattr(sd_hijack, "current_optimizer", type("Optimizer", (), {"name": name})())
        host.txt2img(tsam=STRONG, **BASE)
        assert jobs[-1].checkpointing is low, name
