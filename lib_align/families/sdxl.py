"""SDXL: CLIP ViT-L/14 + OpenCLIP ViT-bigG/14, sgm UNet with cross-attention at ds 2 (depth 2) and ds 4 (depth 10).

Method decisions (README "Model families"):
- **T from CLIP-L.** The UNet attends to the concatenation [CLIP-L 768 | bigG 1280] of each token, so each token has
  one map, and its keys mix both encoders. T comes from CLIP-L's self-attention: it is the very encoder (SD1.5's
  CLIP ViT-L/14) whose attention the paper showed to carry the prompt's binding structure and whose T the published
  step sizes were tuned against; bigG's attention is untested for this. bigG's T is drawn beside it in "Analyze
  prompt" (`analysis_targets`) so that a user can see where the two encoders disagree. Not a per-image setting: a
  new argument would shift the positional API arguments of every existing caller.
- **Layout level ds 4**, the coarsest level with cross-attention: input_blocks 7, 8, the middle block and
  output_blocks 0-2, 60 of the 70 cross-attention layers (found from the structure by `capture`), 32x32 maps at
  1024^2 — the nearest to the paper's 16x16 maps at SD1's 512^2, where its objective and smoothing were tuned
  (SDXL's ds 2 level gives 64x64 maps, 16 times the paper's cells, and holds 10 layers). The truncated pass
  stops after output_blocks.2, before SDXL's two higher-resolution decoder levels.
- **Clip skip**: CLIP-L feeds the cond from `hidden_states[layer_idx]` (11 of 12 layers, sgm's layer "hidden");
  A1111 applies the "Clip skip" setting to it only with the option `sdxl_clip_l_skip` (the host adapter passes
  `clip_skip` then, None otherwise).
- **Conditioning**: the host's cond is a dict {"crossattn", "vector"}; the conditional rows of both, plus
  "c_concat", go to `apply_model` as A1111's CFG denoiser builds them (sd_samplers_cfg_denoiser.make_condition_dict).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..text import ChunkTarget
from .sd1 import SD1, clip_targets
from .sd2 import openclip_targets


def configured_clip_skip(clip_l: Any) -> int:
    """The clip skip of the layer sgm's FrozenCLIPEmbedder is configured with (`clip_l`: the embedder, with
    `.transformer` and `.layer_idx`): hidden_states[layer_idx] is the output of layer_idx layers, so the first
    layer_idx layers feed the cond (11 of 12 in SDXL base: clip skip 2). Shared with the standalone pipeline."""
    layers = len(clip_l.transformer.text_model.encoder.layers)
    return layers - int(getattr(clip_l, "layer_idx", layers) or layers) + 1


class SDXL(SD1):
    name = "SDXL"

    @classmethod
    def detect(cls, model: Any) -> bool:
        embedders = getattr(getattr(model, "conditioner", None), "embedders", None)
        return (getattr(model, "is_sdxl", False) and not getattr(model, "is_sdxl_inpaint", False)
                and hasattr(getattr(model, "model", None), "diffusion_model") and embedders is not None
                and len(embedders) >= 2 and hasattr(embedders[0], "tokenize_line")
                and hasattr(getattr(embedders[0], "wrapped", None), "transformer")
                and hasattr(embedders[1], "tokenize_line"))

    @property
    def clip_l(self) -> Any:
        return self.model.conditioner.embedders[0]

    @property
    def bigg(self) -> Any:
        return self.model.conditioner.embedders[1]

    def uses_clip_skip(self, options: Any) -> bool:
        return getattr(options, "sdxl_clip_l_skip", False) is True  # A1111's option for CLIP-L only

    def prompt_targets(self, text: str, power: float, clip_skip: int | None) -> list[ChunkTarget]:
        if clip_skip is None:  # the layer the embedder is configured with feeds the cond
            clip_skip = configured_clip_skip(self.clip_l.wrapped)
        return clip_targets(self.clip_l, text, power, clip_skip, self.device)

    def analysis_targets(self, text: str, power: float, clip_skip: int | None) -> list[tuple[str, list[ChunkTarget]]]:
        """What "Analyze prompt" draws: the T T-SAM uses, and bigG's for comparison."""
        return [("T (CLIP-L, used)", self.prompt_targets(text, power, clip_skip)),
                ("T of OpenCLIP-bigG (not used)", openclip_targets(self.bigg, text, power, self.device, "clip_g"))]

    def cond_rows(self, text_cond: Any, image_cond: Tensor, batch: int) -> Any:
        if not isinstance(text_cond, dict) or not isinstance(text_cond.get("crossattn"), torch.Tensor):
            return None
        if any(not isinstance(v, torch.Tensor) or v.shape[0] != batch for v in text_cond.values()):
            return None
        return {**{k: v[:batch] for k, v in text_cond.items()}, "c_concat": [image_cond[:batch]]}
