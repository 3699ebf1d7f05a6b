"""Cross-attention capture: right probabilities, whatever the attention backend; right level; no leftover hooks."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F

from lib_align import CrossAttentionCapture, cross_attention_layers, level_size


def all_hook_counts(module: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def inputs(model, hw=(16, 16), batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, *hw, generator=g)
    t = torch.full((batch,), 500.0)
    ctx = torch.randn(batch, 77, model.unet.context_dim if hasattr(model.unet, "context_dim") else 64, generator=g)
    return x, t, ctx


def expected_maps(model, x, t, ctx, level=4):
    """Independent reference: record each level-4 attn2's inputs, then softmax(q_h k_h^T / sqrt(d)) head by head."""
    layers = [a for a in cross_attention_layers(model.unet) if a.ds == level]
    seen = []

    def record(mod, args, kwargs):
        seen.append((mod, args[0], kwargs.get("context", args[1] if len(args) > 1 else None)))

    handles = [a.module.register_forward_pre_hook(record, with_kwargs=True) for a in layers]
    try:
        with torch.no_grad():
            model.unet(x, t, context=ctx)
    finally:
        for h in handles:
            h.remove()
    assert len(seen) == len(layers) == 5
    total = 0
    for mod, hidden, context in seen:
        q, k = mod.to_q(hidden), mod.to_k(context)
        d = q.shape[-1] // mod.heads
        per_head = []
        for h in range(mod.heads):
            qh, kh = q[..., h * d:(h + 1) * d], k[..., h * d:(h + 1) * d]
            per_head.append(torch.softmax(qh @ kh.transpose(1, 2) / d**0.5, dim=-1))
        total = total + sum(per_head) / mod.heads
    h4, w4 = level_size(x.shape[2], x.shape[3], level)
    return (total / len(seen)).reshape(x.shape[0], h4, w4, -1)


def sdpa_forward(self, x, context=None, mask=None):
    """An attention forward of the kind A1111 installs: fused kernel, probabilities never materialised."""
    context = x if context is None else context
    q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
    b, n, inner = q.shape
    d = inner // self.heads
    q, k, v = (t.reshape(b, -1, self.heads, d).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, inner)
    return self.to_out(out)


