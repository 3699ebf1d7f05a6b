"""T-SAM in the Forge stand-in (tests/forge_host): the same checks as for A1111 where Forge differs.

What these tests lean on from the stand-in (each fact from Forge's files, named in the stand-in's docstrings): the
models are built under torch.inference_mode (backend/loader.py), sampling and decoding run under it
(modules/processing.py), the CFG denoiser hands the callback the sampler's own x, one row per image
(modules/sd_samplers_cfg_denoiser.py), cond and uncond are batched later (backend/sampling/sampling_function.py),
sigma -> t is the predictor's nearest timestep (backend/modules/k_prediction.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import forge_standin
import harness
import pytest
import torch
from backend import memory_management
from harness import assert_normal, keep_finished_jobs
from modules import script_callbacks, sd_samplers, shared
from modules.script_callbacks import ScriptCallback

from lib_align.config import OFFICIAL, AlignConfig
from lib_align.session import AlignSession
from standalone.models import import_k_diffusion
from standalone.pipeline import generate, standalone_family

SAMPLERS = ["Euler", "Euler a", "DPM++ 2M", "Heun", "DDIM"]
BASE = dict(steps=6, width=128, height=128)  # 16x16 latents
SMALL = dict(steps=4, width=64, height=64)
STRONG = {"step_size": 40.0}
PROMPT = forge_standin.DEFAULT_PROMPT


@pytest.fixture(scope="module")
def forge_session(forge_sd15_engine: Any) -> forge_standin.ForgeHost:
    return forge_standin.ForgeHost(forge_sd15_engine)


@pytest.fixture
def forge(forge_session: forge_standin.ForgeHost, forge_sd15_engine: Any) -> Iterator[forge_standin.ForgeHost]:
    """The Forge stand-in with T-SAM loaded and the SD1 engine; fresh state, callbacks restored afterwards."""
    forge_standin.reset_host_state()
    shared.sd_model = forge_sd15_engine
    forge_session.module.register_callbacks()  # another harness's load_scripts clears every callback
    callbacks = {name: list(items) for name, items in script_callbacks.callback_map.items()}
    yield forge_session
    for name, items in callbacks.items():
        script_callbacks.callback_map[name][:] = items
    forge_session.runner.errors.clear()
    shared.sd_model = forge_sd15_engine
    forge_standin.reset_host_state()


@pytest.fixture
def jobs(forge: forge_standin.ForgeHost, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    return keep_finished_jobs(forge.module, monkeypatch)


@pytest.fixture
def measure(forge: forge_standin.ForgeHost, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(forge.module.Job, "measure_after", True)


def optimised(steps: int, **settings: Any) -> int:
    return AlignConfig(**settings).optimised_steps(steps)


def cfg_callbacks() -> list:
    return script_callbacks.callback_map["callbacks_cfg_denoiser"]


def prehooks_left() -> int:
    return harness.prehooks_left(sd_samplers)


def unet_of(engine: Any) -> torch.nn.Module:
    return engine.forge_objects.unet.model.diffusion_model


def unet_hook_count(engine: Any) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in unet_of(engine).modules())


def unchanged_latent(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the optimisation (losses, reports) but hand the latent back untouched: the trajectory without updates."""
    update, update_sigma = AlignSession.update, AlignSession.update_sigma_space
    monkeypatch.setattr(AlignSession, "update", lambda self, z, *a, **k: (z, update(self, z, *a, **k)[1]))
    monkeypatch.setattr(AlignSession, "update_sigma_space",
                        lambda self, x, *a, **k: (x, update_sigma(self, x, *a, **k)[1]))


# -- the host is Forge -------------------------------------------------------------------------------------------


def test_the_forge_adapter_is_picked_when_the_script_loads(forge):
    common = forge.module.common
    assert common.HOST.name == "Forge"
    assert forge.module.current_family().name == "SD1"


# -- off / on ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_disabled_is_bitwise_forge_without_the_extension(forge, sampler):
    without = forge.txt2img_without_extension(sampler_name=sampler, **BASE)
    res, p = forge.txt2img(sampler_name=sampler, **BASE)
    assert torch.equal(res.samples, without.samples)
    assert "T-SAM" not in res.infotexts[0] and p.tsam_job is None and prehooks_left() == 0


