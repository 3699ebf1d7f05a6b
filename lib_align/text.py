"""T: the text encoder's own self-attention, the target T-SAM aligns the image to.

The CLIP text encoder is causal, so row i of its attention is a distribution over tokens 0..i; averaged over heads
and layers, sharpened by a power and renormalised, it says which earlier words each word belongs with.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .capture import full_precision

CHUNK_LENGTH = 77  # BOS + 75 prompt tokens + EOS/padding, per chunk, in SD1/SD2 and A1111
BOS_ID = 49406
EOS_ID = 49407


@dataclass
class ChunkTarget:
    """T of one 77-token chunk, and where that chunk sits in the cond's context axis (chunk index * 77)."""

    offset: int
    target: Tensor  # [L, L], lower-triangular, rows sum to 1
    tokens: list[str] = field(default_factory=list)  # the L prompt tokens, for labels

    @property
    def length(self) -> int:
        return int(self.target.shape[0])


def text_target(attn: Tensor, eos_index: int, power: float) -> Tensor:
    """T from recorded self-attention probabilities of one chunk.

    attn: [layers, heads, 77, 77] (or [layers, 77, 77] already head-averaged), post-softmax.
    Keeps prompt tokens 1..eos_index-1 (drops BOS, EOS and padding): L = eos_index - 1. Power, then each row
    divided by its sum (+1e-7, as the official code). Returns [L, L] in fp32; [0, 0] for an empty prompt.
    """
    a = attn.detach().float()
    if a.dim() == 4:
        a = a.mean(dim=1)
    if a.dim() != 3 or a.shape[-1] != a.shape[-2]:
        raise ValueError(f"text_target expects [layers, (heads,) n, n] attention, got {tuple(attn.shape)}")
    a = a.mean(dim=0)
    length = max(0, min(int(eos_index), a.shape[-1]) - 1)
    a = a[1 : 1 + length, 1 : 1 + length]
    t = a.pow(power)
    return t / (t.sum(dim=-1, keepdim=True) + 1e-7)


def eos_index(input_ids: Tensor) -> int:
    """Position of the first EOS after BOS. A1111 pads with EOS too, so this is prompt length + 1."""
    ids = input_ids.tolist()
    for i, tok in enumerate(ids[1:], start=1):
        if tok == EOS_ID:
            return i
    return len(ids) - 1


@contextlib.contextmanager
def _embedding_overrides(text_model: nn.Module, overrides: Sequence[Sequence[tuple[int, Tensor]]] | None):
    """Place textual-inversion vectors at their placeholder positions, as A1111's EmbeddingsWithFixes does.

    overrides[b] lists (offset, vectors[k, dim]) for batch row b: rows offset..offset+k-1 of the token
    embeddings are replaced. The placeholders then count as ordinary prompt tokens of T.
    """
    if not overrides or not any(overrides):
        yield
        return
    embedding = text_model.get_input_embeddings()

    def replace(_module: nn.Module, _inputs: tuple, output: Tensor) -> Tensor:
        rows = []
        for b, fixes in enumerate(overrides):
            row = output[b]
            for offset, vectors in fixes:
                vectors = vectors.to(row.dtype).to(row.device)
                k = min(vectors.shape[0], row.shape[0] - 1 - offset)
                row = torch.cat([row[: offset + 1], vectors[:k], row[offset + 1 + k :]])
            rows.append(row)
        return torch.stack(rows)

    handle = embedding.register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()


