"""SDXL family components: the sgm-shaped UNet (full size on the meta device, tiny on CPU), the two-encoder
conditioner, and the stand-in host running an SDXL checkpoint's txt2img job through the CFG denoiser.

Expected values come from outside the code under test:
- Stability-AI/generative-models configs/inference/sd_xl_base.yaml: model_channels 320, channel_mult [1, 2, 4],
  attention_resolutions [4, 2], num_res_blocks 2, transformer_depth [1, 2, 10], num_head_channels 64,
  context_dim 2048, adm_in_channels 2816; CLIP-L layer "hidden" layer_idx 11; bigG layer "penultimate" with the
  pooled output; three ConcatTimestepEmbedderND of outdim 256 (original_size, crop_coords, target_size).
- sgm/modules/diffusionmodules/openaimodel.py UNetModel: a SpatialTransformer after each ResBlock of a level whose
  ds is in attention_resolutions, input blocks [conv, level 0: 1 2 (3 = Downsample), level 1: 4 5 (6 = Downsample),
  level 2: 7 8], middle [ResBlock, SpatialTransformer(depth[-1]), ResBlock], output blocks 3 per level from the
  deepest (0 1 2 at ds 4, 3 4 5 at ds 2, 6 7 8 at ds 1), an Upsample at the end of 2 and 5.
  Hence 2*2 + 2*10 + 10 + 3*10 + 3*2 = 70 cross-attention layers.
- The SDXL paper (Podell et al. 2023, Table 1): UNet of 2.6B parameters; OpenCLIP ViT-bigG + CLIP ViT-L context
  1280 + 768 = 2048.
- A1111 1.10.1 modules/sd_models_xl.py, sd_samplers_cfg_denoiser.py, sd_hijack_clip.py (see tests/host/sdxl_model.py).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "host"))

import standin  # noqa: E402
from modules import processing, prompt_parser, script_callbacks, shared  # noqa: E402
from modules.script_callbacks import ScriptCallback  # noqa: E402
from sdxl_model import HostModelSDXL  # noqa: E402

from lib_align.capture import cross_attention_layers  # noqa: E402
from lib_align.text import tokenize_chunks  # noqa: E402
from standalone.sdxl import (  # noqa: E402
    CLIPEmbedder,
    Conditioner,
    OpenCLIPEmbedder2,
    SizeEmbedder,
    full_size_sdxl_unet,
    openclip_tokens,
    tiny_sdxl,
)

# (block, ds, transformer depth) of every SpatialTransformer in SDXL base, in execution order (see module doc).
SDXL_TRANSFORMERS = [
    ("input_blocks.4.1", 2, 2), ("input_blocks.5.1", 2, 2),
    ("input_blocks.7.1", 4, 10), ("input_blocks.8.1", 4, 10),
    ("middle_block.1", 4, 10),
    ("output_blocks.0.1", 4, 10), ("output_blocks.1.1", 4, 10), ("output_blocks.2.1", 4, 10),
    ("output_blocks.3.1", 2, 2), ("output_blocks.4.1", 2, 2), ("output_blocks.5.1", 2, 2),
]


@pytest.fixture(scope="module")
def sdxl() -> Any:
    return tiny_sdxl(seed=0)


@pytest.fixture(scope="module")
def full_unet() -> torch.nn.Module:
    return full_size_sdxl_unet()  # meta device: shapes only


def sinusoid(value: float, dim: int) -> torch.Tensor:
    """sgm's timestep_embedding of one number, written out: cos then sin of value * 10000^(-i/half)."""
    half = dim // 2
    freqs = [math.exp(-math.log(10000) * i / half) for i in range(half)]
    return torch.tensor([math.cos(value * f) for f in freqs] + [math.sin(value * f) for f in freqs])


# ---------------------------------------------------------------------------------------------------------------
# the full-size UNet, on meta


