"""Mirrors backend/patcher/clip.py: `CLIP` (`sd_model.forge_objects.clip`): `cond_stage_model` holds the text
encoders by name (`.clip_l`, `.clip_g`: IntegratedCLIP), `tokenizer` the tokenizers by the same names, `patcher` a
ModelPatcher around the encoders (what get_learned_conditioning loads before encoding).
Simplified: the tokenizers' ObjectDict is a namespace (attribute access, as Forge's).
"""

from __future__ import annotations

import types

import torch

from backend import memory_management
from backend.patcher.base import ModelPatcher


class JointTextEncoder(torch.nn.ModuleDict):
    pass  # encoders by name, as attributes too (nn.Module's own lookup)


class CLIP:
    def __init__(self, model_dict: dict | None = None, tokenizer_dict: dict | None = None, no_init: bool = False
                 ) -> None:
        if no_init:
            return
        self.cond_stage_model = JointTextEncoder(model_dict or {})
        self.tokenizer = types.SimpleNamespace(**(tokenizer_dict or {}))
        self.patcher = ModelPatcher(self.cond_stage_model, load_device=memory_management.text_encoder_device(),
                                    offload_device=memory_management.text_encoder_offload_device())

    def clone(self) -> CLIP:
        n = CLIP(no_init=True)
        n.patcher = self.patcher.clone()
        n.cond_stage_model = self.cond_stage_model
        n.tokenizer = self.tokenizer
        return n
