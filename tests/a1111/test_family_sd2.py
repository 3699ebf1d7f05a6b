"""SD 2.x parts: T from open_clip's text tower, the tiny SD2 model, the stand-in host's open_clip wrappers.

Expected values come from outside the code under test: torch's own nn.MultiheadAttention (need_weights=True) for
the attention probabilities, ldm's real FrozenOpenCLIPEmbedder for which blocks feed the cond, open_clip's
SimpleTokenizer and transformers' CLIPTokenizer for ids and labels, open_clip's model_configs and
docs/model_profile.csv for the full-size towers, and the parameter count of SD 2's UNet.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "host"))

import sd2_model  # noqa: E402 — the stand-in host (standin puts its `modules` first on sys.path)
import standin  # noqa: E402, F401
from modules import sd_hijack_clip, shared  # noqa: E402
from modules.sd_hijack_open_clip import FrozenOpenCLIPEmbedder2WithCustomWords  # noqa: E402

from lib_align.capture import cross_attention_layers  # noqa: E402
from lib_align.openclip_text import openclip_chunk_targets, openclip_self_attention, openclip_token_labels  # noqa: E402
from lib_align.text import token_labels  # noqa: E402
from standalone.models import _package_dir, clip_tokenizer, import_k_diffusion  # noqa: E402
from standalone.openclip import openclip_text_preset, openclip_tokenizer  # noqa: E402
from standalone.sd2 import OpenCLIPTextEncoder, tiny_sd2, tokenize_chunks  # noqa: E402

PROMPT = "a black car and a white clock"
# The CLIP BPE ids of PROMPT (identical in open_clip's SimpleTokenizer and transformers' CLIPTokenizer; checked below).
PROMPT_IDS = [320, 1449, 1615, 537, 320, 1579, 6716]


@pytest.fixture(scope="module")
def sd2():
    return tiny_sd2(seed=0)


@pytest.fixture(scope="module")
def ids():
    rows = [[49406, *PROMPT_IDS, 49407], [49406, 1449, 1615, 49407]]
    return torch.tensor([r + [0] * (77 - len(r)) for r in rows])


def _torch_weights(encoder, ids: torch.Tensor) -> torch.Tensor:
    """Run ldm's own encode_with_transformer; at each block's attention call also ask torch's nn.MultiheadAttention
    for its weights (need_weights=True, average_attn_weights=False) on the same input, recording [n, heads, 77, 77]
    per block. The block still returns open_clip's own need_weights=False output, so every later input is the one
    the real run sees (the two torch paths differ in the last bits)."""
    records = []

    def recording(block):
        original = type(block).attention.__get__(block)

        def attention(q_x, k_x=None, v_x=None, attn_mask=None):
            _, weights = block.attn(q_x, q_x, q_x, need_weights=True, average_attn_weights=False,
                                    attn_mask=attn_mask.to(q_x.dtype))
            records.append(weights)
            return original(q_x, k_x, v_x, attn_mask)

        return attention

    blocks = list(encoder.model.transformer.resblocks)
    for block in blocks:
        block.attention = recording(block)
    try:
        with torch.no_grad():
            encoder.encode_with_transformer(ids)
    finally:
        for block in blocks:
            del block.attention
    return torch.stack(records, dim=1)


def test_self_attention_matches_torch_multihead_attention(sd2, ids):
    encoder = sd2.cond_stage_model
    expected = _torch_weights(encoder, ids)  # ldm stops after len - layer_idx blocks: the penultimate layer
    got = openclip_self_attention(encoder.model, ids, layers=encoder.layers_in_cond)
    assert got.shape == (2, 3, 4, 77, 77) == expected.shape
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)
    assert (got.triu(1) == 0).all()  # causal


def test_fewer_layers_are_the_first_blocks_and_bounds_are_checked(sd2, ids):
    tower = sd2.cond_stage_model.model
    full = openclip_self_attention(tower, ids, layers=4)
    assert torch.equal(openclip_self_attention(tower, ids, layers=2), full[:, :2])
    for bad in (0, 5):
        with pytest.raises(ValueError):
            openclip_self_attention(tower, ids, layers=bad)


def test_batch_first_attention_is_read_in_its_own_layout(ids):
    """Later open_clip releases build nn.MultiheadAttention(batch_first=True) and run the tower [N, L, D]."""
    tower = openclip_text_preset("tiny-H", seed=3)
    for block in tower.transformer.resblocks:
        old = block.attn
        block.attn = torch.nn.MultiheadAttention(old.embed_dim, old.num_heads, batch_first=True)
        block.attn.load_state_dict(old.state_dict())
    expected = []
    with torch.no_grad():
        x = tower.token_embedding(ids) + tower.positional_embedding
        for block in tower.transformer.resblocks:
            h = block.ln_1(x)
            expected.append(block.attn(h, h, h, need_weights=True, average_attn_weights=False,
                                       attn_mask=tower.attn_mask)[1])
            x = block(x, attn_mask=tower.attn_mask)
    got = openclip_self_attention(tower, ids, layers=4)
    assert torch.allclose(got, torch.stack(expected, dim=1), atol=1e-6, rtol=0)


def test_capture_changes_nothing_and_leaves_no_hooks(sd2, ids):
    encoder = sd2.cond_stage_model
    modules = [encoder.model.token_embedding] + [b.attn for b in encoder.model.transformer.resblocks]
    hooks_before = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in modules]
    with torch.no_grad():
        before = encoder.encode_with_transformer(ids)
    openclip_self_attention(encoder.model, ids, layers=3, overrides=[[(2, torch.randn(2, 64))], []])
    with torch.no_grad():
        after = encoder.encode_with_transformer(ids)
    assert torch.equal(before, after)
    assert [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in modules] == hooks_before


def test_overrides_equal_the_same_vectors_given_as_token_rows(sd2, ids):
    """Textual-inversion vectors placed after `offset` give the attention of a tower whose vocabulary holds those
    vectors at fresh ids written at those positions."""
    tower = sd2.cond_stage_model.model
    vectors = torch.randn(2, 64, generator=torch.Generator().manual_seed(1)) * 0.02
    got = openclip_self_attention(tower, ids[:1], layers=3, overrides=[[(2, vectors)]])
    twin = copy.deepcopy(tower)
    with torch.no_grad():
        twin.token_embedding.weight[100:102] = vectors
    marked = ids[:1].clone()
    marked[0, 3:5] = torch.tensor([100, 101])
    assert torch.allclose(got, openclip_self_attention(twin, marked, layers=3), atol=1e-6, rtol=0)


def test_penultimate_layer_count_is_what_ldm_runs(sd2, ids):
    """SD2 configs set layer "penultimate" (v2-inference.yaml:67, v2-inference-v.yaml:68 at stablediffusion
    cf1d67a); ldm maps it to layer_idx 1 (ldm/modules/encoders/modules.py:201-202) and stops after
    len(resblocks) - layer_idx blocks (:227). Count the blocks ldm's code actually runs."""
    encoder = sd2.cond_stage_model
    assert type(encoder).__mro__[1].__module__ == "ldm.modules.encoders.modules"
    assert encoder.layer == "penultimate" and encoder.layer_idx == 1
    calls = []
    handles = [b.register_forward_pre_hook(lambda *_: calls.append(1)) for b in encoder.model.transformer.resblocks]
    try:
        with torch.no_grad():
            encoder.encode_with_transformer(ids)
    finally:
        for h in handles:
            h.remove()
    assert encoder.layers_in_cond == len(calls) == 3  # 4 blocks in tiny-H, the last one unused
    assert all(not p.requires_grad for p in encoder.parameters())  # freeze=True ran inside ldm's __init__


