"""S (how similar the image's token maps are) and the T-SAM loss between S and T, in both published forms."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .capture import NotAlignable
from .config import LOSS_FORMS
from .text import ChunkTarget


def gaussian_kernel(size: int = 3, sigma: float = 0.5) -> Tensor:
    """The 2-D smoothing kernel of Attend-and-Excite's `GaussianSmoothing`, which T-SAM's released code reuses.

    Per dimension g(x) = exp(-((x - mu) / (2 sigma))^2), mu = (size - 1) / 2; the 2-D kernel is the outer product,
    normalised to sum 1. Note 2*sigma inside the square, not the textbook 2*sigma^2 outside it: for sigma 0.5 the
    1-D weights are [0.212, 0.576, 0.212], not [0.107, 0.787, 0.107]. It is their kernel we must match, since the
    step sizes were tuned with it (the constant 1/(sigma sqrt(2 pi)) factor cancels in the normalisation).
    """
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-((coords / (2 * sigma)) ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def smooth_maps(maps: Tensor, size: int = 3, sigma: float = 0.5) -> Tensor:
    """[L, h, w] -> [L, h, w], Gaussian-smoothed with reflect padding (kernel 3, sigma 0.5 by default)."""
    pad = size // 2
    if min(maps.shape[-2:]) <= pad:  # reflect padding needs a map larger than the pad
        return maps
    kernel = gaussian_kernel(size, sigma).to(maps)[None, None]
    x = F.pad(maps[:, None], (pad, pad, pad, pad), mode="reflect")
    return F.conv2d(x, kernel)[:, 0]


def token_maps(maps: Tensor, length: int, offset: int = 0, smooth: bool = True) -> Tensor:
    """Maps [h, w, context] -> the prompt tokens' flattened maps [L, h*w] (positions offset+1 .. offset+L).
    Maps narrower than that (a context shorter than the prompt's chunks) are a NotAlignable error, never an empty
    slice."""
    if maps.shape[-1] < offset + 1 + length:
        raise NotAlignable(f"the cross-attention sees {maps.shape[-1]} context tokens, fewer than the prompt's "
                           f"{offset + 1 + length} (another extension conditions the UNet on part of the prompt)")
    m = maps[..., offset + 1 : offset + 1 + length].float().permute(2, 0, 1)
    if smooth:
        m = smooth_maps(m)
    return m.reshape(length, -1)


def cosine_matrix(flat: Tensor) -> Tensor:
    """[L, N] -> [L, L] cosine similarity of every pair of token maps."""
    unit = flat / flat.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    return unit @ unit.T


def similarity_matrix(maps: Tensor, length: int, offset: int = 0, smooth: bool = True) -> Tensor:
    """S as the paper defines it: lower triangle of the cosine matrix (diagonal 1), each row divided by its sum."""
    c = torch.tril(cosine_matrix(token_maps(maps, length, offset, smooth)))
    return c / c.sum(dim=-1, keepdim=True).clamp_min(1e-8)


def paper_loss(cos: Tensor, target: Tensor) -> Tensor:
    """Sum_{r=1}^{L-1} (r+1)/L * Sum_{c<=r} |T[r,c] - S[r,c]|, S the row-normalised lower-triangular cosines."""
    length = target.shape[0]
    lower = torch.tril(cos)
    s = lower / lower.sum(dim=-1, keepdim=True).clamp_min(1e-8)
    per_row = (torch.tril(target) - s).abs().sum(dim=-1)
    weights = torch.arange(1, length + 1, dtype=cos.dtype, device=cos.device) / length  # (r+1)/L
    return (weights * per_row)[1:].sum()


def official_loss(cos: Tensor, target: Tensor) -> Tensor:
    """Sum_{r=1}^{L-1} 0.2 r (1 - cos(T[r, :r], C[r, :r])): row cosine distance over the strict lower triangle."""
    length = target.shape[0]
    mask = torch.ones(length, length, dtype=torch.bool, device=cos.device).tril(-1)
    t = torch.where(mask, target.to(cos), torch.zeros_like(cos))
    c = torch.where(mask, cos, torch.zeros_like(cos))
    # Zeros outside [:r] leave dot products and norms of the row prefixes unchanged.
    row_cos = (t * c).sum(-1) / (t.norm(dim=-1) * c.norm(dim=-1)).clamp_min(1e-8)
    weights = 0.2 * torch.arange(length, dtype=cos.dtype, device=cos.device)
    return (weights * (1 - row_cos))[1:].sum()


LOSSES = dict(zip(LOSS_FORMS, (paper_loss, official_loss), strict=True))  # the setting's names, in its order


def alignment_loss(maps: Tensor, target: Tensor, form: str, smooth: bool = True, offset: int = 0) -> Tensor:
    """T-SAM loss of one image: maps [h, w, context] (layer/head-averaged probabilities), target T [L, L].

    form: "paper" (L1 against row-normalised S, gamma applied to T by the caller) or "official" (row cosine).
    `offset` selects a chunk's 77 positions inside a longer context. Computed in fp32. A prompt of fewer than
    two tokens has nothing to align: the loss is a constant 0.
    """
    if form not in LOSSES:
        raise ValueError(f"unknown loss form {form!r}; expected one of {sorted(LOSSES)}")
    length = int(target.shape[0])
    if length < 2:
        return maps.new_zeros((), dtype=torch.float32)
    cos = cosine_matrix(token_maps(maps, length, offset, smooth))
    return LOSSES[form](cos, target.float().to(cos.device))


def prompt_loss(maps: Tensor, targets: list[ChunkTarget], form: str, smooth: bool = True) -> Tensor:
    """Sum of the chunk losses of one image (chunks of a long prompt / BREAK are aligned independently)."""
    total = maps.new_zeros((), dtype=torch.float32)
    for chunk in targets:
        total = total + alignment_loss(maps, chunk.target, form, smooth, chunk.offset)
    return total


def loss_threshold(targets: list[ChunkTarget], per_token: float) -> float:
    """Refinement target: per_token * (L - 1) summed over chunks.

    The official code looks the threshold up in a table that covers only L-1 in {4, 5, 6} (and raises KeyError
    otherwise); its entries equal 0.14 * (L-1) closely enough that the formula generalises it to any length.
    """
    return per_token * sum(max(0, c.length - 1) for c in targets)