@pytest.mark.slow
def test_captured_probabilities_equal_an_independent_softmax(tiny_model):
    x, t, ctx = inputs(tiny_model)
    expected = expected_maps(tiny_model, x, t, ctx)
    with CrossAttentionCapture(tiny_model.unet, (16, 16)) as cap, torch.no_grad():
        maps = cap.run(lambda: tiny_model.unet(x, t, context=ctx))
    assert cap.layer_count == 5
    assert maps.shape == (2, 4, 4, 77)
    torch.testing.assert_close(maps, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 4, 4), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_capture_does_not_depend_on_the_attention_backend(tiny_model):
    x, t, ctx = inputs(tiny_model, seed=3)
    expected = expected_maps(tiny_model, x, t, ctx)
    with torch.no_grad():
        reference_out = tiny_model.unet(x, t, context=ctx)
    attn2 = [a.module for a in cross_attention_layers(tiny_model.unet)]
    for m in attn2:
        m.forward = types.MethodType(sdpa_forward, m)
    try:
        with torch.no_grad():
            torch.testing.assert_close(tiny_model.unet(x, t, context=ctx), reference_out, atol=1e-4, rtol=1e-4)
            with CrossAttentionCapture(tiny_model.unet, (16, 16)) as cap:
                maps = cap.run(lambda: tiny_model.unet(x, t, context=ctx))
    finally:
        for m in attn2:
            del m.forward
    torch.testing.assert_close(maps, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize(("hw", "level_hw"), [((48, 32), (12, 8)), ((33, 41), (9, 11)), ((32, 128), (8, 32))])
def test_non_square_latents_give_maps_at_the_ds4_size(tiny_model, hw, level_hw):
    assert level_size(*hw, 4) == level_hw
    x, t, ctx = inputs(tiny_model, hw=hw, batch=1)
    with CrossAttentionCapture(tiny_model.unet, hw) as cap, torch.no_grad():
        maps = cap.run(lambda: tiny_model.unet(x, t, context=ctx))
    assert maps.shape == (1, *level_hw, 77)
    assert cap.layer_count == 5


@pytest.mark.slow
def test_rows_select_the_conditional_rows(tiny_model):
    x, t, ctx = inputs(tiny_model, batch=2)
    with CrossAttentionCapture(tiny_model.unet, (16, 16)) as cap, torch.no_grad():
        both = cap.run(lambda: tiny_model.unet(x, t, context=ctx))
    with CrossAttentionCapture(tiny_model.unet, (16, 16), rows=slice(1, 2)) as cap, torch.no_grad():
        second = cap.run(lambda: tiny_model.unet(x, t, context=ctx))
    torch.testing.assert_close(second, both[1:])


@pytest.mark.slow
def test_early_stop_skips_the_decoder_above_the_level_and_keeps_the_maps(tiny_model):
    x, t, ctx = inputs(tiny_model, seed=5)
    ran = []
    probe = tiny_model.unet.output_blocks[6].register_forward_hook(lambda *a: ran.append(1))
    try:
        with torch.no_grad():
            with CrossAttentionCapture(tiny_model.unet, (16, 16)) as cap:
                full = cap.run(lambda: tiny_model.unet(x, t, context=ctx))
            assert ran == [1]
            with CrossAttentionCapture(tiny_model.unet, (16, 16), stop_early=True) as cap:
                early = cap.run(lambda: tiny_model.unet(x, t, context=ctx))
            assert ran == [1], "output_blocks.6 (ds 2) must not run after the last ds-4 layer"
    finally:
        probe.remove()
    torch.testing.assert_close(early, full)


@pytest.mark.slow
def test_hooks_exist_only_inside_the_block_even_when_it_raises(tiny_model):
    before = all_hook_counts(tiny_model.unet)
    with CrossAttentionCapture(tiny_model.unet, (16, 16)):
        assert all_hook_counts(tiny_model.unet) == before + 3 * 5
    assert all_hook_counts(tiny_model.unet) == before
    with pytest.raises(RuntimeError, match="boom"):
        with CrossAttentionCapture(tiny_model.unet, (16, 16), stop_early=True):
            raise RuntimeError("boom")
    assert all_hook_counts(tiny_model.unet) == before
    x, t, ctx = inputs(tiny_model)

    def fail(*_):
        raise RuntimeError("mid-forward")

    probe = tiny_model.unet.output_blocks[4].register_forward_hook(fail)  # fails inside the captured level
    try:
        with pytest.raises(RuntimeError, match="mid-forward"), torch.no_grad():
            with CrossAttentionCapture(tiny_model.unet, (16, 16)) as cap:
                cap.run(lambda: tiny_model.unet(x, t, context=ctx))
        assert cap.layer_count == 4  # input_blocks.7, .8, output_blocks.3, .4 ran; the hook fired after .4
    finally:
        probe.remove()
    assert all_hook_counts(tiny_model.unet) == before


def test_no_maps_is_a_clear_error(tiny_model):
    with CrossAttentionCapture(tiny_model.unet, (16, 16)) as cap:
        with pytest.raises(RuntimeError, match="no cross-attention was captured"):
            _ = cap.maps


# -- what the maps keep for the backward ---------------------------------------------------------------------------


def plain_head_mean_probs(q, k, heads, scale):
    """The formula written out with torch's own ops, differentiated by autograd: the reference for the recomputing
    autograd function (softmax(q k^T * scale) per head, averaged over heads)."""
    b, n, inner = q.shape
    qh = q.reshape(b, n, heads, -1).transpose(1, 2)
    kh = k.reshape(b, k.shape[1], heads, -1).transpose(1, 2)
    return (qh @ kh.transpose(-1, -2) * scale).softmax(-1).mean(1)


def test_maps_gradient_passes_a_finite_difference_check():
    from lib_align.capture import attention_probs

    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 6, 8, dtype=torch.float64, generator=g, requires_grad=True)
    k = torch.randn(1, 5, 8, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q_, k_: attention_probs(q_, k_, 2, 0.5, torch.float64), (q, k))


@pytest.mark.parametrize("k_grad", [False, True])
def test_maps_gradient_equals_autograd_of_the_formula(k_grad):
    from lib_align.capture import attention_probs

    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 16, 32, generator=g).half().requires_grad_(True)  # the host's fp16 projections
    k = torch.randn(2, 77, 32, generator=g).half().requires_grad_(k_grad)
    weights = torch.randn(2, 16, 77, generator=g)
    ours = attention_probs(q, k, 4, 0.35)
    theirs = plain_head_mean_probs(q.float(), k.float(), 4, 0.35)
    torch.testing.assert_close(ours, theirs)
    inputs = [q, k] if k_grad else [q]
    mine = torch.autograd.grad((ours * weights).sum(), inputs)
    reference = torch.autograd.grad((theirs * weights).sum(), inputs)
    for a, b in zip(mine, reference, strict=True):
        torch.testing.assert_close(a, b)


def test_maps_keep_only_q_and_k_for_the_backward():
    """Autograd of the formula keeps each layer's fp32 softmax [B, heads, n, tokens] and an fp32 copy of k; the maps
    keep the projections themselves, which the attention kernel keeps anyway."""
    from lib_align.capture import attention_probs

    q = torch.randn(1, 64, 32).half().requires_grad_(True)
    k = torch.randn(1, 77, 32).half()
    kept = []

    def pack(tensor):
        kept.append(tensor.untyped_storage()._cdata)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        attention_probs(q, k, 4, 0.35)
    assert kept and set(kept) <= {q.untyped_storage()._cdata, k.untyped_storage()._cdata}
