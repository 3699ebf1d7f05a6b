"""T for open_clip text towers: SD 2.x's ViT-H/14 and SDXL's second encoder (ViT-bigG/14).

The tower is the `.model` of ldm's `FrozenOpenCLIPEmbedder` / sgm's `FrozenOpenCLIPEmbedder2`: token_embedding,
positional_embedding, transformer.resblocks (open_clip `ResidualAttentionBlock`s), ln_final, attn_mask. Each block
calls its `nn.MultiheadAttention` with need_weights=False, so the probabilities are never formed. We run the tower's
first `layers` blocks as the embedder does, capture each block's attention input (the LayerNorm'ed hidden state)
with a forward pre-hook, and recompute softmax(q k^T / sqrt(d) + mask) per head from in_proj_weight/in_proj_bias in
fp32. Hooks only read, so the tower's output is unchanged; they are removed afterwards.

Host-free: torch only (no open_clip, no modules.*).
"""

from __future__ import annotations

import math
import types
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .capture import full_precision
from .text import CHUNK_LENGTH, ChunkTarget, _embedding_overrides, eos_index, text_target, token_labels


def _sequence_first(attn: nn.MultiheadAttention) -> bool:
    # open_clip 2.20 builds nn.MultiheadAttention(d, h): sequence-first [L, N, D]; later releases use batch_first.
    return not getattr(attn, "batch_first", False)


def _probabilities(attn: nn.MultiheadAttention, x: Tensor, mask: Tensor | None) -> Tensor:
    """Attention probabilities [N, heads, L, L] of one nn.MultiheadAttention for its self-attention input x."""
    if _sequence_first(attn):
        x = x.transpose(0, 1)  # -> [N, L, D]
    x = x.float()
    d, heads = attn.embed_dim, attn.num_heads
    weight = attn.in_proj_weight.float()
    bias = attn.in_proj_bias.float() if attn.in_proj_bias is not None else None
    q = F.linear(x, weight[:d], bias[:d] if bias is not None else None)
    k = F.linear(x, weight[d : 2 * d], bias[d : 2 * d] if bias is not None else None)
    n, length, _ = x.shape
    q = q.reshape(n, length, heads, d // heads).transpose(1, 2)
    k = k.reshape(n, length, heads, d // heads).transpose(1, 2)
    logits = q @ k.transpose(-1, -2) / math.sqrt(d // heads)
    if mask is not None:
        mask = mask.to(logits.device)
        if mask.dtype == torch.bool:  # True = masked out, as nn.MultiheadAttention reads a bool mask
            mask = torch.zeros_like(mask, dtype=logits.dtype).masked_fill(mask, float("-inf"))
        logits = logits + mask.float()[..., :length, :length]
    return logits.softmax(dim=-1)


@torch.no_grad()
def openclip_self_attention(
    model: nn.Module,
    input_ids: Tensor,
    layers: int,
    overrides: Sequence[Sequence[tuple[int, Tensor]]] | None = None,
) -> Tensor:
    """Self-attention probabilities of an open_clip text tower for chunks [n, 77] -> [n, layers, heads, 77, 77].

    Runs token_embedding (+ textual-inversion `overrides`, lib_align.text's convention: (offset, vectors[k, dim])
    placed after position `offset` in row b), + positional_embedding, then resblocks[:layers] with the tower's
    attn_mask, the way ldm's FrozenOpenCLIPEmbedder.encode_with_transformer does. The caller decides `layers`: the
    blocks whose output feeds the cond (penultimate = all but the last). fp32, head-resolved.
    """
    blocks = list(model.transformer.resblocks)
    if not 1 <= layers <= len(blocks):
        raise ValueError(f"layers must be in 1..{len(blocks)}, got {layers}")
    captured: list[tuple[Tensor, Tensor | None]] = []

    def capture(module: nn.MultiheadAttention, args: tuple, kwargs: dict[str, Any]) -> None:
        query = args[0] if args else kwargs["query"]
        captured.append((query.detach(), kwargs.get("attn_mask", args[5] if len(args) > 5 else None)))

    embedding_owner = types.SimpleNamespace(get_input_embeddings=lambda: model.token_embedding)
    handles = [block.attn.register_forward_pre_hook(capture, with_kwargs=True) for block in blocks[:layers]]
    try:
        with _embedding_overrides(embedding_owner, overrides):
            x = model.token_embedding(input_ids)
        x = x + model.positional_embedding[: x.shape[1]]
        if _sequence_first(blocks[0].attn):
            x = x.permute(1, 0, 2)  # NLD -> LND, as the embedder does
        for block in blocks[:layers]:
            x = block(x, attn_mask=model.attn_mask)
    finally:
        for handle in handles:
            handle.remove()
    if len(captured) != layers:
        raise RuntimeError(f"captured {len(captured)} attention inputs for {layers} blocks")
    with full_precision(input_ids.device):
        pairs = zip(blocks[:layers], captured, strict=True)
        probs = [_probabilities(block.attn, x_in, mask) for block, (x_in, mask) in pairs]
    return torch.stack(probs, dim=1)


def openclip_chunk_targets(
    model: nn.Module,
    chunks: Tensor,
    power: float,
    layers: int,
    overrides: Sequence[Sequence[tuple[int, Tensor]]] | None = None,
    tokens: Sequence[Sequence[str]] | None = None,
) -> list[ChunkTarget]:
    """lib_align.text.chunk_targets for an open_clip tower: T per 77-token chunk from its first `layers` blocks.

    EOS is found as in SD1 (first 49407 after BOS); open_clip chunks are padded with 0 after it, which the causal
    mask keeps out of every row of T anyway.
    """
    attn = openclip_self_attention(model, chunks, layers, overrides)
    out = []
    for c in range(chunks.shape[0]):
        words = list(tokens[c]) if tokens is not None else []
        target = text_target(attn[c], eos_index(chunks[c]), power)
        out.append(ChunkTarget(offset=c * CHUNK_LENGTH, target=target, tokens=words))
    return out


class DecoderTokens:
    """The one method lib_align.text.token_labels calls, over open_clip's `SimpleTokenizer.decoder` (id -> BPE)."""

    def __init__(self, decoder: dict[int, str]) -> None:
        self.decoder = decoder

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return [self.decoder[int(i)] for i in ids]


def openclip_token_labels(
    tokenizer_or_decoder: Any, ids: Sequence[int], named: Sequence[tuple[int, int, str]] = ()
) -> list[str]:
    """Labels of one chunk's prompt tokens for an open_clip tokenizer (its `.decoder`, or that dict itself).

    Same strings as lib_align.text.token_labels gives for SD1 (BPE pieces such as "black</w>"): both tokenizers
    share CLIP's BPE vocabulary. Placeholder ids (0) of textual-inversion embeddings are named through `named`.
    """
    decoder = getattr(tokenizer_or_decoder, "decoder", tokenizer_or_decoder)
    return token_labels(DecoderTokens(decoder), ids, named)