@pytest.mark.parametrize("sampler", ["Euler", "Heun", "DDIM"])
def test_enabled_changes_the_image_and_lowers_the_loss(forge, jobs, measure, monkeypatch, sampler):
    without = forge.txt2img_without_extension(sampler_name=sampler, **BASE)
    with monkeypatch.context() as m:
        unchanged_latent(m)
        plain, _ = forge.txt2img(sampler_name=sampler, tsam=STRONG, **BASE)
    # Every update computed but handed back unchanged: bitwise Forge's own image. So the difference below is the
    # write-back, the step the issue asked to prove is not silently dropped under inference mode.
    assert torch.equal(plain.samples, without.samples)
    steered, _ = forge.txt2img(sampler_name=sampler, tsam=STRONG, **BASE)
    baseline, job = jobs
    n = optimised(BASE["steps"])
    assert [r.step for r in job.reports] == [r.step for r in baseline.reports] == list(range(n))
    assert not torch.equal(steered.samples, without.samples)
    assert_normal(steered, 1, 128, 128)
    for mine, ref in zip(job.reports, baseline.reports, strict=True):
        assert mine.loss_after[0] < ref.loss_before[0]
    assert sum(r.loss_before[0] for r in job.reports[1:]) < sum(r.loss_before[0] for r in baseline.reports[1:])


def test_the_update_persists_in_the_samplers_own_x(forge, monkeypatch):
    """Euler's next step reads the x that T-SAM wrote (in place, inside Forge's inference mode)."""
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
    forge.txt2img(sampler_name="Euler", tsam=STRONG, **BASE)
    n = optimised(BASE["steps"])
    assert len(before) == len(after) == len(seen_by_sampler) == BASE["steps"]
    for k in range(BASE["steps"]):
        assert (not torch.equal(before[k], after[k])) == (k < n)
        assert torch.equal(seen_by_sampler[k], after[k])


