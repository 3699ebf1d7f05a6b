"""Autograd through weights made under torch.inference_mode (Forge's backend/loader.py builds every model inside
`@torch.inference_mode()`): `lib_align.autograd.autograd_usable`, and the attention scale of modules without `scale`.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lib_align.autograd import autograd_usable, norm_inputs_copied
from lib_align.capture import attention_scale


def _block() -> nn.Module:
    return nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.SiLU(), nn.Conv2d(8, 4, 1))


def _twins() -> tuple[nn.Module, nn.Module]:
    """The same weights twice: one module made under inference mode (as Forge loads), one made normally."""
    torch.manual_seed(0)
    normal = _block()
    with torch.inference_mode():
        inference = _block()
        inference.load_state_dict(normal.state_dict())
    return normal, inference


def _grad(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    with torch.enable_grad():
        return torch.autograd.grad(module(x).pow(2).sum(), [x])[0]


def test_inference_weights_refuse_autograd_without_aliases():
    _, inference = _twins()
    assert all(p.is_inference() for p in inference.parameters())
    with pytest.raises(RuntimeError, match="Inference tensors cannot be saved for backward"):
        _grad(inference, torch.randn(1, 4, 6, 6))


def test_aliases_give_the_gradient_of_normal_weights_without_copying():
    normal, inference = _twins()
    x = torch.randn(2, 4, 6, 6)
    pointers = [p.data_ptr() for p in inference.parameters()]
    with autograd_usable(inference) as swapped:
        assert swapped == len(pointers)
        assert [p.data_ptr() for p in inference.parameters()] == pointers  # the same storage: nothing copied
        assert not any(p.is_inference() or p.requires_grad for p in inference.parameters())
        got = _grad(inference, x)
    # The oracle is the same computation on weights that were never inference tensors.
    assert torch.equal(got, _grad(normal, x))
    assert all(p.is_inference() for p in inference.parameters())  # the host's own tensors are back


def test_originals_come_back_when_the_pass_raises():
    _, inference = _twins()
    originals = list(inference.parameters())
    with pytest.raises(ValueError), autograd_usable(inference):
        raise ValueError("interrupted")
    assert all(a is b for a, b in zip(inference.parameters(), originals, strict=True))


def test_normal_modules_are_left_alone():
    normal, _ = _twins()
    originals = list(normal.parameters())
    with autograd_usable(normal) as swapped:
        assert swapped == 0
        assert all(a is b for a, b in zip(normal.parameters(), originals, strict=True))


def test_attention_scale_without_a_scale_attribute_is_torch_sdpa_default():
    """Forge's CrossAttention has no `scale`; its attention (backend/attention.py) calls PyTorch's
    scaled_dot_product_attention without one, whose documented default is 1/sqrt(E) of the head size."""
    forge_like = nn.Module()
    forge_like.heads, forge_like.dim_head = 8, 40
    assert attention_scale(forge_like, 320) == pytest.approx(1 / 40 ** 0.5)
    q, k = torch.randn(1, 8, 5, 40), torch.randn(1, 8, 7, 40)
    v = torch.eye(7).expand(1, 8, 7, 7)  # identity values: the output is the probabilities themselves
    probs = torch.softmax(q @ k.transpose(-1, -2) * attention_scale(forge_like, 320), dim=-1)
    assert torch.allclose(probs, nn.functional.scaled_dot_product_attention(q, k, v), atol=1e-6)
    ldm_like = nn.Module()
    ldm_like.heads, ldm_like.scale = 8, 0.125
    assert attention_scale(ldm_like, 320) == 0.125


class _Block(nn.Module):
    """A transformer block's residual structure: Forge adds in place (backend/nn/unet.py, `x += n`), ldm/sgm out of
    place (`x = attn(norm(x)) + x`); the same weights either way."""

    def __init__(self, in_place: bool) -> None:
        super().__init__()
        self.in_place = in_place
        self.norm1, self.norm2 = nn.LayerNorm(8), nn.LayerNorm(8)
        self.attn1, self.attn2 = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * 1.0  # the block input is an intermediate of the graph, as in the UNet
        for norm, attn in ((self.norm1, self.attn1), (self.norm2, self.attn2)):
            if self.in_place:
                x += attn(norm(x))
            else:
                x = x + attn(norm(x))
        return x


def test_in_place_residual_adds_refuse_autograd_without_copies():
    block = _Block(in_place=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        _grad(block, torch.randn(2, 5, 8))


def test_norm_copies_give_the_out_of_place_gradient():
    torch.manual_seed(0)
    forge_like = _Block(in_place=True)
    ldm_like = _Block(in_place=False)
    ldm_like.load_state_dict(forge_like.state_dict())
    x = torch.randn(2, 5, 8)
    with norm_inputs_copied(forge_like) as hooked:
        assert hooked == 2
        got = _grad(forge_like, x)
    torch.testing.assert_close(got, _grad(ldm_like, x), rtol=0, atol=0)
    assert not forge_like.norm1._forward_pre_hooks and not forge_like.norm2._forward_pre_hooks
