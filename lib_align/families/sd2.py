"""Stable Diffusion 2.x (512-base eps, 768-v): OpenCLIP ViT-H/14 text encoder, ldm UNet with SD1's layout.

- T from OpenCLIP-H, the one encoder, from the blocks that feed the cond (SD2's "penultimate": all but the last).
  A1111 encodes SD2 with the model's configured layer whatever its "Clip skip" setting says
  (modules/sd_hijack_open_clip.py), Forge applies the setting (floored at the engine's own minimum): each host's
  reach reads the layer its own encoder used.
- Layout level and conditioning: as SD1 (ds 4 cross-attention layers; the context tensor). The v-prediction models
  need nothing else: the update uses only the UNet's cross-attention maps, never its output, and the k-diffusion
  input scaling c_in is the same for eps and v denoisers.
"""

from __future__ import annotations

from .base import FamilySpec, TextEncoder

OPENCLIP_H = TextEncoder("OpenCLIP-H", "clip_h")

SPEC = FamilySpec(name="SD2", flag="is_sd2", encoders=(OPENCLIP_H,))
