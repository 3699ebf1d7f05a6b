"""Mirrors backend/nn/clip.py: `IntegratedCLIP`, the wrapper Forge puts around every CLIP text encoder, CLIP-L and
OpenCLIP bigG alike: `.transformer` is a transformers `CLIPTextModel` (Forge converts open_clip checkpoints to the
transformers layout), plus `logit_scale` and, with add_text_projection, a square `transformer.text_projection`
Linear (backend/loader.py adds it to every CLIP; only bigG's pooled output goes through it).
"""

from __future__ import annotations

from typing import Any

import torch


class IntegratedCLIP(torch.nn.Module):
    def __init__(self, cls: type, config: Any, add_text_projection: bool = False) -> None:
        super().__init__()
        self.transformer = cls(config)
        self.logit_scale = torch.nn.Parameter(torch.tensor(4.6055))
        if add_text_projection:
            embed_dim = config.hidden_size
            self.transformer.text_projection = torch.nn.Linear(embed_dim, embed_dim, bias=False)