def test_matches_the_reference_pipeline(forge, tiny_model):
    """Euler, one model call per step: Forge with T-SAM is lib_align's reference run on the same weights, with the
    UNet timestep taken as Forge's predictor takes it (the nearest integer timestep: `quantize=True`). The plain
    runs are compared first, so a stand-in difference cannot pass for a T-SAM one."""
    config = AlignConfig(step_size=40.0)
    common = dict(steps=6, width=128, height=128, seed=1, cfg_scale=7.0, sampler="euler", measure_after=False,
                  decode=False, quantize=True)
    plain_ref = generate(tiny_model, PROMPT, None, **common)
    plain = forge.txt2img_without_extension(seed=1, cfg_scale=7.0, **BASE)
    # Float rounding only: SDPA vs ldm's attention, Forge's sigma table (latents of magnitude ~10).
    torch.testing.assert_close(plain.samples, plain_ref.latent, rtol=1e-4, atol=1e-4)
    ref = generate(tiny_model, PROMPT, config, **common)
    res, _ = forge.txt2img(tsam=[True, *config.to_args()], seed=1, cfg_scale=7.0, **BASE)
    torch.testing.assert_close(res.samples, ref.latent, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(res.samples, plain.samples, atol=1e-3)


def test_the_hosts_weights_come_back_as_they_were(forge, forge_sd15_engine):
    """Our pass swaps the UNet's inference-tensor weights for normal aliases; afterwards Forge's own are back."""
    params = dict(unet_of(forge_sd15_engine).named_parameters())
    assert params and all(p.is_inference() for p in params.values())
    forge.txt2img(tsam=STRONG, **SMALL)
    after = dict(unet_of(forge_sd15_engine).named_parameters())
    assert after.keys() == params.keys() and all(after[k] is params[k] for k in params)


def test_batch_of_two_prompts_optimises_each_image_with_its_own_target(forge, jobs):
    prompts = ["a black car and a white clock", "a red cat on a small blue sofa"]
    batch, _ = forge.txt2img(prompts, tsam=STRONG, batch_size=2, **BASE)
    singles = [forge.txt2img(prompt, tsam=STRONG, seed=1 + i, **BASE)[0] for i, prompt in enumerate(prompts)]
    plain = forge.txt2img_without_extension(prompts, batch_size=2, **BASE)
    for i in range(2):
        torch.testing.assert_close(batch.samples[i], singles[i].samples[0], rtol=1e-4, atol=1e-4)
        assert not torch.allclose(batch.samples[i], plain.samples[i], atol=1e-3)
    (session,) = jobs[0].sessions.values()
    assert [t[0].length for t in session.targets] == [7, 8]
    assert len(jobs[0].reports[0].loss_before) == 2


def test_hires_fix_second_pass_is_left_alone(forge, jobs):
    steps = []
    cfg_callbacks().append(ScriptCallback("test", lambda params: steps.append(bool(params.denoiser.p.is_hr_pass)),
                                          "pass"))
    res, _ = forge.txt2img(tsam=STRONG, enable_hr=True, hr_scale=2.0, **SMALL)
    assert_normal(res, 1, 128, 128)
    assert True in steps and False in steps  # both passes ran
    job = jobs[0]
    assert [r.step for r in job.reports] == list(range(optimised(SMALL["steps"])))  # first pass only
    assert "T-SAM preset" in res.infotexts[0]


# -- T on Forge ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("clip_skip", [1, 2])
def test_t_is_the_reference_t_of_the_same_encoder(forge, jobs, tiny_model, clip_skip):
    """Forge's engine tokenises and encodes; T must be the reference pipeline's T of the same CLIP weights, at the
    layers Forge's "Clip skip" feeds the cond from (modules/processing.py calls sd_model.set_clip_skip)."""
    shared.opts.CLIP_stop_at_last_layers = clip_skip
    forge.txt2img("a black car and a white clock BREAK a small red cat", tsam=STRONG, **SMALL)
    family = standalone_family(tiny_model)
    chunks, words = family.tokenize("a black car and a white clock BREAK a small red cat")
    expected = family.targets(chunks, words, AlignConfig().power, clip_skip)
    got = jobs[0].targets["a black car and a white clock BREAK a small red cat"]
    assert [c.offset for c in got] == [c.offset for c in expected] == [0, 77]
    for mine, ref in zip(got, expected, strict=True):
        torch.testing.assert_close(mine.target, ref.target, rtol=1e-5, atol=1e-6)
        assert mine.tokens == ref.tokens


def test_the_text_encoder_is_loaded_before_t(forge, jobs, monkeypatch):
    """Forge moves models itself: T's encoder pass must come after load_model_gpu(clip.patcher)."""
    order = []
    family_type = type(forge.module.current_family())
    targets = family_type.prompt_targets
    monkeypatch.setattr(memory_management, "load_model_gpu", lambda patcher: order.append(("load", patcher)))
    monkeypatch.setattr(family_type, "prompt_targets", lambda self, *a: order.append(("T", None)) or targets(self, *a))
    forge.txt2img(tsam=STRONG, **SMALL)
    clip = shared.sd_model.forge_objects.clip.patcher
    first_t = order.index(("T", None))
    assert ("load", clip) in order[:first_t]


# -- lifecycle -----------------------------------------------------------------------------------------------------


def explode_on_third_host_call():
    calls = []

    def explode(module, inputs, output):
        if not torch.is_grad_enabled():  # Forge's own calls; T-SAM's pass runs with grad
            calls.append(1)
            if len(calls) == 3:
                raise RuntimeError("CUDA out of memory (simulated)")

    return explode


def test_no_hooks_or_callbacks_left_after_20_jobs(forge, jobs, forge_sd15_engine):
    unet = unet_of(forge_sd15_engine)
    unet_hooks = unet_hook_count(forge_sd15_engine)
    callbacks = {name: len(items) for name, items in script_callbacks.callback_map.items()}
    for i in range(20):
        sampler = SAMPLERS[i % len(SAMPLERS)]
        tsam = None if i % 4 == 1 else {"step_size": 20.0}
        if i == 6:  # the host raises mid-sampling: post_sample and postprocess are skipped
            handle = unet.out.register_forward_hook(explode_on_third_host_call())
            try:
                with pytest.raises(RuntimeError, match="simulated"):
                    forge.txt2img(sampler_name=sampler, tsam=tsam, **SMALL)
            finally:
                handle.remove()
            assert prehooks_left() == 1  # the next job's process() removes it
        elif i == 14:  # Interrupt pressed during sampling

            def interrupt(params):
                if params.denoiser.step == 1:
                    shared.state.interrupt()

            cfg_callbacks().append(ScriptCallback("test", interrupt, "interrupt"))
            res, _ = forge.txt2img(sampler_name=sampler, tsam=tsam, **SMALL)
            cfg_callbacks().pop()
            assert_normal(res, 1, 64, 64)
        else:
            res, p = forge.txt2img(sampler_name=sampler, tsam=tsam, **SMALL)
            assert p.tsam_job is None
    assert prehooks_left() == 0
    assert unet_hook_count(forge_sd15_engine) == unet_hooks
    assert {name: len(items) for name, items in script_callbacks.callback_map.items()} == callbacks
    assert forge.module.hooked_jobs() == []
    assert all(p.is_inference() for p in unet.parameters())
    assert len([job for job in jobs if job is not None]) == 14  # 15 enabled jobs, one of which raised


@pytest.mark.parametrize("flag", ["interrupted", "skipped"])
def test_interrupt_and_skip_stop_the_optimisation_loop(forge, forge_sd15_engine, flag):
    forwards = []

    def press(module, inputs, output):
        if torch.is_grad_enabled():  # T-SAM's own differentiable pass
            forwards.append(1)
            setattr(shared.state, flag, True)

    unet_hooks = unet_hook_count(forge_sd15_engine)
    handle = unet_of(forge_sd15_engine).input_blocks[0].register_forward_hook(press)
    try:
        res, p = forge.txt2img(tsam={"preset": OFFICIAL, "refine_iters": 30}, **BASE)
    finally:
        handle.remove()
    assert len(forwards) == 1
    assert_normal(res, 1, 128, 128)
    assert prehooks_left() == 0 and unet_hook_count(forge_sd15_engine) == unet_hooks and p.tsam_job is None


# -- refusals ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("storage", ["nf4", "gguf", torch.float8_e4m3fn])
def test_quantised_unet_is_refused_with_one_line(forge, forge_sd15_engine, monkeypatch, storage):
    monkeypatch.setattr(unet_of(forge_sd15_engine), "storage_dtype", storage)
    without = forge.txt2img_without_extension(**SMALL)
    res, p = forge.txt2img(tsam=STRONG, **SMALL)
    assert torch.equal(res.samples, without.samples)
    lines = [line for line in res.comments.splitlines() if line.startswith("T-SAM")]
    assert len(lines) == 1 and "quantised UNet weights" in lines[0]
    assert "T-SAM: \"skipped (quantised UNet weights" in res.infotexts[0] and p.tsam_job is None


def test_flux_is_refused_with_one_line(forge, forge_flux_engine):
    shared.sd_model = forge_flux_engine
    without = forge.txt2img_without_extension(**SMALL)
    res, _ = forge.txt2img(tsam=STRONG, **SMALL)
    assert torch.equal(res.samples, without.samples)
    lines = [line for line in res.comments.splitlines() if line.startswith("T-SAM")]
    assert lines == ["T-SAM: Flux models are not supported (no UNet cross-attention to steer); generating without "
                     "T-SAM."]


def test_and_prompts_are_refused(forge):
    prompt = "a black car AND a white clock"
    without = forge.txt2img_without_extension(prompt, **SMALL)
    res, _ = forge.txt2img(prompt, tsam=STRONG, **SMALL)
    assert torch.equal(res.samples, without.samples)
    assert "T-SAM: prompts with AND" in res.comments


# -- infotext, paste, API, X/Y/Z -----------------------------------------------------------------------------------


def test_infotext_paste_and_api_round_trip(forge, jobs):
    from modules import infotext_utils
    from modules.api import api

    config = AlignConfig.official(step_size=7.5, steps_fraction=0.5, refine_iters=3)
    first, _ = forge.txt2img(PROMPT, tsam=[True, *config.to_args()], seed=1234, **SMALL)
    assert "T-SAM preset" in first.infotexts[0]
    # UI paste: the accordion opens with the same settings.
    fields = forge.runner.infotext_fields
    values = infotext_utils.paste(fields, first.infotexts[0])
    components = [field.component for field in fields]
    ours = [values[components.index(c)] for c in forge.script.controls[:-1]]
    assert ours[0] is True and AlignConfig.from_args(ours[1:]) == config
    # API: the infotext alone re-runs the same T-SAM and the same image.
    request = api.StableDiffusionProcessingTxt2Img(infotext=first.infotexts[0])
    request, script_args = api.txt2img_request(forge.runner, request, None)
    requested = {k: v for k, v in request.dict().items() if v is not None and k != "infotext"}
    res, _ = forge.txt2img(requested.pop("prompt"), script_args=script_args, **requested)
    assert jobs[-1].config == config and res.infotexts[0] == first.infotexts[0]
    assert torch.equal(res.samples, first.samples)
    # The dict form of the API arguments.
    named = api.init_script_args(forge.runner, {"t-sam": {"args": [{"preset": OFFICIAL, "step_size": 7}]}})
    forge.txt2img(script_args=named, **SMALL)
    assert jobs[-1].config == AlignConfig.official(step_size=7.0)


def test_xyz_axes_and_cells(forge, jobs):
    fields = {f.name: f for f in AlignConfig.settings()}
    p = forge.make_p(tsam={"step_size": 10}, **SMALL)
    cells = forge.xyz.run_cells(p, "T-SAM enabled", ["True", "False", "True"])
    assert ["T-SAM preset" in res.infotexts[0] for _, res in cells] == [True, False, True]
    cells = forge.xyz.run_cells(p, fields["step_size"].metadata["key"], ["5", "20"])
    assert [job.config.step_size for job in jobs[-2:]] == [5.0, 20.0]


# -- Analyze prompt ------------------------------------------------------------------------------------------------


def test_analyze_prompt_loads_the_text_encoder_and_draws_t(forge):
    memory_management.loaded.clear()
    picture, message = forge.module.analyze_prompt(PROMPT, 1.0)
    assert picture is not None and message.startswith("T of 7 tokens")
    assert shared.sd_model.forge_objects.clip.patcher in memory_management.loaded


# -- SDXL ----------------------------------------------------------------------------------------------------------


def test_sdxl_on_forge_changes_the_image_and_lowers_the_loss(forge, jobs, measure, forge_sdxl_engine):
    shared.sd_model = forge_sdxl_engine
    assert forge.module.current_family().name == "SDXL"
    without = forge.txt2img_without_extension(**BASE)
    res, _ = forge.txt2img(tsam=STRONG, **BASE)
    assert not torch.equal(res.samples, without.samples)
    assert_normal(res, 1, 128, 128)
    reports = jobs[0].reports
    assert len(reports) == optimised(BASE["steps"]) and all(r.loss_after[0] < r.loss_before[0] for r in reports)
    picture, message = forge.module.analyze_prompt(PROMPT, 1.0)
    assert picture is not None and 'T-SAM uses the panel titled "T (CLIP-L, used…"' in message


def test_sdxl_t_is_the_reference_t_of_clip_l(forge, jobs, forge_sdxl_engine, tiny_sdxl_model):
    """Forge's SDXL engines read hidden_states[-max(clip_skip, 2)] (minimal_clip_skip=2), the layer sgm's CLIP-L
    embedder is configured with: T must be the reference pipeline's T of the same CLIP-L weights."""
    shared.sd_model = forge_sdxl_engine
    forge.txt2img(tsam=STRONG, **SMALL)
    family = standalone_family(tiny_sdxl_model)
    chunks, words = family.tokenize(PROMPT)
    (expected,) = family.targets(chunks, words, AlignConfig().power, 1)
    (got,) = jobs[0].targets[PROMPT]
    torch.testing.assert_close(got.target, expected.target, rtol=1e-5, atol=1e-6)
    assert got.tokens == expected.tokens and got.length == 7


# -- text details ----------------------------------------------------------------------------------------------------


def test_textual_inversion_vectors_reach_t(forge, jobs, forge_sd15_engine, tiny_model):
    """A TI placeholder in Forge's engine: T is the reference T of the encoder fed those vectors (the oracle puts
    them in with the encoder's own inputs_embeds, not through our override hook), labelled with the name."""
    from backend.text_processing.textual_inversion import Embedding

    engine = forge_sd15_engine.text_processing_engine
    vec = torch.randn(2, 64, generator=torch.Generator().manual_seed(3))
    engine.embeddings.register_embedding(Embedding(vec, "tsamemb"))
    try:
        forge.txt2img("a tsamemb car and a white clock", tsam=STRONG, **SMALL)
        (got,) = jobs[0].targets["a tsamemb car and a white clock"]
        ids = torch.tensor([engine.tokenize_line("a tsamemb car and a white clock")[0][0].tokens])
    finally:
        engine.embeddings.ids_lookup.clear()
        engine.embeddings.word_embeddings.clear()
    text = tiny_model.cond_stage_model.transformer
    with torch.no_grad():
        embeds = text.text_model.embeddings.token_embedding(ids).clone()
        embeds[0, 2:4] = vec  # after BOS and "a"
        attentions = _eager_attentions(text, embeds)
    expected = torch.stack(attentions).mean(dim=(0, 2))[0]  # layers and heads, as text.text_target
    length = got.length
    t = expected[1:1 + length, 1:1 + length].pow(AlignConfig().power)
    torch.testing.assert_close(got.target, t / (t.sum(-1, keepdim=True) + 1e-7), rtol=1e-4, atol=1e-6)
    assert got.tokens[1:3] == ["tsamemb", "tsamemb·2"]


def _eager_attentions(text: torch.nn.Module, embeds: torch.Tensor) -> list[torch.Tensor]:
    """Each layer's attention probabilities of a transformers CLIPTextModel fed `embeds`, computed here from the
    layer's own projections with the causal mask (the encoder's definition), not through transformers' output."""
    model = text.text_model
    hidden = embeds + model.embeddings.position_embedding(model.embeddings.position_ids[:, :embeds.shape[1]])
    n = hidden.shape[1]
    mask = torch.full((n, n), float("-inf")).triu(1)
    out = []
    for layer in model.encoder.layers:
        attn = layer.self_attn
        x = layer.layer_norm1(hidden)
        heads, d = attn.num_heads, attn.head_dim
        q = attn.q_proj(x).view(1, n, heads, d).transpose(1, 2) * attn.scale
        k = attn.k_proj(x).view(1, n, heads, d).transpose(1, 2)
        probs = (q @ k.transpose(-1, -2) + mask).softmax(-1)
        out.append(probs)
        hidden = layer(hidden, None, mask[None, None])[0]
    return out


def test_ids_after_eos_are_the_engines_padding(forge_sd15_engine, monkeypatch):
    """SD2's and bigG's tokenizers pad with "!" (id_pad != id_end): T's encoder pass must see the very ids the
    engine's own encode feeds its encoder (captured from it)."""
    from lib_align.families.forge import engine_ids

    engine = forge_sd15_engine.text_processing_engine
    monkeypatch.setattr(engine, "id_pad", 0)
    fed = []
    handle = engine.text_encoder.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: fed.append((args[0] if args else kwargs["input_ids"]).clone()), with_kwargs=True)
    try:
        with torch.inference_mode():
            engine(["a black car and a white clock"])
    finally:
        handle.remove()
    chunks, _ = engine.tokenize_line("a black car and a white clock")
    ours = engine_ids(engine, chunks, torch.device("cpu"))
    assert torch.equal(ours, fed[0].to(ours.device)) and int((ours == 0).sum()) == 77 - 9


