"""T-SAM (Kim, Esmaeili, Qiu, CVPR 2025): align the UNet's cross-attention similarity S with the text encoder's
self-attention T by gradient steps on the latent. Host-free: torch, transformers and ldm only."""

import importlib
from typing import Any

# Re-exports, imported on first use (PEP 562): `lib_align.config` (torch-free) then loads without torch, so a
# command's `--help` or argument check answers at once.
_EXPORTS = {
    "CrossAttentionCapture": "capture", "cross_attention_layers": "capture", "level_size": "capture",
    "OFFICIAL": "config", "PAPER": "config", "PRESETS": "config", "AlignConfig": "config",
    "alignment_loss": "loss", "prompt_loss": "loss", "similarity_matrix": "loss",
    "LatentOptimizer": "optimizer", "StepReport": "optimizer", "AlignSession": "session",
    "ChunkTarget": "text", "chunk_targets": "text", "encoder_self_attention": "text", "text_target": "text",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lib_align' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


__all__ = [
    "OFFICIAL",
    "PAPER",
    "PRESETS",
    "AlignConfig",
    "AlignSession",
    "ChunkTarget",
    "CrossAttentionCapture",
    "LatentOptimizer",
    "StepReport",
    "alignment_loss",
    "chunk_targets",
    "cross_attention_layers",
    "encoder_self_attention",
    "level_size",
    "prompt_loss",
    "similarity_matrix",
    "text_target",
]
