"""Stable Diffusion 1.x: CLIP ViT-L/14 (transformers `CLIPTextModel`), ldm UNet, cross-attention at ds 1, 2, 4.

T comes from the host's own tokenizer wrapper (A1111 `FrozenCLIPEmbedderWithCustomWords.tokenize_line`: emphasis,
BREAK, comma back-tracking, textual inversion) and the encoder's self-attention (`text.chunk_targets`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..text import ChunkTarget, chunk_targets, token_labels
from .base import ModelFamily


def embedding_vectors(embedding: Any, key: str) -> Tensor:
    """A textual-inversion embedding's vectors for one encoder: SD1/SD2 store a tensor, SDXL a dict per encoder
    ("clip_l", "clip_g")."""
    vec = embedding.vec
    return vec.get(key, next(iter(vec.values()))) if isinstance(vec, dict) else vec


def host_chunks(wrapper: Any, text: str, vector_key: str, device: torch.device) -> tuple[Any, Tensor, list]:
    """One prompt through the host wrapper's tokenizer: (chunks, ids [n, 77], TI overrides per chunk)."""
    chunks, _ = wrapper.tokenize_line(text)
    ids = torch.tensor([chunk.tokens for chunk in chunks], dtype=torch.long, device=device)
    overrides = [[(fix.offset, embedding_vectors(fix.embedding, vector_key)) for fix in chunk.fixes]
                 for chunk in chunks]
    return chunks, ids, overrides


def chunk_labels(chunks: Any, overrides: list, decode: Any) -> list[list[str]]:
    """Word labels per chunk; textual-inversion placeholders carry their embedding's name."""
    labels = []
    for chunk, fixes in zip(chunks, overrides, strict=True):
        named = [(offset, len(vectors), str(getattr(fix.embedding, "name", "embedding")))
                 for (offset, vectors), fix in zip(fixes, chunk.fixes, strict=True)]
        labels.append(token_labels(decode, chunk.tokens, named))
    return labels


def clip_targets(wrapper: Any, text: str, power: float, clip_skip: int, device: torch.device) -> list[ChunkTarget]:
    """T of a prompt from a host wrapper around a transformers CLIP text model (SD1's encoder, SDXL's CLIP-L)."""
    chunks, ids, overrides = host_chunks(wrapper, text, "clip_l", device)
    tokenizer = getattr(wrapper.wrapped, "tokenizer", None)  # only for the pictures' labels
    labels = chunk_labels(chunks, overrides, tokenizer) if tokenizer is not None else None
    return chunk_targets(wrapper.wrapped.transformer, ids, power, clip_skip, overrides, tokens=labels)


class SD1(ModelFamily):
    name = "SD1"

    @classmethod
    def detect(cls, model: Any) -> bool:
        wrapper = getattr(model, "cond_stage_model", None)
        if any(getattr(model, flag, False) for flag in ("is_sdxl", "is_sd3", "is_sdxl_inpaint")):
            return False
        if getattr(model, "cond_stage_key", None) == "edit":  # InstructPix2Pix: its UNet input is not the latent
            return False
        return (getattr(model, "is_sd1", False)
                and hasattr(getattr(model, "model", None), "diffusion_model")
                and hasattr(wrapper, "tokenize_line") and hasattr(getattr(wrapper, "wrapped", None), "transformer"))

    def prompt_targets(self, text: str, power: float, clip_skip: int | None) -> list[ChunkTarget]:
        return clip_targets(self.model.cond_stage_model, text, power, clip_skip, self.device)

    def cond_rows(self, text_cond: Any, image_cond: Tensor, batch: int) -> Any:
        if not isinstance(text_cond, Tensor) or text_cond.shape[0] != batch:
            return None
        return {"c_crossattn": [text_cond], "c_concat": [image_cond[:batch]]}
