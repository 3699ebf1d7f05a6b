"""Oracles written from the authors' released code, not from lib_align.

Source: t-sam-diffusion/code at 42c79a3, `models/sd1_5/pipeline_stable_diffusion_x_2.py`:
- `GaussianSmoothing` (lines 1565-1630): per dimension exp(-((x - mean) / (2 * std)) ** 2), mean = (size - 1) / 2,
  the product over dimensions, divided by its sum; applied after `F.pad(map, (1, 1, 1, 1), mode="reflect")`.
- `_compute_self_attn_loss_cos` (753-824, the default loss): maps[:, :, 1:-1]; for every pair (row, column < row)
  each map smoothed, flattened, `nn.CosineSimilarity(dim=0)`; cos_matrix = eye with those entries; loss =
  sum over row >= 1 of (0.2 * row) * (1 - cos(T[row, :row], cos_matrix[row, :row])).
- `_compute_self_attn_loss_cos_attn_like` (826-904) with loss_type "abs_loss", row_weight 1, cos2 (the paper's
  form): attn_like = cos_matrix / cos_matrix.sum(1); loss = sum over row >= 1 of (row + 1) / L *
  sum |T[row, :row + 1] - attn_like[row, :row + 1]|.
- `_perform_iterative_refinement_step_with_attn` (988-1075) and its caller (1449-1475): `for cnt in range(30)`:
  `if cnt == 20 and loss > threshold: break`; forward, loss, update. Then one more forward for the loss, and the
  caller's regular update with it.

Each oracle below restates those lines as plain loops (one image, one pair at a time), so a wrong vectorisation,
kernel or loop rule in lib_align shows up as a difference.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lib_align import AlignConfig, AlignSession, LatentOptimizer
from lib_align.capture import CrossAttentionCapture
from lib_align.loss import alignment_loss, gaussian_kernel
from standalone.pipeline import encode, prompt_targets

# The released kernel's 1-D weights, exp(-((x - 1) / (2 sigma))^2) for x = 0, 1, 2, divided by their sum:
# sigma 0.5: e^-1 / (1 + 2 e^-1) and 1 / (1 + 2 e^-1); sigma 1: e^-0.25 / (1 + 2 e^-0.25), 1 / (1 + 2 e^-0.25).
RELEASED_1D = {0.5: [0.21194155761708544, 0.5761168847658291, 0.21194155761708544],
               1.0: [0.304504342420284, 0.39099131515943186, 0.304504342420284]}


def released_kernel(sigma: float) -> torch.Tensor:
    g = torch.tensor(RELEASED_1D[sigma], dtype=torch.float64)
    return torch.outer(g, g)


def released_smooth(m: torch.Tensor) -> torch.Tensor:
    """One [h, w] map, as GaussianSmoothing after reflect padding (sigma 0.5, kernel 3)."""
    k = released_kernel(0.5).to(m.dtype)
    return F.conv2d(F.pad(m[None, None], (1, 1, 1, 1), mode="reflect"), k[None, None])[0, 0]


def released_cos_matrix(maps: torch.Tensor, length: int) -> torch.Tensor:
    text = maps[:, :, 1:-1]
    cos = torch.nn.CosineSimilarity(dim=0)
    matrix = torch.eye(length, dtype=maps.dtype)
    for row in range(length):
        for column in range(row):
            a = released_smooth(text[:, :, row]).reshape(-1)
            b = released_smooth(text[:, :, column]).reshape(-1)
            matrix[row, column] = cos(a, b)
    return matrix


def released_official_loss(maps: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    length = target.shape[0]
    matrix = released_cos_matrix(maps, length)
    cos = torch.nn.CosineSimilarity(dim=0)
    loss = maps.new_zeros(())
    for row in range(1, length):
        loss = loss + (0.2 * row) * (1 - cos(target[row, :row], matrix[row, :row]))
    return loss


def released_paper_loss(maps: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    length = target.shape[0]
    matrix = released_cos_matrix(maps, length)
    attn_like = matrix / matrix.sum(dim=1, keepdim=True)
    loss = maps.new_zeros(())
    for row in range(1, length):
        loss = loss + (row + 1) / length * (target[row, :row + 1] - attn_like[row, :row + 1]).abs().sum()
    return loss


# --- smoothing kernel ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [0.5, 1.0])
def test_smoothing_kernel_is_the_released_one(sigma):
    torch.testing.assert_close(gaussian_kernel(3, sigma).double(), released_kernel(sigma), atol=1e-7, rtol=0)


def test_the_textbook_gaussian_would_fail_this_oracle():
    """exp(-x^2 / (2 sigma^2)) gives [0.107, 0.787, 0.107] for sigma 0.5: far from the released weights."""
    assert abs(float(gaussian_kernel(3, 0.5)[1, 1]) - 0.5761168847658291**2) < 1e-7
    assert abs(0.7870 ** 2 - 0.5761168847658291**2) > 0.2


# --- the loss and its gradient on fixed maps -------------------------------------------------------------------


@pytest.fixture
def fixed_maps():
    g = torch.Generator().manual_seed(11)
    maps = torch.rand(8, 6, 77, generator=g, dtype=torch.float64).softmax(-1) * 4
    raw = torch.tril(torch.rand(6, 6, generator=g, dtype=torch.float64)) ** 3 + 1e-3 * torch.eye(6, dtype=torch.float64)
    return maps, raw / (raw.sum(-1, keepdim=True) + 1e-7)


@pytest.mark.parametrize(("form", "oracle"), [("official", released_official_loss), ("paper", released_paper_loss)])
def test_loss_and_gradient_match_the_released_formulas(fixed_maps, form, oracle):
    maps, target = fixed_maps
    ours_in = maps.clone().requires_grad_(True)
    ref_in = maps.clone().requires_grad_(True)
    ours = alignment_loss(ours_in, target, form, smooth=True)
    ref = oracle(ref_in, target)
    (g_ours,) = torch.autograd.grad(ours, [ours_in])
    (g_ref,) = torch.autograd.grad(ref, [ref_in])
    assert float(ours.detach()) == pytest.approx(float(ref.detach()), rel=1e-6)
    # lib_align computes in fp32 (as under the host's autocast), so compare at fp32 precision.
    torch.testing.assert_close(g_ours.double(), g_ref, rtol=1e-4, atol=1e-6 * float(g_ref.abs().max()))
    assert float(g_ref.abs().max()) > 0


# --- the refinement loop on a tiny real UNet -------------------------------------------------------------------

PROMPT = "a black car and a white clock"


@pytest.fixture(scope="module")
def unet_setup(tiny_model):
    torch.manual_seed(5)
    chunks, targets = prompt_targets(tiny_model, PROMPT, 3.0)
    cond = encode(tiny_model, chunks)
    z = torch.randn(1, 4, 16, 16)
    t = torch.tensor([700.0])
    config = AlignConfig.official()
    session = AlignSession(tiny_model.unet, tiny_model.apply_model, [targets], config, 50, (16, 16))
    capture = CrossAttentionCapture(tiny_model.unet, (16, 16), stop_early=True)

    def loss_fn(z_: torch.Tensor) -> torch.Tensor:  # per-image losses [B], each image with its own cond row
        with capture:
            maps = capture.run(lambda: tiny_model.apply_model(z_, t.repeat(z_.shape[0]),
                                                             cond.repeat(z_.shape[0], 1, 1)))
        return torch.cat([session.losses(maps[b:b + 1]) for b in range(z_.shape[0])])  # same T for every row

    return z, loss_fn, config


def released_refinement_step(z, loss_fn, threshold: float, alpha: float):
    """The released refinement at one step (one image) and the caller's regular update. Returns (z, updates)."""
    updates = 0
    loss = 100.0
    for cnt in range(30):
        if cnt == 20 and loss > threshold:
            break
        z = z.clone().detach().requires_grad_(True)
        with torch.enable_grad():
            loss = loss_fn(z)[0]
            if loss != 0:
                z = z - alpha * torch.autograd.grad(loss, [z])[0]
                updates += 1
    z = z.clone().detach().requires_grad_(True)
    with torch.enable_grad():
        loss = loss_fn(z)[0]
        z = z - alpha * torch.autograd.grad(loss, [z])[0]
    return z.detach(), updates + 1