def test_tokenizer_ids_and_labels_from_two_independent_tokenizers(ids):
    simple = openclip_tokenizer()
    assert simple.encode(PROMPT) == PROMPT_IDS
    assert clip_tokenizer()(PROMPT, add_special_tokens=False)["input_ids"] == PROMPT_IDS  # transformers' BPE
    chunks, words = tokenize_chunks(simple, PROMPT)
    assert torch.equal(chunks, ids[:1])
    expected_labels = token_labels(clip_tokenizer(), ids[0].tolist())
    assert expected_labels == ["a</w>", "black</w>", "car</w>", "and</w>", "a</w>", "white</w>", "clock</w>"]
    assert openclip_token_labels(simple, ids[0].tolist()) == expected_labels == words[0]
    assert openclip_token_labels(simple.decoder, ids[0].tolist(), named=[(1, 2, "emb")])[1:3] == ["emb", "emb·2"]
    two, _ = tokenize_chunks(simple, "a car BREAK a clock")
    assert two[:, :4].tolist() == [[49406, 320, 1615, 49407], [49406, 320, 6716, 49407]]


def test_stand_in_wrapper_feeds_the_ids_the_host_would(sd2, ids, monkeypatch):
    """A1111's open_clip wrapper: BOS, the SimpleTokenizer ids, EOS, then id_pad 0 (sd_hijack_open_clip.py:15-17,
    sd_hijack_clip.py:264-267); Clip skip is not applied for SD2 (sd_hijack_open_clip.py:26-30)."""
    host = sd2_model.HostModelSD2(sd2)
    assert (host.is_sd2, host.is_sd1, host.is_sdxl) == (True, False, False)
    fed = []
    handle = sd2.cond_stage_model.model.token_embedding.register_forward_pre_hook(lambda _m, a: fed.append(a[0]))
    try:
        with torch.no_grad():
            cond = host.get_learned_conditioning([PROMPT])
            monkeypatch.setattr(shared.opts, "CLIP_stop_at_last_layers", 2)
            skipped = host.get_learned_conditioning([PROMPT])
    finally:
        handle.remove()
    assert torch.equal(fed[0], ids[:1])
    assert torch.equal(cond, skipped)
    chunks, _ = tokenize_chunks(openclip_tokenizer(), PROMPT)
    with torch.no_grad():
        assert torch.allclose(cond, sd2.cond_stage_model.encode_chunks(chunks, clip_skip=2), atol=1e-6, rtol=0)


