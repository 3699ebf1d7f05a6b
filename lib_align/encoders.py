"""T of a prompt through the text encoders as A1111 and the demo models hold them (ldm/sgm classes), and the
`tokenize_line` protocol A1111's text wrappers and Forge's classic engine share (A1111's chunking: emphasis, BREAK,
comma back-tracking, textual-inversion fixes).

Two encoder kinds: a transformers CLIP text model (`.transformer`: SD1's, SDXL's CLIP-L; every encoder on Forge)
and an open_clip tower (`.model.transformer`: SD2's OpenCLIP-H, SDXL's bigG on A1111). Which layers feed the cond
is read from the encoder object itself (`layer_idx`), or is the host's "Clip skip" where the host applies it.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import Tensor

from .openclip_text import DecoderTokens, openclip_chunk_targets
from .text import ChunkTarget, chunk_targets, token_labels


def embedding_vectors(embedding: Any, key: str) -> Tensor:
    """A textual-inversion embedding's vectors for one encoder: SD1/SD2 store a tensor, SDXL a dict per encoder
    ("clip_l", "clip_g")."""
    vec = embedding.vec
    return vec.get(key, next(iter(vec.values()))) if isinstance(vec, dict) else vec


def line_overrides(chunks: Any, key: str) -> list[list[tuple[int, Tensor]]]:
    """The textual-inversion vectors of each chunk of a `tokenize_line` result, as (offset, vectors)."""
    return [[(fix.offset, embedding_vectors(fix.embedding, key)) for fix in chunk.fixes] for chunk in chunks]


def chunk_labels(chunks: Any, overrides: list, decode: Any) -> list[list[str]]:
    """Word labels per chunk; textual-inversion placeholders carry their embedding's name."""
    labels = []
    for chunk, fixes in zip(chunks, overrides, strict=True):
        named = [(offset, len(vectors), str(getattr(fix.embedding, "name", "embedding")))
                 for (offset, vectors), fix in zip(fixes, chunk.fixes, strict=True)]
        labels.append(token_labels(decode, chunk.tokens, named))
    return labels


def openclip_decoder() -> Any:
    """open_clip's module-level tokenizer's id -> BPE table, if open_clip is loaded (labels only)."""
    module = sys.modules.get("open_clip.tokenizer")
    return getattr(getattr(module, "_tokenizer", None), "decoder", None)


def is_openclip(encoder: Any) -> bool:
    """An open_clip tower (ldm/sgm's FrozenOpenCLIPEmbedder(2)), as opposed to a transformers CLIP text model."""
    return hasattr(getattr(encoder, "model", None), "transformer") and not hasattr(encoder, "transformer")


def is_encoder(encoder: Any) -> bool:
    """An encoder object `encoder_targets` can read: a transformers CLIP model's holder or an open_clip tower."""
    return hasattr(encoder, "transformer") or is_openclip(encoder)


def openclip_layers(encoder: Any) -> int:
    """How many of an open_clip tower's blocks feed the cond: all but `layer_idx` (ldm/sgm: 0 for "last", 1 for
    "penultimate")."""
    return len(encoder.model.transformer.resblocks) - int(getattr(encoder, "layer_idx", 0) or 0)


def configured_clip_skip(encoder: Any) -> int:
    """The clip skip of the layer sgm's FrozenCLIPEmbedder is configured with (`.transformer`, `.layer_idx`):
    hidden_states[layer_idx] is the output of layer_idx layers, so the first layer_idx layers feed the cond (11 of
    12 in SDXL base: clip skip 2)."""
    layers = len(encoder.transformer.text_model.encoder.layers)
    return layers - int(getattr(encoder, "layer_idx", layers) or layers) + 1


def encoder_targets(encoder: Any, ids: Tensor, power: float, clip_skip: int | None,
                    overrides: list | None = None, tokens: list | None = None) -> list[ChunkTarget]:
    """T per chunk of token ids from an ldm/sgm encoder object, at the layers that feed its cond: an open_clip
    tower's configured blocks; a CLIP model's `clip_skip`, or its configured layer when None (sgm's `layer_idx`;
    ldm's SD1 encoder, which has none, feeds the last layer)."""
    if is_openclip(encoder):
        return openclip_chunk_targets(encoder.model, ids, power, openclip_layers(encoder), overrides, tokens=tokens)
    if clip_skip is None:
        clip_skip = configured_clip_skip(encoder) if hasattr(encoder, "layer_idx") else 1
    return chunk_targets(encoder.transformer, ids, power, clip_skip, overrides, tokens=tokens)


def wrapper_targets(wrapper: Any, key: str, text: str, power: float, clip_skip: int | None,
                    device: torch.device) -> list[ChunkTarget]:
    """T of a prompt through an A1111 text wrapper (`tokenize_line`, the ldm/sgm encoder as `.wrapped`)."""
    chunks, _ = wrapper.tokenize_line(text)
    ids = torch.tensor([chunk.tokens for chunk in chunks], dtype=torch.long, device=device)
    overrides = line_overrides(chunks, key)
    if is_openclip(wrapper.wrapped):
        decoder = openclip_decoder()
        decode = DecoderTokens(decoder) if decoder is not None else None
    else:
        decode = getattr(wrapper.wrapped, "tokenizer", None)  # only for the pictures' labels
    labels = chunk_labels(chunks, overrides, decode) if decode is not None else None
    return encoder_targets(wrapper.wrapped, ids, power, clip_skip, overrides, labels)
