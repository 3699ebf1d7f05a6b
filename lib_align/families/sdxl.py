"""SDXL: CLIP ViT-L/14 + OpenCLIP ViT-bigG/14, sgm UNet with cross-attention at ds 2 (depth 2) and ds 4 (depth 10).

Method decisions (README "Model families"):
- **T from CLIP-L.** The UNet attends to the concatenation [CLIP-L 768 | bigG 1280] of each token, so each token has
  one map, and its keys mix both encoders. T comes from CLIP-L's self-attention: it is the very encoder (SD1.5's
  CLIP ViT-L/14) whose attention the paper showed to carry the prompt's binding structure and whose T the published
  step sizes were tuned against; bigG's attention is untested for this. bigG's T is drawn beside it in "Analyze
  prompt" so that a user can see where the two encoders disagree. Not a per-image setting: a new argument would
  shift the positional API arguments of every existing caller.
- **Layout level ds 4**, the coarsest level with cross-attention: input_blocks 7, 8, the middle block and
  output_blocks 0-2, 60 of the 70 cross-attention layers (found from the structure by `capture`), 32x32 maps at
  1024^2 — the nearest to the paper's 16x16 maps at SD1's 512^2, where its objective and smoothing were tuned
  (SDXL's ds 2 level gives 64x64 maps, 16 times the paper's cells, and holds 10 layers). The truncated pass
  stops after output_blocks.2, before SDXL's two higher-resolution decoder levels.
- **Clip skip**: CLIP-L feeds the cond from `hidden_states[layer_idx]` (11 of 12 layers, sgm's layer "hidden");
  A1111 applies its "Clip skip" setting to it only with the option `sdxl_clip_l_skip`, Forge always (floored at 2):
  each host's reach reads the layer its own encoder used.
- **Conditioning**: the cond is a dict {"crossattn", "vector"} (`pooled`): the pooled bigG embedding and the size
  embeddings travel beside the context; the conditional rows of both go to the UNet.
"""

from __future__ import annotations

from .base import FamilySpec, TextEncoder
from .sd1 import CLIP_L

OPENCLIP_BIGG = TextEncoder("OpenCLIP-bigG", "clip_g")

SPEC = FamilySpec(name="SDXL", flag="is_sdxl", encoders=(CLIP_L, OPENCLIP_BIGG), t_encoder=0, pooled=True)