def test_full_size_unet_has_sdxl_base_cross_attention_census(full_unet: torch.nn.Module) -> None:
    layers = cross_attention_layers(full_unet)
    expected = [(f"{block}.transformer_blocks.{k}.attn2", ds)
                for block, ds, depth in SDXL_TRANSFORMERS for k in range(depth)]
    assert len(layers) == 70
    assert [(a.name, a.ds) for a in layers] == expected
    assert sum(a.ds == 4 for a in layers) == 60 and sum(a.ds == 2 for a in layers) == 10
    # Same objects as the module names say (hooks are placed on these).
    named = dict(full_unet.named_modules())
    assert all(named[a.name] is a.module for a in layers)


def test_full_size_unet_widths_match_sd_xl_base(full_unet: torch.nn.Module) -> None:
    named = dict(full_unet.named_modules())
    assert all(p.device.type == "meta" for p in full_unet.parameters())
    for block, ds, _ in SDXL_TRANSFORMERS:
        attn = named[f"{block}.transformer_blocks.0.attn2"]
        channels = {2: 640, 4: 1280}[ds]  # 320 * channel_mult[level]
        assert attn.heads == channels // 64  # num_head_channels 64
        assert (attn.to_q.in_features, attn.to_q.out_features) == (channels, channels)
        assert attn.to_k.in_features == 2048  # context_dim
        assert isinstance(named[f"{block}.proj_in"], torch.nn.Linear)  # use_linear_in_transformer
    # label_emb: sgm's "sequential" Sequential(Sequential(linear(2816, 1280), SiLU, linear(1280, 1280)))
    assert tuple(named["label_emb.0.0"].weight.shape) == (1280, 2816)
    assert tuple(named["label_emb.0.2"].weight.shape) == (1280, 1280)
    assert full_unet.num_classes == "sequential"
    # No attention at ds 1: blocks 1, 2 and 6-8 hold only ResBlocks.
    for block in ("input_blocks.1", "input_blocks.2", "output_blocks.6", "output_blocks.7", "output_blocks.8"):
        assert not any(n.startswith(block + ".") and n.endswith("attn2") for n in named)
    params = sum(p.numel() for p in full_unet.parameters())
    assert round(params / 1e9, 1) == 2.6  # the SDXL paper, Table 1


def test_full_size_unet_state_dict_keys_are_sgm_checkpoint_keys(full_unet: torch.nn.Module) -> None:
    keys = set(full_unet.state_dict().keys())
    # Keys an SDXL base checkpoint holds under model.diffusion_model.* (sgm module names).
    for key in ("input_blocks.0.0.weight", "input_blocks.3.0.op.weight", "input_blocks.6.0.op.weight",
                "input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight",
                "input_blocks.8.1.transformer_blocks.9.attn2.to_out.0.weight",
                "middle_block.1.transformer_blocks.9.ff.net.0.proj.weight",
                "output_blocks.2.2.conv.weight", "output_blocks.5.2.conv.weight",
                "output_blocks.5.1.transformer_blocks.1.norm3.weight",
                "label_emb.0.0.weight", "label_emb.0.2.bias", "time_embed.0.weight", "out.2.weight"):
        assert key in keys, key
    assert "input_blocks.4.1.transformer_blocks.2.attn2.to_k.weight" not in keys  # depth 2 at ds 2
    assert "middle_block.1.transformer_blocks.10.attn2.to_k.weight" not in keys  # depth 10 in the middle


# ---------------------------------------------------------------------------------------------------------------
# the tiny model


def test_tiny_sdxl_has_the_sdxl_layout(sdxl: Any) -> None:
    layers = cross_attention_layers(sdxl.unet)
    # tiny_config: transformer_depth [0, 1, 2] -> 1 per block at ds 2, 2 per block at ds 4 and in the middle.
    assert len(layers) == 2 * 1 + 2 * 2 + 2 + 3 * 2 + 3 * 1
    assert {a.name.split(".transformer_blocks")[0] for a in layers} == {b for b, _, _ in SDXL_TRANSFORMERS}
    assert {a.ds for a in layers} == {2, 4}