def test_an_sd2_engine_is_aligned_as_sd2(forge, jobs, forge_sd15_engine, monkeypatch):
    """Forge's SD2 engine (backend/diffusion_engine/sd20.py) has SD1's shape with `is_sd2`; the stand-in has no SD2
    weights, so the SD1 engine is flagged as one: this checks the family is found and runs, not SD2 itself."""
    monkeypatch.setattr(forge_sd15_engine, "is_sd1", False)
    monkeypatch.setattr(forge_sd15_engine, "is_sd2", True)
    assert forge.module.current_family().name == "SD2"
    res, _ = forge.txt2img(tsam=STRONG, **SMALL)
    assert "T-SAM preset" in res.infotexts[0] and jobs[0].reports


def test_show_attention_adds_three_pictures_per_image(forge):
    res, _ = forge.txt2img(["a black car and a white clock", "a red cat"], tsam={"show_attention": True},
                           batch_size=2, **SMALL)
    first = res.index_of_first_image
    assert len(res.images) == first + 2 + 3 * 2
    assert res.infotexts[first + 2] == res.infotexts[first]  # each picture carries its image's infotext


def test_low_memory_mode_gives_the_same_image_on_forge(forge, jobs):
    """Gradient checkpointing of the pass (the Low memory setting) recomputes Forge's blocks inside the backward,
    which runs inside our out-of-inference-mode context: the same update within float tolerance."""
    default, _ = forge.txt2img(tsam=STRONG, **SMALL)
    low, _ = forge.txt2img(tsam={**STRONG, "low_memory": True}, **SMALL)
    assert jobs[1].config.low_memory and jobs[1].reports
    torch.testing.assert_close(low.samples, default.samples, rtol=1e-4, atol=1e-4)


