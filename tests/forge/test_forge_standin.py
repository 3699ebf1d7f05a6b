"""Self-tests of the Forge stand-in (tests/forge_host), WITHOUT the extension: the models are built as Forge's loader
builds them (inference tensors, the shared tiny weights), generation runs through Forge's process_images with the
inference-mode scope, the CFG denoiser hands callbacks the sampler's own x, and autograd through the UNet fails
the way it fails in Forge."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import forge_models
import forge_standin
import pytest
import torch
from backend import memory_management
from backend.nn.unet import CrossAttention, IntegratedUNet2DConditionModel
from modules import prompt_parser, script_callbacks, scripts, sd_samplers, shared

K_SAMPLERS = ["Euler", "Euler a", "Heun", "DPM++ 2M"]
BASE = dict(steps=6, width=128, height=128, extension=False)  # 16x16 latents


def record_denoiser_calls(monkeypatch: pytest.MonkeyPatch) -> tuple[list[Any], list[dict[str, Any]]]:
    """(the first argument of every CFG-denoiser forward, what every on_cfg_denoiser callback saw)."""
    sampler_x: list[Any] = []
    seen: list[dict[str, Any]] = []
    create = sd_samplers.create_sampler

    def create_and_watch(name: str, model: Any) -> Any:
        sampler = create(name, model)
        sampler.model_wrap_cfg.register_forward_pre_hook(lambda _m, args: sampler_x.append(args[0]))
        return sampler

    def callback(params: Any) -> None:
        seen.append(dict(params=params, x=params.x, sigma=params.sigma.clone(),
                         inference=torch.is_inference_mode_enabled(), is_hr_pass=params.denoiser.p.is_hr_pass,
                         text_cond=params.text_cond, text_uncond=params.text_uncond,
                         sampler=params.denoiser.sampler))

    monkeypatch.setattr(sd_samplers, "create_sampler", create_and_watch)
    script_callbacks.on_cfg_denoiser(callback)
    return sampler_x, seen


def engine_weights(engine: Any) -> list[torch.Tensor]:
    objects = engine.forge_objects
    modules = [objects.unet.model, objects.clip.cond_stage_model, objects.vae.first_stage_model]
    return [t for m in modules for t in [*m.parameters(), *m.buffers()]]


@pytest.mark.parametrize("family", ["sd15", "sdxl", "flux"])
def test_every_weight_is_an_inference_tensor(family: str, request: pytest.FixtureRequest) -> None:
    engine = request.getfixturevalue(f"forge_{family}_engine")
    weights = engine_weights(engine)
    assert weights and all(t.is_inference() for t in weights)


def test_engine_shape_is_forges(forge_sd15_engine: Any, forge_sdxl_engine: Any, forge_flux_engine: Any) -> None:
    for engine, flag in [(forge_sd15_engine, "is_sd1"), (forge_sdxl_engine, "is_sdxl")]:
        unet = engine.forge_objects.unet.model.diffusion_model
        assert isinstance(unet, IntegratedUNet2DConditionModel) and getattr(engine, flag) is True
        attn2 = [m for n, m in unet.named_modules() if n.endswith("attn2")]
        assert attn2 and all(isinstance(m, CrossAttention) and not hasattr(m, "scale") for m in attn2)
        assert engine.cond_stage_model is None and engine.forge_objects.clipvision is None
    assert forge_sdxl_engine.text_processing_engine_l.minimal_clip_skip == 2
    assert forge_sdxl_engine.text_processing_engine_g.id_pad == 0 != forge_sdxl_engine.text_processing_engine_g.id_end
    flux = forge_flux_engine
    assert type(flux).__name__ == "Flux" and not any([flux.is_sd1, flux.is_sd2, flux.is_sdxl, flux.is_sd3])
    assert not hasattr(flux.forge_objects.unet.model.diffusion_model, "input_blocks")
    marked = forge_models.mark_quantised(forge_sd15_engine, "nf4")
    try:
        assert marked.forge_objects.unet.model.diffusion_model.storage_dtype == "nf4"
    finally:
        forge_models.mark_quantised(forge_sd15_engine, torch.float32)


def test_sd15_weights_are_the_tiny_models(forge_sd15_engine: Any, tiny_model: Any) -> None:
    """Forge's UNet (SDPA attention) gives ldm's output; the engine's cond is CLIP's last hidden state."""
    x, t, context = torch.randn(2, 4, 16, 16), torch.tensor([500.0, 20.0]), torch.randn(2, 77, 64)
    with torch.no_grad():
        expected = tiny_model.unet(x, t, context=context)
    with torch.inference_mode():
        got = forge_sd15_engine.forge_objects.unet.model.diffusion_model(x, t, context=context)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    shared.sd_model = forge_sd15_engine
    cond = forge_sd15_engine.get_learned_conditioning([forge_standin.DEFAULT_PROMPT])
    chunk = forge_sd15_engine.text_processing_engine.tokenize_line(forge_standin.DEFAULT_PROMPT)[0][0]
    ids = torch.tensor([chunk.tokens])
    with torch.no_grad():
        torch.testing.assert_close(cond, tiny_model.cond_stage_model.transformer(input_ids=ids).last_hidden_state)
    assert cond.is_inference()


def test_sdxl_cond_is_sgms(forge_sdxl_engine: Any, tiny_sdxl_model: Any) -> None:
    """Converted bigG + CLIP-L + size embeddings give the sgm conditioner's crossattn and vector."""
    shared.sd_model = forge_sdxl_engine
    cond = forge_sdxl_engine.get_learned_conditioning(
        prompt_parser.SdConditioning([forge_standin.DEFAULT_PROMPT], width=128, height=96))
    chunk = forge_sdxl_engine.text_processing_engine_l.tokenize_line(forge_standin.DEFAULT_PROMPT)[0][0]
    crossattn, vector = tiny_sdxl_model.encode_chunks(torch.tensor([chunk.tokens]), size=(96, 128))
    torch.testing.assert_close(cond["crossattn"], crossattn, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(cond["vector"], vector, atol=1e-5, rtol=1e-4)


def test_generation_is_deterministic_per_seed(bare_forge: Any) -> None:
    first, p = bare_forge.txt2img(seed=3, **BASE)
    again = bare_forge.txt2img(seed=3, **BASE)[0]
    other = bare_forge.txt2img(seed=4, **BASE)[0]
    assert torch.equal(first.samples, again.samples) and not torch.equal(first.samples, other.samples)
    assert len(first.images) == 1 and first.images[0].size == (128, 128)
    assert p.final_latents.is_inference() and torch.isfinite(first.samples).all()  # the sampler's result


@pytest.mark.parametrize("sampler", K_SAMPLERS)
def test_callback_gets_the_samplers_own_x_and_true_sigma(bare_forge: Any, sampler: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    sampler_x, seen = record_denoiser_calls(monkeypatch)
    _, p = bare_forge.txt2img(sampler_name=sampler, **BASE)
    assert len(seen) == len(sampler_x) > 0
    sigmas = seen[0]["sampler"].model_wrap.predictor.sigmas
    for x, call in zip(sampler_x, seen, strict=True):
        assert call["x"] is x  # Forge hands the forward's own x on (A1111 builds a new cat of cond/uncond rows)
        assert call["inference"] and x.is_inference() and x.shape == (1, 4, 16, 16)
        # a true sigma within the model's range (Heun's and the ancestral steps are between schedule entries)
        assert sigmas[0] * 0.999 <= call["sigma"][0] <= sigmas[-1] * 1.001
        assert call["text_cond"].shape == call["text_uncond"].shape == (1, 77, 64)
    schedule = seen[0]["sampler"].model_wrap.get_sigmas(6)
    torch.testing.assert_close(seen[0]["sigma"], schedule[:1])


def test_ddim_hands_a_new_x_in_sigma_space(bare_forge: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    sampler_x, seen = record_denoiser_calls(monkeypatch)
    bare_forge.txt2img(sampler_name="DDIM", **BASE)
    predictor = shared.sd_model.forge_objects.unet.model.predictor
    assert len(seen) == 6
    for z, call in zip(sampler_x, seen, strict=True):
        assert call["x"] is not z and z.is_inference()
        sigma = call["sigma"]
        assert any(torch.isclose(sigma[0], s) for s in predictor.sigmas)  # the timestep's true sigma
        torch.testing.assert_close(call["x"], z * (sigma ** 2 + 1).sqrt().view(-1, 1, 1, 1))
    assert torch.allclose(shared.sd_model.alphas_cumprod, predictor.alphas_cumprod, rtol=1e-4)


def test_naive_autograd_through_the_unet_fails(bare_forge: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Leaving inference mode is not enough: the weights are inference tensors, which autograd cannot save."""
    outcomes: list[Any] = []

    def try_grad(params: Any) -> None:
        if outcomes:
            return
        kmodel = shared.sd_model.forge_objects.unet.model
        with torch.enable_grad():  # still inside Forge's inference mode: no graph at all
            out = kmodel.apply_model(params.x.clone().requires_grad_(True), params.sigma, c_crossattn=params.text_cond)
            outcomes.append(out.requires_grad)
        try:
            with torch.inference_mode(False), torch.enable_grad():
                x = params.x.clone().requires_grad_(True)  # a normal tensor: cloned outside inference mode
                kmodel.apply_model(x, params.sigma.clone(), c_crossattn=params.text_cond.clone()).sum().backward()
            outcomes.append(None)
        except RuntimeError as error:
            outcomes.append(str(error))

    script_callbacks.on_cfg_denoiser(try_grad)
    bare_forge.txt2img(**BASE)
    assert outcomes[0] is False
    assert outcomes[1] is not None and "Inference tensors cannot be saved for backward" in outcomes[1]


def test_the_same_autograd_works_on_a1111s_weights(tiny_model: Any) -> None:
    """A1111 samples under no_grad with normal weights (the A1111 stand-in runs this very UNet): enable_grad works."""
    with torch.no_grad():
        x = torch.randn(1, 4, 16, 16)
        context = torch.randn(1, 77, 64)
    with torch.enable_grad():
        x = x.clone().requires_grad_(True)
        tiny_model.unet(x, torch.tensor([500.0]), context=context).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_unet_call_batches_uncond_first(bare_forge: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """sampling_function: one UNet call on [uncond rows, cond rows], as Forge batches them."""
    _, seen = record_denoiser_calls(monkeypatch)
    calls: list[dict[str, Any]] = []
    unet = shared.sd_model.forge_objects.unet.model.diffusion_model
    handle = unet.register_forward_pre_hook(
        lambda _m, args, kwargs: calls.append(dict(x=args[0], **kwargs)), with_kwargs=True)
    try:
        bare_forge.txt2img(["a cat", "a dog"], batch_size=2, **BASE)
    finally:
        handle.remove()
    assert len(calls) == len(seen) == 6
    for call, step in zip(calls, seen, strict=True):
        options = call["transformer_options"]
        assert options["cond_or_uncond"] == [1, 0] and options["cond_indices"] == [2, 3]
        torch.testing.assert_close(call["context"][:2], step["text_uncond"])
        torch.testing.assert_close(call["context"][2:], step["text_cond"])
        assert call["x"].shape[0] == 4 and step["x"].shape[0] == 2


def test_batch_of_two_prompts(bare_forge: Any) -> None:
    res, _ = bare_forge.txt2img(["a cat", "a dog"], batch_size=2, seed=7, **BASE)
    assert len(res.images) == 3 and res.index_of_first_image == 1  # the grid first
    single = bare_forge.txt2img("a dog", seed=8, **BASE)[0]
    torch.testing.assert_close(res.samples[1:], single.samples, atol=1e-4, rtol=1e-4)  # per-seed noise


def test_sdxl_generates(bare_forge: Any, forge_sdxl_engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    shared.sd_model = forge_sdxl_engine
    _, seen = record_denoiser_calls(monkeypatch)
    res, _ = bare_forge.txt2img(**BASE)
    assert res.images[0].size == (128, 128) and torch.isfinite(res.samples).all()
    cond = seen[0]["text_cond"]
    assert isinstance(cond, dict) and cond["crossattn"].shape == (1, 77, 112) and cond["vector"].shape == (1, 176)


def test_flux_generates(bare_forge: Any, forge_flux_engine: Any) -> None:
    shared.sd_model = forge_flux_engine
    for settings in [dict(cfg_scale=1.0, scheduler="Simple"), dict()]:  # Forge's Flux defaults, then the harness's
        first = bare_forge.txt2img(**settings, **BASE)[0]
        assert first.images[0].size == (128, 128) and first.samples.shape == (1, 16, 16, 16)
        assert torch.isfinite(first.samples).all()
        assert torch.equal(first.samples, bare_forge.txt2img(**settings, **BASE)[0].samples)


class HookRecorder(scripts.Script):
    """An always-on script recording each hook with is_hr_pass and whether inference mode was on."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool, bool]] = []
        self.args_from = self.args_to = 0

    def title(self) -> str:
        return "recorder"

    def _log(self, name: str, p: Any) -> None:
        self.calls.append((name, p.is_hr_pass, torch.is_inference_mode_enabled()))

    def before_process(self, p: Any, *args: Any) -> None:
        self._log("before_process", p)

    def process(self, p: Any, *args: Any) -> None:
        self._log("process", p)

    def before_process_batch(self, p: Any, *args: Any, **kwargs: Any) -> None:
        self._log("before_process_batch", p)

    def process_batch(self, p: Any, *args: Any, **kwargs: Any) -> None:
        self._log("process_batch", p)

    def process_before_every_sampling(self, p: Any, *args: Any, **kwargs: Any) -> None:
        self._log("process_before_every_sampling", p)

    def before_hr(self, p: Any, *args: Any) -> None:
        self._log("before_hr", p)

    def post_sample(self, p: Any, ps: Any, *args: Any) -> None:
        self._log("post_sample" + ("(decoded)" if getattr(ps.samples, "already_decoded", False) else ""), p)

    def postprocess_batch(self, p: Any, *args: Any, **kwargs: Any) -> None:
        self._log("postprocess_batch", p)

    def postprocess_image(self, p: Any, pp: Any, *args: Any) -> None:
        self._log("postprocess_image", p)

    def postprocess(self, p: Any, processed: Any, *args: Any) -> None:
        self._log("postprocess", p)


def test_hires_fix_hook_order_and_inference_scope(bare_forge: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _, seen = record_denoiser_calls(monkeypatch)
    recorder = HookRecorder()
    runner = scripts.ScriptRunner()
    runner.scripts = runner.alwayson_scripts = [recorder]
    p = bare_forge.make_p(enable_hr=True, hr_second_pass_steps=3, denoising_strength=0.5, steps=6, width=128,
                          height=128, extension=False)
    p.scripts, p.script_args = runner, []
    shared.state.begin("txt2img")
    res = forge_standin.processing.process_images(p)
    assert [c[0] for c in recorder.calls] == [
        "before_process", "process", "before_process_batch", "process_batch", "process_before_every_sampling",
        "before_hr", "process_before_every_sampling", "process_before_every_sampling", "post_sample(decoded)",
        "postprocess_batch", "postprocess_image", "postprocess"]
    inference = {name: flag for name, _, flag in recorder.calls}
    assert inference == {**{name: True for name in inference}, "before_process": False, "process": False,
                         "postprocess": False}
    assert [hr for name, hr, _ in recorder.calls if name == "process_before_every_sampling"] == [False, True, True]
    first = [c for c in seen if not c["is_hr_pass"]]
    second = [c for c in seen if c["is_hr_pass"]]
    assert len(first) == 6 and len(second) == 3
    assert second[0]["x"].shape == (1, 4, 32, 32) and second[0]["text_uncond"] is None  # hr_cfg 1: no uncond
    assert res.images[0].size == (256, 256) and res.samples.shape == (1, 4, 32, 32)


def test_forge_objects_per_batch_and_model_loads(bare_forge: Any) -> None:
    engine = shared.sd_model
    objects: list[Any] = []
    script_callbacks.on_cfg_denoiser(lambda params: objects.append(shared.sd_model.forge_objects))
    bare_forge.txt2img(n_iter=2, **BASE)
    batches = {id(o) for o in objects}
    assert len(batches) == 2 and all(o.unet is engine.forge_objects_original.unet for o in objects)
    assert engine.forge_objects is not engine.forge_objects_original
    objects = engine.forge_objects
    # per batch: the text encoder for uncond and for cond, the UNet for sampling, the VAE for decoding
    assert memory_management.loaded == [objects.clip.patcher, objects.clip.patcher, objects.unet,
                                        objects.vae.patcher] * 2
    assert memory_management.load_calls[2]["memory_required"] > 0


def test_attn2_replace_patch_is_honoured(bare_forge: Any) -> None:
    """A patch set on the UNet patcher reaches BasicTransformerBlock through transformer_options."""
    from backend.attention import attention_function

    blocks: list[Any] = []

    def patch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra: dict) -> torch.Tensor:
        blocks.append((extra["block"], extra["block_index"]))
        return attention_function(q, k, v, extra["n_heads"])

    engine = shared.sd_model
    plain = bare_forge.txt2img(seed=5, **BASE)[0]
    original = engine.forge_objects_after_applying_lora
    patched = original.shallow_copy()
    patched.unet = original.unet.clone()
    patched.unet.set_model_attn2_replace(patch, "input", 1)
    engine.forge_objects_after_applying_lora = patched
    try:
        again = bare_forge.txt2img(seed=5, **BASE)[0]
    finally:
        engine.forge_objects_after_applying_lora = original
    assert blocks and set(blocks) == {(("input", 1), 0)}
    torch.testing.assert_close(again.samples, plain.samples)


def test_text_engine_chunks_emphasis_and_textual_inversion(forge_sd15_engine: Any) -> None:
    from backend.text_processing.textual_inversion import Embedding

    engine = forge_sd15_engine.text_processing_engine
    chunks, _ = engine.tokenize_line("a cat BREAK a dog")
    assert len(chunks) == 2 and all(len(c.tokens) == len(c.multipliers) == 77 for c in chunks)
    # 81 tokens with a comma at 71: the chunk is full 4 words later, and those words move to the next chunk
    chunks, count = engine.tokenize_line(" ".join(["word"] * 70) + ", " + " ".join(["word"] * 10))
    real = [[t for t in c.tokens[1:] if t != engine.id_end] for c in chunks]
    assert [len(r) for r in real] == [71, 10] and real[0][-1] == engine.comma_token and count == 85
    assert 1.5 in engine.tokenize_line("a (red:1.5) car")[0][0].multipliers
    vec = torch.randn(2, 64)
    engine.embeddings.register_embedding(Embedding(vec, "tsamemb"))
    try:
        chunk = engine.tokenize_line("a tsamemb car")[0][0]
        assert [tuple(f) for f in chunk.fixes] == [(1, engine.embeddings.word_embeddings["tsamemb"])]
        token_embedding = engine.text_encoder.transformer.text_model.embeddings.token_embedding
        with torch.inference_mode():
            engine.embeddings.fixes = [chunk.fixes]
            rows = token_embedding(torch.tensor([chunk.tokens]))
        torch.testing.assert_close(rows[0, 2:4], vec)  # written after the fix's offset (BOS comes first)
        assert engine.embeddings.fixes is None  # taken once per forward
    finally:
        engine.embeddings.ids_lookup.clear()
        engine.embeddings.word_embeddings.clear()


def test_clip_skip_reaches_the_engine(bare_forge: Any, forge_sd15_engine: Any, tiny_model: Any) -> None:
    shared.opts.CLIP_stop_at_last_layers = 2
    bare_forge.txt2img(**BASE)
    engine = forge_sd15_engine.text_processing_engine
    assert engine.clip_skip == 2
    ids = torch.tensor([engine.tokenize_line("a cat")[0][0].tokens])
    cond = forge_sd15_engine.get_learned_conditioning(["a cat"])
    with torch.no_grad():
        text = tiny_model.cond_stage_model.transformer
        expected = text.text_model.final_layer_norm(text(input_ids=ids, output_hidden_states=True).hidden_states[-2])
    torch.testing.assert_close(cond, expected)
    forge_sd15_engine.set_clip_skip(1)


def test_every_stand_in_file_names_the_forge_file_it_mirrors() -> None:
    root = Path(__file__).resolve().parents[1] / "forge_host"
    for path in root.rglob("*.py"):
        doc = path.read_text().split('"""')[1] if '"""' in path.read_text() else ""
        if path.name == "__init__.py":
            continue
        assert "Mirrors" in doc or "Stand-in only" in doc, path.relative_to(root)


def test_residual_adds_are_in_place_as_forges(forge_sd15_engine: Any, tiny_model: Any) -> None:
    """Forge's BasicTransformerBlock does `x += n` after each attention (backend/nn/unet.py): with the weights made
    usable for autograd, a backward through the UNet still fails, on the in-place add."""
    from lib_align.autograd import autograd_usable

    unet = forge_sd15_engine.forge_objects.unet.model.diffusion_model
    z = torch.randn(1, 4, 8, 8, requires_grad=True)
    context = torch.randn(1, 77, 64)
    with autograd_usable(unet), torch.enable_grad():
        out = unet(z, torch.tensor([500.0]), context=context, transformer_options={})
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            torch.autograd.grad(out.sum(), [z])