def test_tiny_forward_reads_crossattn_and_vector_and_ignores_c_concat(sdxl: Any) -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 4, 6, 10, generator=g)  # not a multiple of 4: the skip sizes round as in A1111
    t = torch.tensor([900.0])
    ctx_dim, adm = sdxl.config.unet["context_dim"], sdxl.config.unet["adm_in_channels"]
    cond = {"crossattn": torch.randn(1, 154, ctx_dim, generator=g), "vector": torch.randn(1, adm, generator=g)}
    with torch.no_grad():
        out = sdxl.apply_model(x, t, cond)
        with_concat = sdxl.apply_model(x, t, {**cond, "c_concat": [torch.zeros(1, 5, 1, 1)]})
        other_vector = sdxl.apply_model(x, t, {**cond, "vector": cond["vector"] + 1})
        other_context = sdxl.apply_model(x, t, {**cond, "crossattn": cond["crossattn"].flip(1)})
    assert out.shape == x.shape and bool(torch.isfinite(out).all())
    assert torch.equal(out, with_concat)  # A1111's c_concat is not read by sgm's OpenAIWrapper
    assert not torch.allclose(out, other_vector)
    assert not torch.allclose(out, other_context)
    with pytest.raises(TypeError):
        sdxl.apply_model(x, t, cond["crossattn"])


def test_tiny_conditioner_parts(sdxl: Any) -> None:
    chunks, _ = tokenize_chunks(sdxl.conditioner.tokenizer, "a black car and a white clock")
    crossattn, vector = sdxl.encode_chunks(chunks, size=(96, 128), crop=(0, 0))
    clip_l, clip_g = sdxl.conditioner.clip_l, sdxl.conditioner.clip_g
    with torch.no_grad():
        hidden = clip_l.transformer(input_ids=chunks, output_hidden_states=True).hidden_states
        tokens_g = openclip_tokens(chunks)
        pooled_open_clip = clip_g.model(tokens_g)  # open_clip's own TextTransformer.forward: the pooled projection
    width_l = sdxl.config.clip_l["hidden_size"]
    # CLIP-L: hidden_states[layer_idx], the penultimate layer, without the final layer norm.
    assert sdxl.conditioner.clip_l.layer_idx == len(hidden) - 2
    torch.testing.assert_close(crossattn[0, :, :width_l], hidden[-2][0])
    # bigG: padded with 0 after EOS as A1111 sends it; the pooled vector is open_clip's own pooled output.
    eos = int((chunks[0] == 49407).nonzero()[0])
    assert tokens_g[0, eos] == 49407 and not tokens_g[0, eos + 1:].any()
    pooled_dim = pooled_open_clip.shape[-1]
    torch.testing.assert_close(vector[0, :pooled_dim], pooled_open_clip[0])
    # Size embeddings: (height, width), (top, left), (height, width), each number sgm's sinusoid of outdim.
    d = sdxl.config.size_embed_dim
    expected = torch.cat([sinusoid(v, d) for v in (96, 128, 0, 0, 96, 128)])
    torch.testing.assert_close(vector[0, pooled_dim:], expected, atol=1e-5, rtol=1e-5)
    # The empty negative prompt: both text parts zero, the sizes kept.
    zero_c, zero_v = sdxl.encode_chunks(chunks, size=(96, 128), zero_text=True)
    assert not zero_c.any() and not zero_v[0, :pooled_dim].any()
    torch.testing.assert_close(zero_v[0, pooled_dim:], vector[0, pooled_dim:])


def test_two_chunk_prompt_pools_the_first_chunk(sdxl: Any) -> None:
    long_prompt = " ".join(["a red cube"] * 40)  # 120 tokens: two chunks
    chunks, _ = tokenize_chunks(sdxl.conditioner.tokenizer, long_prompt)
    assert len(chunks) == 2
    crossattn, vector = sdxl.encode_chunks(chunks)
    first_c, first_v = sdxl.encode_chunks(chunks[:1])
    assert crossattn.shape[1] == 154
    torch.testing.assert_close(crossattn[:, :77], first_c)
    torch.testing.assert_close(vector, first_v)  # A1111: `zs[0].pooled`