def test_bigg_wrapper_returns_the_configured_layer_with_pooled_and_places_clip_g_vectors():
    """FrozenOpenCLIPEmbedder2WithCustomWords (sd_hijack_open_clip.py:56-64): d[wrapped.layer] with .pooled; its
    EmbeddingsWithFixes reads the "clip_g" tensor of an SDXL embedding (sd_hijack.py:223, 359)."""
    tower = openclip_text_preset("tiny-bigG", seed=2)
    seen = []

    class Embedder2:  # the slice of sgm's FrozenOpenCLIPEmbedder2 the wrapper reads
        model, layer, return_pooled = tower, "penultimate", True

        def encode_with_transformer(self, tokens):
            x = tower.token_embedding(tokens)
            seen.append(x)
            return {"penultimate": x * 2, "last": x * 3, "pooled": x[:, 0] * 4}

    hijack = sd_hijack_clip.Hijack()
    vec = {"clip_l": torch.zeros(1, 12), "clip_g": torch.full((1, 80), 0.5)}
    hijack.embedding_db.register([1615], sd_hijack_clip.Embedding(vec, "thing"))  # "car" -> embedding
    wrapper = FrozenOpenCLIPEmbedder2WithCustomWords(Embedder2(), hijack)
    with torch.no_grad():
        z, pooled = wrapper([PROMPT])
    assert torch.equal(z, seen[0] * 2) and torch.equal(pooled, seen[0][:, 0] * 4)
    assert torch.equal(seen[0][0, 3], vec["clip_g"][0])  # after BOS, "a", "black": position 3


