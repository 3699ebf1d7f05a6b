"""T-SAM (Kim, Esmaeili, Qiu, CVPR 2025): align the UNet's cross-attention similarity S with the text encoder's
self-attention T by gradient steps on the latent. Host-free: torch, transformers and ldm only."""

from .capture import CrossAttentionCapture, cross_attention_layers, level_size
from .config import OFFICIAL, PAPER, PRESETS, AlignConfig
from .loss import alignment_loss, prompt_loss, similarity_matrix
from .optimizer import LatentOptimizer, StepReport
from .session import AlignSession
from .text import ChunkTarget, chunk_targets, encoder_self_attention, text_target

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