def test_full_size_conditioner_shapes_on_meta(monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers.models.clip.modeling_clip as modeling_clip
    from transformers import CLIPTextConfig, CLIPTextModel

    from standalone.models import clip_tokenizer
    from standalone.openclip import openclip_text_preset

    # transformers 4.30 fills its causal mask from a scalar tensor's .item(), which meta tensors cannot give; the
    # mask's values do not matter for shapes.
    monkeypatch.setattr(modeling_clip, "_make_causal_mask", lambda shape, dtype, device, past_key_values_length=0:
                        torch.zeros(shape[0], 1, shape[1], shape[1], dtype=dtype, device=device))
    with torch.device("meta"):
        # openai/clip-vit-large-patch14's text config (the SD1 text encoder: 768 wide, 12 layers, 12 heads).
        clip_l = CLIPEmbedder(CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072,
                                                           num_hidden_layers=12, num_attention_heads=12)),
                              clip_tokenizer(), layer="hidden", layer_idx=11)
    clip_g = OpenCLIPEmbedder2(openclip_text_preset("ViT-bigG-14", device="meta"))  # width 1280, 32 layers
    conditioner = Conditioner([clip_l, clip_g, *(SizeEmbedder(256, k) for k in
                                                 ("original_size_as_tuple", "crop_coords_top_left",
                                                  "target_size_as_tuple"))])
    sizes = torch.tensor([[1024.0, 1024.0]], device="meta")
    out = conditioner({"txt": torch.zeros(1, 77, dtype=torch.long, device="meta"),
                       "original_size_as_tuple": sizes, "crop_coords_top_left": sizes, "target_size_as_tuple": sizes})
    assert tuple(out["crossattn"].shape) == (1, 77, 768 + 1280)  # context_dim 2048
    assert tuple(out["vector"].shape) == (1, 1280 + 3 * 2 * 256)  # adm_in_channels 2816


# ---------------------------------------------------------------------------------------------------------------
# the stand-in host with an SDXL checkpoint


@pytest.fixture
def bare_host() -> Iterator[None]:
    """No scripts and no cfg_denoiser callbacks (T-SAM refuses SDXL); shared.sd_model restored afterwards."""
    saved_model = shared.sd_model
    saved = list(script_callbacks.callback_map["callbacks_cfg_denoiser"])
    script_callbacks.callback_map["callbacks_cfg_denoiser"].clear()
    standin.reset_host_state()
    try:
        yield
    finally:
        script_callbacks.callback_map["callbacks_cfg_denoiser"][:] = saved
        shared.sd_model = saved_model
        standin.reset_host_state()


@pytest.fixture(scope="module")
def host_sdxl(sdxl: Any) -> HostModelSDXL:
    return HostModelSDXL(sdxl)


def run_job(model: Any, **fields: Any) -> tuple[Any, list[Any], list[dict[str, Any]]]:
    """One plain txt2img job; returns (Processed, the callback's params, what the UNet was called with)."""
    shared.sd_model = model
    params: list[Any] = []
    calls: list[dict[str, Any]] = []
    script_callbacks.callback_map["callbacks_cfg_denoiser"].append(ScriptCallback("test", params.append))

    def record(_module: Any, args: tuple, kwargs: dict[str, Any]) -> None:
        t = args[1] if len(args) > 1 else kwargs["timesteps"]  # ldm's wrapper passes t by position, sgm's by name
        named = {k: v.shape for k, v in kwargs.items() if torch.is_tensor(v) and k != "timesteps"}
        calls.append({"x": args[0].shape, "t": t.shape, **named})

    handle = model.model.diffusion_model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        p = processing.StableDiffusionProcessingTxt2Img(sd_model=model, **{"steps": 3, **fields})
        shared.state.begin("txt2img")
        try:
            res = processing.process_images(p)
        finally:
            p.close()
    finally:
        handle.remove()
        script_callbacks.callback_map["callbacks_cfg_denoiser"].clear()
    return res, params, calls


def assert_normal(res: Any, count: int, width: int, height: int) -> None:
    assert len(res.images) == res.index_of_first_image + count
    assert all(image.size == (width, height) for image in res.images[res.index_of_first_image:])
    assert res.samples is not None and bool(torch.isfinite(res.samples).all())