@pytest.mark.slow
@pytest.mark.parametrize(("threshold", "updates"), [(0.0, 21), (1e3, 31)])
def test_refinement_follows_the_released_loop(unet_setup, threshold, updates):
    """Threshold 0: the loss is above it at iteration 20, so the released loop stops there (20 + 1 updates).
    A huge threshold: the loss is below it, so the loop runs to 30 (30 + 1)."""
    z, loss_fn, config = unet_setup
    alpha = config.step_size_at(0, 50)
    expected, count = released_refinement_step(z, loss_fn, threshold, alpha)
    assert count == updates
    optimizer = LatentOptimizer(config, 50)
    ours, report = optimizer.step(z, 0, loss_fn, threshold=torch.tensor([threshold]))
    assert report.iterations == updates
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)
    assert float((ours - z).abs().max()) > 1e-3  # the latent really moved


@pytest.mark.slow
def test_each_image_of_a_batch_is_refined_by_its_own_threshold(unet_setup):
    z, loss_fn, config = unet_setup
    alpha = config.step_size_at(0, 50)
    above, _ = released_refinement_step(z, loss_fn, 0.0, alpha)
    below, _ = released_refinement_step(z, loss_fn, 1e3, alpha)
    batch, report = LatentOptimizer(config, 50).step(torch.cat([z, z]), 0, loss_fn,
                                                     threshold=torch.tensor([0.0, 1e3]))
    assert report.iterations == 31
    torch.testing.assert_close(batch[0:1], above, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(batch[1:2], below, rtol=1e-4, atol=1e-5)
