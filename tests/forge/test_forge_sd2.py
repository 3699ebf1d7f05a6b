"""SD 2.x on Forge's own SD2 engine (tests/forge_host/backend/diffusion_engine/sd20.py, mirroring Forge's
backend/diffusion_engine/sd20.py), as a real Forge runs a 768-v checkpoint (checked there with
tools/make_sd2_ckpt.py's full-size random model): OpenCLIP-H as a 23-layer transformers CLIP (the checkpoint's last
block dropped), hidden_states[-max(clip_skip, 1)] + final LayerNorm, "!" padding, v-prediction."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from harness import assert_normal
from modules import shared
from test_forge_extension import BASE, PROMPT, STRONG, forge, forge_session, jobs, optimised  # noqa: F401 (fixtures)

from lib_align.config import AlignConfig
from standalone.pipeline import standalone_family


@pytest.fixture(scope="session")
def tiny_sd2_v() -> Any:
    from standalone.sd2 import tiny_sd2

    return tiny_sd2(seed=0, v=True)


@pytest.fixture(scope="session")
def forge_sd2_engine(tiny_sd2_v: Any) -> Any:
    import forge_models

    return forge_models.forge_sd2(tiny_sd2_v)


def test_forge_sd2_engine_is_a_v_model_with_one_text_block_fewer(forge_sd2_engine, tiny_sd2_v):
    kmodel = forge_sd2_engine.forge_objects.unet.model
    assert kmodel.predictor.prediction_type == "v_prediction"
    layers = forge_sd2_engine.text_processing_engine.text_encoder.transformer.text_model.encoder.layers
    assert len(layers) == len(tiny_sd2_v.cond_stage_model.model.transformer.resblocks) - 1
    engine = forge_sd2_engine.text_processing_engine
    assert (engine.minimal_clip_skip, engine.final_layer_norm, engine.id_pad != engine.id_end) == (1, True, True)


def test_sd2_cond_on_forge_is_ldm_penultimate_cond(forge_sd2_engine, tiny_sd2_v):
    """Forge's clip skip 1 on its 23-layer encoder (+ ln_final) is ldm's "penultimate" (FrozenOpenCLIPEmbedder)."""
    shared.opts.CLIP_stop_at_last_layers = 1
    forge_sd2_engine.set_clip_skip(1)
    cond = forge_sd2_engine.get_learned_conditioning([PROMPT])
    chunks, _ = tiny_sd2_v.tokenize(PROMPT)
    with torch.no_grad():
        expected = tiny_sd2_v.cond_stage_model.encode_chunks(chunks)
    torch.testing.assert_close(cond.float(), expected.float(), rtol=1e-4, atol=1e-4)


def test_sd2_on_forge_t_is_the_reference_t_and_tsam_changes_the_image(forge, jobs, forge_sd2_engine,  # noqa: F811
                                                                      tiny_sd2_v):
    shared.sd_model = forge_sd2_engine
    assert forge.module.current_family().name == "SD2"
    without = forge.txt2img_without_extension(**BASE)
    off, _ = forge.txt2img(tsam={"enabled": False}, **BASE)
    assert torch.equal(off.samples, without.samples)  # T-SAM off == Forge without the extension, bitwise
    res, _ = forge.txt2img(tsam=STRONG, **BASE)
    assert not torch.equal(res.samples, without.samples) and "T-SAM preset" in res.infotexts[0]
    assert_normal(res, 1, 128, 128)
    reports = jobs[-1].reports
    assert len(reports) == optimised(BASE["steps"])
    family = standalone_family(tiny_sd2_v)
    chunks, words = family.tokenize(PROMPT)
    (expected,) = family.targets(chunks, words, AlignConfig().power, 1)
    (got,) = jobs[-1].targets[PROMPT]
    torch.testing.assert_close(got.target, expected.target, rtol=1e-5, atol=1e-6)
    assert got.tokens == expected.tokens and got.length == 7