def test_host_sdxl_model_flags_and_learned_conditioning(host_sdxl: HostModelSDXL, bare_host: None) -> None:
    model = host_sdxl
    assert model.is_sdxl and not (model.is_sd1 or model.is_sd2) and model.cond_stage_model is model.conditioner
    assert model.model.conditioning_key == "crossattn" and model.parameterization == "eps"
    assert type(model.conditioner.embedders[0]).__name__ == "FrozenCLIPEmbedderForSDXLWithCustomWords"
    assert type(model.conditioner.embedders[1]).__name__ == "FrozenOpenCLIPEmbedder2WithCustomWords"
    sd = model.sd
    prompts = prompt_parser.SdConditioning(["a black car and a white clock"], width=128, height=96)
    empty = prompt_parser.SdConditioning([""], width=128, height=96, is_negative_prompt=True)
    blurry = prompt_parser.SdConditioning(["blurry"], is_negative_prompt=True)
    with torch.no_grad():  # as in process_images
        c, uc, neg = (model.get_learned_conditioning(batch) for batch in (prompts, empty, blurry))
    ctx, adm = sd.config.unet["context_dim"], sd.config.unet["adm_in_channels"]
    assert set(c) == {"crossattn", "vector"}
    assert tuple(c["crossattn"].shape) == (1, 77, ctx) and tuple(c["vector"].shape) == (1, adm)
    # The host's wrappers and the standalone encoder agree on a plain prompt (emphasis 1.0 everywhere).
    chunks, _ = tokenize_chunks(sd.conditioner.tokenizer, prompts[0])
    crossattn, vector = sd.encode_chunks(chunks, size=(96, 128))
    torch.testing.assert_close(c["crossattn"], crossattn)
    torch.testing.assert_close(c["vector"], vector)
    # An all-empty negative prompt: text parts zero (force_zero_embeddings=['txt']), sizes kept; a non-empty
    # negative prompt is encoded normally.
    pooled_dim = adm - 6 * sd.config.size_embed_dim
    assert not uc["crossattn"].any() and not uc["vector"][:, :pooled_dim].any()
    torch.testing.assert_close(uc["vector"][:, pooled_dim:], c["vector"][:, pooled_dim:])
    assert neg["crossattn"].any()
    # No size on the batch: 1024 x 1024, as sd_models_xl.get_learned_conditioning defaults.
    _, default_vector = sd.encode_chunks(tokenize_chunks(sd.conditioner.tokenizer, "blurry")[0], size=(1024, 1024))
    torch.testing.assert_close(neg["vector"], default_vector)


def test_host_runs_a_plain_sdxl_txt2img_job(host_sdxl: HostModelSDXL, bare_host: None) -> None:
    sd = host_sdxl.sd
    ctx, adm = sd.config.unet["context_dim"], sd.config.unet["adm_in_channels"]
    res, params, calls = run_job(host_sdxl, prompt="a black car and a white clock", width=64, height=64, seed=7)
    again, _, _ = run_job(host_sdxl, prompt="a black car and a white clock", width=64, height=64, seed=7)
    assert_normal(res, 1, 64, 64)
    assert torch.equal(res.samples, again.samples)  # deterministic
    # The cfg_denoiser callback sees the dict conds (prompt_parser.DictWithShape, .shape = crossattn's).
    assert len(params) == 3
    text_cond, text_uncond = params[0].text_cond, params[0].text_uncond
    assert isinstance(text_cond, dict) and set(text_cond) == {"crossattn", "vector"}
    assert tuple(text_cond["crossattn"].shape) == (1, 77, ctx) and tuple(text_cond["vector"].shape) == (1, adm)
    assert tuple(text_cond.shape) == (1, 77, ctx)
    assert isinstance(text_uncond, dict) and not text_uncond["crossattn"].any()  # empty negative prompt
    # One batched UNet call per step: cond + uncond rows, context from crossattn, y from vector.
    assert calls == [{"x": (2, 4, 8, 8), "t": (2,), "context": (2, 77, ctx), "y": (2, adm)}] * 3


