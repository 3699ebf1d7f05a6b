"""Stable Diffusion 2.x (512-base eps, 768-v): OpenCLIP ViT-H/14 text encoder, ldm UNet with SD1's layout.

- T: open_clip's blocks use `nn.MultiheadAttention`, which the host calls with need_weights=False; the
  probabilities are recomputed from each block's own projections (`openclip_text.openclip_self_attention`), from
  the blocks that feed the cond: ldm's FrozenOpenCLIPEmbedder stops `layer_idx` blocks early (1 for SD2's
  "penultimate"). A1111 does not apply the "Clip skip" setting to SD2 (modules/sd_hijack_open_clip.py encodes with
  the model's configured layer), so neither does T.
- Tokenising: the host wrapper (`FrozenOpenCLIPEmbedderWithCustomWords.tokenize_line`), whose chunks pad with 0;
  labels from open_clip's SimpleTokenizer (already imported wherever ldm's SD2 encoder is).
- Layout level and conditioning: as SD1 (ds 4 cross-attention layers; c_crossattn / c_concat). The v-prediction
  models need nothing else: the update uses only the UNet's cross-attention maps, never its output, and the
  k-diffusion input scaling c_in is the same for eps and v denoisers.
"""

from __future__ import annotations

import sys
from typing import Any

from ..openclip_text import DecoderTokens, openclip_chunk_targets
from ..text import ChunkTarget
from .sd1 import SD1, chunk_labels, host_chunks


def openclip_decoder() -> Any:
    """open_clip's module-level tokenizer's id -> BPE table, if open_clip is loaded (labels only)."""
    module = sys.modules.get("open_clip.tokenizer")
    return getattr(getattr(module, "_tokenizer", None), "decoder", None)


def openclip_layers(wrapped: Any) -> int:
    """How many of the tower's blocks feed the cond: all but `layer_idx` (ldm/sgm: 0 for "last", 1 for
    "penultimate")."""
    return len(wrapped.model.transformer.resblocks) - int(getattr(wrapped, "layer_idx", 0) or 0)


def openclip_targets(wrapper: Any, text: str, power: float, device: Any, vector_key: str) -> list[ChunkTarget]:
    chunks, ids, overrides = host_chunks(wrapper, text, vector_key, device)
    decoder = openclip_decoder()
    labels = None
    if decoder is not None:
        labels = chunk_labels(chunks, overrides, DecoderTokens(decoder))
    return openclip_chunk_targets(wrapper.wrapped.model, ids, power, openclip_layers(wrapper.wrapped), overrides,
                                  tokens=labels)


class SD2(SD1):
    name = "SD2"

    @classmethod
    def detect(cls, model: Any) -> bool:
        wrapper = getattr(model, "cond_stage_model", None)
        return (getattr(model, "is_sd2", False) and hasattr(getattr(model, "model", None), "diffusion_model")
                and hasattr(wrapper, "tokenize_line")
                and hasattr(getattr(getattr(wrapper, "wrapped", None), "model", None), "transformer"))

    def uses_clip_skip(self, options: Any) -> bool:
        return False  # A1111 encodes SD2 with the model's configured layer whatever "Clip skip" says

    def prompt_targets(self, text: str, power: float, clip_skip: int | None) -> list[ChunkTarget]:
        return openclip_targets(self.model.cond_stage_model, text, power, self.device, "clip_g")
