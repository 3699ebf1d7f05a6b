"""S and both loss forms against independent, loop-by-loop reimplementations of the published formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lib_align import alignment_loss, prompt_loss, similarity_matrix
from lib_align.loss import smooth_maps
from lib_align.text import ChunkTarget


def np_smooth(m: np.ndarray) -> np.ndarray:
    """3x3 smoothing, reflect padding, by loops, with the released GaussianSmoothing's weights for sigma 0.5
    (exp(-((x - 1) / (2 * 0.5))^2) normalised; t-sam-diffusion/code pipeline_stable_diffusion_x_2.py, lines
    1565-1630; see tests/core/test_official_oracle.py)."""
    g1 = np.array([0.21194155761708544, 0.5761168847658291, 0.21194155761708544])
    k = np.outer(g1, g1)
    p = np.pad(m, 1, mode="reflect")
    out = np.zeros_like(m)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            out[i, j] = (p[i:i + 3, j:j + 3] * k).sum()
    return out


def np_cos(maps: np.ndarray, length: int, offset: int = 0, smooth: bool = True) -> np.ndarray:
    vecs = []
    for i in range(length):
        m = maps[:, :, offset + 1 + i]
        vecs.append((np_smooth(m) if smooth else m).ravel())
    c = np.zeros((length, length))
    for i in range(length):
        for j in range(length):
            c[i, j] = vecs[i] @ vecs[j] / (np.linalg.norm(vecs[i]) * np.linalg.norm(vecs[j]))
    return c


def np_paper_loss(maps, target, offset=0, smooth=True) -> float:
    n = target.shape[0]
    c = np_cos(maps, n, offset, smooth)
    total = 0.0
    for r in range(1, n):
        row_sum = sum(c[r, k] for k in range(r + 1))
        total += (r + 1) / n * sum(abs(target[r, k] - c[r, k] / row_sum) for k in range(r + 1))
    return total


def np_official_loss(maps, target, offset=0, smooth=True) -> float:
    n = target.shape[0]
    c = np_cos(maps, n, offset, smooth)
    total = 0.0
    for r in range(1, n):
        a, b = target[r, :r], c[r, :r]
        total += 0.2 * r * (1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    return total


@pytest.fixture
def fixed():
    g = torch.Generator().manual_seed(7)
    maps = torch.rand(6, 5, 77, generator=g, dtype=torch.float64).softmax(-1)
    raw = torch.tril(torch.rand(6, 6, generator=g, dtype=torch.float64)) + 0.05 * torch.eye(6, dtype=torch.float64)
    target = raw / raw.sum(-1, keepdim=True)
    return maps, target


def test_smoothing_matches_a_loop_convolution(fixed):
    maps, _ = fixed
    m = maps[..., 3].float()
    np.testing.assert_allclose(smooth_maps(m[None])[0].numpy(), np_smooth(m.numpy().astype(np.float64)), atol=1e-6)


@pytest.mark.parametrize("smooth", [True, False])
def test_paper_loss_equals_the_published_equation(fixed, smooth):
    maps, target = fixed
    got = alignment_loss(maps.float(), target.float(), "paper", smooth=smooth)
    assert float(got) == pytest.approx(np_paper_loss(maps.numpy(), target.numpy(), smooth=smooth), rel=1e-4)


@pytest.mark.parametrize("smooth", [True, False])
def test_official_loss_equals_the_official_codes_formula(fixed, smooth):
    maps, target = fixed
    got = alignment_loss(maps.float(), target.float(), "official", smooth=smooth)
    assert float(got) == pytest.approx(np_official_loss(maps.numpy(), target.numpy(), smooth=smooth), rel=1e-4)


def test_similarity_matrix_is_the_row_normalised_lower_triangle(fixed):
    maps, _ = fixed
    s = similarity_matrix(maps.float(), 6).double().numpy()
    c = np.tril(np_cos(maps.numpy(), 6))
    np.testing.assert_allclose(s, c / c.sum(1, keepdims=True), atol=1e-5)
    np.testing.assert_allclose(s.sum(1), np.ones(6), atol=1e-5)


def test_loss_is_zero_when_maps_realise_the_target():
    """Identical maps give cosine 1 everywhere; the official loss is 0 for a target whose rows are uniform."""
    maps = torch.rand(4, 4, 1).expand(4, 4, 77).contiguous()
    target = torch.tril(torch.ones(5, 5))
    target = target / target.sum(-1, keepdim=True)
    assert float(alignment_loss(maps, target, "official")) == pytest.approx(0.0, abs=1e-6)
    assert float(alignment_loss(maps, target, "paper")) == pytest.approx(0.0, abs=1e-6)


def test_one_token_prompt_has_nothing_to_align():
    maps = torch.rand(4, 4, 77, requires_grad=True)
    for form in ("paper", "official"):
        loss = alignment_loss(maps, torch.ones(1, 1), form)
        assert float(loss) == 0.0 and not loss.requires_grad


def test_chunks_are_aligned_independently_at_their_offsets(fixed):
    g = torch.Generator().manual_seed(3)
    maps = torch.rand(4, 4, 154, generator=g).softmax(-1)
    t1 = torch.tril(torch.rand(4, 4, generator=g)) + torch.eye(4)
    t2 = torch.tril(torch.rand(3, 3, generator=g)) + torch.eye(3)
    chunks = [ChunkTarget(0, t1 / t1.sum(-1, keepdim=True)), ChunkTarget(77, t2 / t2.sum(-1, keepdim=True))]
    total = prompt_loss(maps, chunks, "paper")
    expected = np_paper_loss(maps.double().numpy(), chunks[0].target.double().numpy()) + np_paper_loss(
        maps.double().numpy(), chunks[1].target.double().numpy(), offset=77)
    assert float(total) == pytest.approx(expected, rel=1e-4)


def test_unknown_form_is_a_clear_error(fixed):
    maps, target = fixed
    with pytest.raises(ValueError, match="unknown loss form"):
        alignment_loss(maps, target, "mse")


def test_loss_has_a_gradient_through_the_maps(fixed):
    maps, target = fixed
    maps = maps.float().clone().requires_grad_(True)
    for form in ("paper", "official"):
        (g,) = torch.autograd.grad(alignment_loss(maps, target.float(), form), [maps])
        assert torch.isfinite(g).all() and g.abs().sum() > 0
        assert math.isfinite(float(g.sum()))