def test_host_sdxl_and_prompt_with_a_longer_negative_prompt(host_sdxl: HostModelSDXL, bare_host: None) -> None:
    ctx = host_sdxl.sd.config.unet["context_dim"]
    long_negative = ", ".join(["blurry"] * 60)  # 120 tokens: two chunks, so cond and uncond are run separately
    res, params, calls = run_job(host_sdxl, prompt="a red cube AND a blue ball :0.5", negative_prompt=long_negative,
                                 width=64, height=64, steps=2, sampler_name="DDIM")
    assert_normal(res, 1, 64, 64)
    assert tuple(params[0].text_cond["crossattn"].shape) == (2, 77, ctx)  # two AND sub-prompts
    assert tuple(params[0].text_uncond["crossattn"].shape) == (1, 154, ctx)
    assert [c["context"] for c in calls[:2]] == [(2, 77, ctx), (1, 154, ctx)]


def test_host_sd1_job_is_unchanged(tiny_model: Any, bare_host: None) -> None:
    model = standin.HostModel(tiny_model)
    res, params, calls = run_job(model, prompt="a black car and a white clock", width=64, height=64, seed=7)
    again, _, _ = run_job(model, prompt="a black car and a white clock", width=64, height=64, seed=7)
    assert_normal(res, 1, 64, 64)
    assert torch.equal(res.samples, again.samples)
    assert torch.is_tensor(params[0].text_cond) and tuple(params[0].text_cond.shape) == (1, 77, 64)
    assert calls == [{"x": (2, 4, 8, 8), "t": (2,), "context": (2, 77, 64)}] * 3


def test_host_sdxl_hires_pass_conditions_on_the_upscaled_size(host_sdxl: HostModelSDXL, bare_host: None) -> None:
    sd = host_sdxl.sd
    d, adm = sd.config.size_embed_dim, sd.config.unet["adm_in_channels"]
    res, params, _ = run_job(host_sdxl, prompt="a red cube", width=64, height=64, steps=2, enable_hr=True,
                             hr_scale=1.5, denoising_strength=0.5)
    assert_normal(res, 1, 96, 96)
    first, hires = params[0], params[-1]
    assert tuple(first.x.shape[-2:]) == (8, 8) and tuple(hires.x.shape[-2:]) == (12, 12)
    # processing.calculate_hr_conds: SdConditioning(width=hr_upscale_to_x, height=hr_upscale_to_y)
    for p, size in ((first, 64), (hires, 96)):
        expected = torch.cat([sinusoid(v, d) for v in (size, size, 0, 0, size, size)])
        torch.testing.assert_close(p.text_cond["vector"][0, adm - 6 * d:], expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(p.text_uncond["vector"][0, adm - 6 * d:], expected, atol=1e-5, rtol=1e-5)


def test_capture_reads_tiny_sdxl_maps_at_both_levels(sdxl: Any) -> None:
    from lib_align.capture import CrossAttentionCapture

    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 4, 8, 8, generator=g)
    ctx_dim, adm = sdxl.config.unet["context_dim"], sdxl.config.unet["adm_in_channels"]
    cond = {"crossattn": torch.randn(1, 77, ctx_dim, generator=g), "vector": torch.randn(1, adm, generator=g)}
    # tiny_config depths [0, 1, 2]: ds 4 holds 2 + 2 + 2 (middle) + 3 * 2 layers, ds 2 holds 2 * 1 + 3 * 1.
    for level, count in ((4, 12), (2, 5)):
        with torch.no_grad(), CrossAttentionCapture(sdxl.unet, (8, 8), level=level, stop_early=True) as capture:
            maps = capture.run(lambda: sdxl.apply_model(x, torch.tensor([500.0]), cond))
        assert capture.layer_count == count
        assert tuple(maps.shape) == (1, 8 // level, 8 // level, 77)
        torch.testing.assert_close(maps.sum(-1), torch.ones(1, 8 // level, 8 // level))