def test_tiny_sd2_unet_runs_at_64x64_with_sd2_layout(sd2):
    layers = cross_attention_layers(sd2.unet)
    assert sum(layer.ds == 4 for layer in layers) == 5  # the paper's 16x16 layers at 512^2, as in SD1
    attn2 = layers[0].module
    assert attn2.to_k.in_features == 64  # the text tower's width is the context width
    block = sd2.unet.input_blocks[1][1]
    assert isinstance(block.proj_in, torch.nn.Linear)  # use_linear_in_transformer (v2-inference.yaml:34)
    chunks, _ = sd2.tokenize(PROMPT)
    with torch.no_grad():
        cond = sd2.cond_stage_model.encode_chunks(chunks)
        out = sd2.apply_model(torch.randn(1, 4, 64, 64), torch.tensor([500]), {"c_crossattn": [cond]})
    assert cond.shape == (1, 77, 64) and out.shape == (1, 4, 64, 64) and torch.isfinite(out).all()
    targets = sd2.cond_stage_model.chunk_targets(chunks, power=3.0)
    assert targets[0].length == 7 and torch.allclose(targets[0].target.sum(-1), torch.ones(7), atol=1e-5)


def test_v_model_runs_under_k_diffusion_v_denoiser():
    v = tiny_sd2(seed=1, v=True)
    assert v.parameterization == "v"
    denoiser = import_k_diffusion().external.CompVisVDenoiser(v)
    chunks, _ = v.tokenize(PROMPT)
    with torch.no_grad():
        cond = v.cond_stage_model.encode_chunks(chunks)
        out = denoiser(torch.randn(1, 4, 16, 16), torch.tensor([5.0]), cond=cond)
    assert out.shape == (1, 4, 16, 16) and torch.isfinite(out).all()


def test_openclip_chunk_targets_offsets(sd2):
    chunks, words = sd2.tokenize("a car BREAK a clock")
    targets = openclip_chunk_targets(sd2.cond_stage_model.model, chunks, 3.0, layers=3, tokens=words)
    assert [t.offset for t in targets] == [0, 77]
    assert [t.tokens for t in targets] == [["a</w>", "car</w>"], ["a</w>", "clock</w>"]]
    assert [t.length for t in targets] == [2, 2]


@pytest.mark.parametrize(("preset", "text_mparams"), [("ViT-H-14", 354.03), ("ViT-bigG-14", 694.66)])
def test_full_size_towers_match_open_clip_configs(preset, text_mparams):
    """Shapes from open_clip's model_configs/<name>.json; parameter counts from open_clip's docs/model_profile.csv
    (text_mparams). Built on the meta device: no memory, no time."""
    tower = openclip_text_preset(preset, device="meta")
    cfg = json.loads((_package_dir("open_clip") / "model_configs" / f"{preset}.json").read_text())["text_cfg"]
    block = tower.transformer.resblocks[0]
    assert (len(tower.transformer.resblocks), block.attn.embed_dim, block.attn.num_heads) == (
        cfg["layers"], cfg["width"], cfg["heads"])
    assert round(sum(p.numel() for p in tower.parameters()) / 1e6, 2) == text_mparams


def test_full_size_sd2_unet_has_sd2s_parameter_count():
    """865,910,724: the UNet of SD 2.0/2.1 (same for 512-base and 768-v), built on the meta device."""
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    from standalone.sd2 import full_size_sd2_config

    with torch.device("meta"):
        unet = UNetModel(**full_size_sd2_config().unet)
    assert sum(p.numel() for p in unet.parameters()) == 865_910_724


def test_encoder_is_ldms_class_and_no_stand_in_stays_behind(sd2):
    assert issubclass(OpenCLIPTextEncoder, sys.modules["ldm.modules.encoders.modules"].FrozenOpenCLIPEmbedder)
    if "open_clip.factory" not in sys.modules:  # the bare package: the download factory was only lent
        assert not hasattr(sys.modules["open_clip"], "create_model_and_transforms")
    for name in ("torchvision", "ftfy"):  # the import-time stand-ins are gone unless the real package is installed
        assert name not in sys.modules or importlib.util.find_spec(name) is not None