# -- beside Forge's built-in ControlNet ----------------------------------------------------------------------------


@pytest.fixture
def forge_controlnet(forge_sd15_engine: Any) -> Iterator[Any]:
    """A ControlNet linked to the UNet patcher as sd_forge_controlnet links one (backend/patcher/controlnet.py's
    stand-in; its control model built under inference mode, as Forge loads models)."""
    from backend.patcher.controlnet import ControlModel, ControlNet

    unet = forge_sd15_engine.forge_objects.unet
    with torch.inference_mode():
        cnet = ControlNet(ControlModel(unet.model.diffusion_model))

    def attach(strength: float, timestep_percent_range: tuple[float, float] = (0.0, 1.0)) -> Any:
        unet.controlnet_linked_list = None
        unet.add_patched_controlnet(cnet.set_cond_hint(None, strength, timestep_percent_range))
        return cnet

    try:
        yield attach
    finally:
        unet.controlnet_linked_list = None


def test_controlnet_at_strength_zero_gives_the_same_tsam_image_as_none(forge, jobs, forge_controlnet):
    cnet = forge_controlnet(0.0)
    with_unit, _ = forge.txt2img(PROMPT, tsam=STRONG, **SMALL)
    forge.model.forge_objects.unet.controlnet_linked_list = None
    without, _ = forge.txt2img(PROMPT, tsam=STRONG, **SMALL)
    assert cnet.calls > 0
    assert torch.equal(with_unit.samples, without.samples)
    assert [r.loss_before for r in jobs[0].reports] == [r.loss_before for r in jobs[1].reports]


