"""Stable Diffusion 1.x: CLIP ViT-L/14, ldm UNet with cross-attention at ds 1, 2, 4.

The paper's own setting: T from the one text encoder, maps at ds 4 (16x16 at 512^2), the cond the context tensor.
"""

from __future__ import annotations

from .base import FamilySpec, TextEncoder

CLIP_L = TextEncoder("CLIP-L", "clip_l")

SPEC = FamilySpec(name="SD1", flag="is_sd1", encoders=(CLIP_L,))
