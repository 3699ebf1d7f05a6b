"""T: the text self-attention target."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lib_align import text_target
from lib_align.text import CHUNK_LENGTH, EOS_ID, chunk_targets, encoder_self_attention, eos_index, tokenize_chunks


def hand_target(attn: np.ndarray, eos: int, power: float) -> np.ndarray:
    """T by loops: mean over heads and layers, keep tokens 1..eos-1, power, divide each row by its sum."""
    layers, heads = attn.shape[:2]
    n = eos - 1
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            total = 0.0
            for layer in range(layers):
                for h in range(heads):
                    total += attn[layer, h, i + 1, j + 1]
            out[i, j] = (total / (layers * heads)) ** power
    return out / (out.sum(axis=1, keepdims=True) + 1e-7)


@pytest.fixture(scope="module")
def encoder(tiny_model):
    return tiny_model.cond_stage_model


def test_target_equals_hand_computation_from_recorded_attention(encoder):
    chunks, words = tokenize_chunks(encoder.tokenizer, "a black car and a white clock")
    assert [w.replace("</w>", "") for w in words[0]] == ["a", "black", "car", "and", "a", "white", "clock"]
    attn = encoder_self_attention(encoder.transformer, chunks)[0]
    layers = encoder.transformer.config.num_hidden_layers
    assert attn.shape == (layers, encoder.transformer.config.num_attention_heads, 77, 77)
    eos = eos_index(chunks[0])
    assert eos == 8 and int(chunks[0, eos]) == EOS_ID
    t = text_target(attn, eos, power=3.0)
    np.testing.assert_allclose(t.numpy(), hand_target(attn.numpy().astype(np.float64), eos, 3.0), atol=1e-5)


def test_target_rows_sum_to_one_lower_triangular_and_first_row_trivial(encoder):
    chunks, _ = tokenize_chunks(encoder.tokenizer, "a red cube on top of a blue sphere")
    t = text_target(encoder_self_attention(encoder.transformer, chunks)[0], eos_index(chunks[0]), 4.0)
    assert t.shape == (9, 9)
    # Not exactly 1: the official code's +1e-7 in the denominator matters when powered rows sum to ~1e-3.
    torch.testing.assert_close(t.sum(-1), torch.ones(9), atol=1e-3, rtol=0)
    assert torch.equal(t, torch.tril(t))  # the CLIP text encoder is causal
    assert float(t[0, 0]) == pytest.approx(1.0, abs=1e-4)


def test_bos_eos_and_padding_are_excluded():
    torch.manual_seed(1)
    attn = torch.rand(3, 2, 77, 77).softmax(-1)
    eos = 6
    base = text_target(attn, eos, 4.0)
    assert base.shape == (5, 5)
    poked = attn.clone()
    poked[..., 0, :] = 9.0  # BOS row and column
    poked[..., :, 0] = 9.0
    poked[..., eos:, :] = 9.0  # EOS and padding rows and columns
    poked[..., :, eos:] = 9.0
    torch.testing.assert_close(text_target(poked, eos, 4.0), base)
    # Head-averaged input gives the same target.
    torch.testing.assert_close(text_target(attn.mean(1), eos, 4.0), base)


def test_single_token_and_empty_prompts_give_trivial_targets(encoder):
    for prompt, length in (("car", 1), ("", 0)):
        chunks, _ = tokenize_chunks(encoder.tokenizer, prompt)
        t = text_target(encoder_self_attention(encoder.transformer, chunks)[0], eos_index(chunks[0]), 4.0)
        assert t.shape == (length, length)
    assert float(t.sum()) == 0.0


def test_clip_skip_keeps_only_the_layers_that_feed_the_cond(encoder):
    chunks, _ = tokenize_chunks(encoder.tokenizer, "a black car")
    all_layers = encoder_self_attention(encoder.transformer, chunks, clip_skip=1)
    skipped = encoder_self_attention(encoder.transformer, chunks, clip_skip=2)
    assert skipped.shape[1] == all_layers.shape[1] - 1
    torch.testing.assert_close(skipped, all_layers[:, :-1])
    t1 = chunk_targets(encoder.transformer, chunks, 4.0, clip_skip=1)[0].target
    t2 = chunk_targets(encoder.transformer, chunks, 4.0, clip_skip=2)[0].target
    assert not torch.allclose(t1, t2)


def test_long_prompts_and_break_give_independent_targets_per_chunk(encoder):
    words = " ".join(["red car"] * 50)  # 100 tokens -> chunks of 75 and 25
    chunks, tokens = tokenize_chunks(encoder.tokenizer, words)
    assert chunks.shape == (2, CHUNK_LENGTH)
    targets = chunk_targets(encoder.transformer, chunks, 4.0, tokens=tokens)
    assert [t.length for t in targets] == [75, 25]
    assert [t.offset for t in targets] == [0, 77]
    alone = chunk_targets(encoder.transformer, chunks[1:], 4.0)[0].target
    torch.testing.assert_close(targets[1].target, alone)  # chunk 2 does not see chunk 1

    chunks, tokens = tokenize_chunks(encoder.tokenizer, "a black car BREAK a white clock")
    assert chunks.shape[0] == 2
    targets = chunk_targets(encoder.transformer, chunks, 4.0, tokens=tokens)
    assert [t.length for t in targets] == [3, 3]


def test_textual_inversion_vectors_land_on_their_placeholder_positions(encoder):
    chunks, _ = tokenize_chunks(encoder.tokenizer, "a black car on a road")
    model = encoder.transformer
    base = chunk_targets(model, chunks, 4.0)[0].target
    table = model.get_input_embeddings().weight
    # Offsets follow A1111's fixes: vectors go after position `offset` (position 0 is BOS).
    same = [[(1, table[chunks[0, 2:4]].detach().clone())]]
    torch.testing.assert_close(chunk_targets(model, chunks, 4.0, overrides=same)[0].target, base)
    torch.manual_seed(0)
    other = [[(1, torch.randn(2, table.shape[1]))]]
    changed = chunk_targets(model, chunks, 4.0, overrides=other)[0].target
    # Causal encoder: the token before the placeholders is untouched, the placeholders and later tokens change.
    torch.testing.assert_close(changed[0], base[0])
    assert not torch.allclose(changed[1:], base[1:])
    # The hook is gone afterwards.
    torch.testing.assert_close(chunk_targets(model, chunks, 4.0)[0].target, base)


def test_bad_attention_shape_is_a_clear_error():
    with pytest.raises(ValueError, match="expects"):
        text_target(torch.rand(77, 77), 5, 4.0)


# -- T without transformers' attention output (SDPA in transformers 4.46, no fallback in 5.x) ------------------------

ROOT = Path(__file__).resolve().parents[2]
FORGE_TRANSFORMERS = Path(sys.prefix) / "transformers-4.46.1"  # .ci/run installs Forge's pin there (--target)


def test_t_does_not_need_transformers_to_return_probabilities(encoder, monkeypatch):
    """An attention that returns no probabilities (what SDPA does, and 5.x's only answer): T is unchanged."""
    from transformers.models.clip import modeling_clip

    chunks, _ = tokenize_chunks(encoder.tokenizer, "a black car and a white clock")
    expected = encoder_self_attention(encoder.transformer, chunks)
    original = modeling_clip.CLIPAttention.forward

    def without_probabilities(self, *args, **kwargs):
        output = original(self, *args, **kwargs)
        return (output[0], None, *output[2:])

    monkeypatch.setattr(modeling_clip.CLIPAttention, "forward", without_probabilities)
    assert torch.equal(encoder_self_attention(encoder.transformer, chunks), expected)


@pytest.mark.slow
@pytest.mark.parametrize("version", ["pinned (A1111)", "4.46.1 (Forge)"])
def test_t_equals_transformers_own_eager_probabilities(version):
    """tools/check_transformers_t.py: difference 0 against `output_attentions` of the eager model; on the model
    transformers builds by default (SDPA in 4.46) within float noise, and nothing logged."""
    env = dict(os.environ)
    if version.startswith("4.46.1"):
        if not FORGE_TRANSFORMERS.is_dir():
            if os.environ.get("CI"):
                pytest.fail(f"{FORGE_TRANSFORMERS} is missing: .ci/run installs it")
            pytest.skip(f"Forge's transformers is not installed at {FORGE_TRANSFORMERS} (bash .ci/run does it)")
        env["PYTHONPATH"] = str(FORGE_TRANSFORMERS)
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "check_transformers_t.py")], env=env,
                         capture_output=True, text=True, timeout=300)
    outcome = json.loads(run.stdout.strip().splitlines()[-1])
    assert outcome["transformers"] == ("4.46.1" if version.startswith("4.46.1") else "4.30.2")
    assert outcome["eager_max_diff"] == 0.0 and outcome["default_max_diff"] < 1e-6, outcome
    assert outcome["warnings"] == [] and run.returncode == 0, outcome