def test_controlnet_residuals_are_in_tsams_pass_and_every_step_gets_a_gradient(forge, jobs, forge_controlnet):
    """The maps T-SAM reads are those of the model that makes the image: with the residuals, other losses than
    without them at the same first latent; the control model runs once more per evaluation (T-SAM's own)."""
    forge.txt2img(PROMPT, tsam=STRONG, **BASE)
    plain = jobs[-1].reports
    cnet = forge_controlnet(1.0)
    off, _ = forge.txt2img(PROMPT, **BASE)
    host_calls, cnet.calls = cnet.calls, 0
    res, _ = forge.txt2img(PROMPT, tsam=STRONG, **BASE)
    assert_normal(res, 1, 128, 128)
    reports = jobs[-1].reports
    assert len(reports) == 3 and all(r.iterations == 1 and not r.no_gradient for r in reports)
    assert reports[0].loss_before != plain[0].loss_before
    assert cnet.calls == host_calls + len(reports)  # the host's calls plus one per T-SAM evaluation
    assert not torch.equal(res.samples, off.samples) and "T-SAM note" not in res.infotexts[0]


def test_controlnet_outside_its_range_adds_nothing_and_leaves_no_step_without_gradient(forge, jobs,
                                                                                        forge_controlnet):
    forge_controlnet(1.0, (0.5, 1.0))
    res, _ = forge.txt2img(PROMPT, tsam={**STRONG, "steps_fraction": 1.0}, **BASE)
    reports = jobs[-1].reports
    assert len(reports) == 6 and not any(r.no_gradient for r in reports)
    assert "T-SAM preset: Paper" in res.infotexts[0] and "no gradient" not in res.infotexts[0]


# -- memory mode auto ----------------------------------------------------------------------------------------------


def test_auto_memory_mode_on_forge_reads_forges_attention_and_free_memory(forge, jobs, monkeypatch):
    """Forge's attention is backend/attention.py's `attention_function` (PyTorch SDPA in the stand-in, as on a
    CUDA machine without --xformers); with too little free memory auto checkpoints from the first update and gives
    the Low memory image."""
    from backend import attention

    from lib_align import memory
    from lib_align.webui import common

    assert common.HOST.attention_name() == attention.attention_function.__name__ == "attention_pytorch"
    low, _ = forge.txt2img(tsam={**STRONG, "low_memory": "on"}, **SMALL)
    monkeypatch.setattr(memory, "free_bytes", lambda device: 2**20)
    res, _ = forge.txt2img(tsam=STRONG, **SMALL)
    assert jobs[-1].checkpointing and "T-SAM memory: auto → low" in res.infotexts[0]
    torch.testing.assert_close(res.samples, low.samples)
    monkeypatch.setattr(memory, "free_bytes", lambda device: 2**40)
    res, _ = forge.txt2img(tsam=STRONG, **SMALL)
    assert not jobs[-1].checkpointing and "T-SAM memory: auto → normal" in res.infotexts[0]
