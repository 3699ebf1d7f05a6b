"""The demo/test model: real CLIP tokenizer offline, checkpoint key mapping, k-diffusion without torchvision."""

from __future__ import annotations

import sys

import pytest
import torch

from standalone.models import clip_tokenizer, import_k_diffusion, load_sd_state_dict, tiny_sd


def test_tokenizer_gives_the_real_clip_ids():
    ids = clip_tokenizer()("a black car and a white clock")["input_ids"]
    # The ids Stable Diffusion 1.x's CLIP ViT-L/14 tokenizer produces for this prompt.
    assert ids == [49406, 320, 1449, 1615, 537, 320, 1579, 6716, 49407]


@pytest.mark.slow
def test_checkpoint_keys_map_onto_the_model(tmp_path, tiny_model):
    from safetensors.torch import load_file, save_file

    state = {k: v.contiguous() for k, v in tiny_model.state_dict().items()}
    assert any(k.startswith("model.diffusion_model.") for k in state)
    assert any(k.startswith("cond_stage_model.transformer.text_model.") for k in state)
    path = tmp_path / "tiny.safetensors"
    save_file(state, str(path))
    other = tiny_sd(seed=1)
    assert not torch.equal(other.unet.out[2].weight, tiny_model.unet.out[2].weight)
    assert other.load_checkpoint(path) == []
    for key, value in load_file(str(path)).items():
        torch.testing.assert_close(other.state_dict()[key], value)
    with pytest.raises(ValueError, match="no Stable Diffusion"):
        load_sd_state_dict(other, {"foo": torch.zeros(1)})


def test_k_diffusion_imports_without_leaving_a_fake_torchvision():
    kd = import_k_diffusion()
    assert hasattr(kd.sampling, "sample_euler") and hasattr(kd.external, "CompVisDenoiser")
    tv = sys.modules.get("torchvision")
    assert tv is None or getattr(tv, "__file__", None) is not None