def causal_probabilities(q: Tensor, k: Tensor, heads: int) -> Tensor:
    """softmax(q k^T + causal mask) per head, for the already-scaled queries and the keys of one self-attention:
    q, k [n, L, heads*d] -> [n, heads, L, L]. The causal mask is the text encoders' own (CLIP and open_clip alike):
    position i sees 0..i."""
    n, length, inner = q.shape
    q = q.reshape(n, length, heads, inner // heads).transpose(1, 2)
    k = k.reshape(n, length, heads, inner // heads).transpose(1, 2)
    logits = q @ k.transpose(-1, -2)
    future = torch.ones(length, length, dtype=torch.bool, device=q.device).triu(1)
    return logits.masked_fill(future, float("-inf")).softmax(dim=-1)


def clip_layers(text_model: nn.Module) -> list[nn.Module]:
    """The encoder layers of a transformers CLIPTextModel (or of its inner CLIPTextTransformer)."""
    inner = getattr(text_model, "text_model", text_model)
    return list(inner.encoder.layers)


@torch.no_grad()
def encoder_self_attention(
    text_model: nn.Module,
    input_ids: Tensor,
    clip_skip: int = 1,
    overrides: Sequence[Sequence[tuple[int, Tensor]]] | None = None,
) -> Tensor:
    """Self-attention probabilities of a transformers CLIPTextModel for chunks [n, 77] -> [n, layers, heads, 77, 77].

    Recomputed from each layer's own projections (q_proj(x) * scale, k_proj(x), the causal mask: CLIPAttention's
    eager definition) on the attention input x = layer_norm1's output, captured by a forward hook during one normal
    pass — so it does not depend on which attention implementation transformers picked (4.46 defaults to SDPA,
    which returns no probabilities and falls back to eager only with a deprecation warning; 5.x will not). fp32.
    With clip skip N only the first (layers - N + 1) layers feed the cond; only those are returned.
    `overrides` follows A1111's fixes convention: (offset, vectors) with vectors placed after position `offset`.
    """
    layers = clip_layers(text_model)
    keep = max(1, len(layers) - (max(1, int(clip_skip)) - 1))
    captured: list[Tensor] = []
    handles = [layer.layer_norm1.register_forward_hook(lambda _m, _i, out: captured.append(out.detach()))
               for layer in layers[:keep]]
    try:
        with _embedding_overrides(text_model, overrides):
            text_model(input_ids=input_ids)
    finally:
        for handle in handles:
            handle.remove()
    if len(captured) != keep:
        raise RuntimeError(f"captured {len(captured)} attention inputs for {keep} text encoder layers")
    probs = []
    with full_precision(input_ids.device):
        for layer, x in zip(layers[:keep], captured, strict=True):
            attn, x = layer.self_attn, x.float()
            q = F.linear(x, attn.q_proj.weight.float(), _float(attn.q_proj.bias)) * attn.scale
            k = F.linear(x, attn.k_proj.weight.float(), _float(attn.k_proj.bias))
            probs.append(causal_probabilities(q, k, attn.num_heads))
    return torch.stack(probs, dim=1)


def _float(bias: Tensor | None) -> Tensor | None:
    return bias.float() if bias is not None else None


def chunk_targets(
    text_model: nn.Module,
    chunks: Tensor,
    power: float,
    clip_skip: int = 1,
    overrides: Sequence[Sequence[tuple[int, Tensor]]] | None = None,
    tokens: Sequence[Sequence[str]] | None = None,
) -> list[ChunkTarget]:
    """T per 77-token chunk of one prompt. Tokens of different chunks are unrelated (separate encoder passes)."""
    attn = encoder_self_attention(text_model, chunks, clip_skip=clip_skip, overrides=overrides)
    out = []
    for c in range(chunks.shape[0]):
        eos = eos_index(chunks[c])
        words = list(tokens[c]) if tokens is not None else []
        out.append(ChunkTarget(offset=c * CHUNK_LENGTH, target=text_target(attn[c], eos, power), tokens=words))
    return out


def token_labels(tokenizer: Any, ids: Sequence[int], named: Sequence[tuple[int, int, str]] = ()) -> list[str]:
    """Labels of one chunk's prompt tokens (BOS, EOS and padding dropped: L = eos_index - 1 of them).

    `named` (offset among the prompt tokens, count, name) marks textual-inversion placeholders, whose ids say
    nothing about the word, by their embedding's name ("name", "name·2", ...).
    """
    ids = list(ids)
    labels = list(tokenizer.convert_ids_to_tokens(ids[1 : eos_index(torch.tensor(ids))]))
    for offset, count, name in named:
        for k in range(count):
            if 0 <= offset + k < len(labels):
                labels[offset + k] = name if k == 0 else f"{name}·{k + 1}"
    return labels


def tokenize_chunks(tokenizer, prompt: str) -> tuple[Tensor, list[list[str]]]:
    """Split a prompt into A1111-style 77-token chunks: BOS + up to 75 tokens + EOS padding; BREAK starts a chunk.

    For the standalone demo and tests; inside A1111 the host's own tokenizer wrapper is used instead (it also
    handles emphasis, comma back-tracking and textual inversion).
    """
    chunks: list[list[int]] = []
    for part in prompt.split("BREAK") if prompt.strip() else [""]:
        ids = tokenizer(part, add_special_tokens=False, truncation=False)["input_ids"]
        for start in range(0, max(len(ids), 1), 75):
            chunks.append(ids[start : start + 75])
    rows, words = [], []
    for ids in chunks:
        rows.append([BOS_ID, *ids] + [EOS_ID] * (CHUNK_LENGTH - 1 - len(ids)))
        words.append(tokenizer.convert_ids_to_tokens(ids))
    return torch.tensor(rows, dtype=torch.long), words
