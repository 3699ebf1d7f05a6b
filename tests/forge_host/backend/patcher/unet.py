"""Mirrors backend/patcher/unet.py: `UnetPatcher` (`sd_model.forge_objects.unet`), a ModelPatcher around a KModel
with the sampling-time extras Forge reads in backend/sampling/sampling_function.py: `controlnet_linked_list`,
`extra_concat_condition`, `extra_preserved_memory_during_sampling`, `extra_model_patchers_during_sampling`.
ControlNets: backend/patcher/controlnet.py's stand-in. Simplified: no extra torch-module binding.
"""

from __future__ import annotations

import copy
from typing import Any

from backend.modules.k_model import KModel
from backend.patcher.base import ModelPatcher


class UnetPatcher(ModelPatcher):
    @classmethod
    def from_model(cls, model: Any, diffusers_scheduler: Any, config: Any, k_predictor: Any = None) -> UnetPatcher:
        model = KModel(model=model, diffusers_scheduler=diffusers_scheduler, k_predictor=k_predictor, config=config)
        return UnetPatcher(model, load_device=model.diffusion_model.load_device,
                           offload_device=model.diffusion_model.offload_device,
                           current_device=model.diffusion_model.initial_device)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.controlnet_linked_list = None
        self.extra_preserved_memory_during_sampling = 0
        self.extra_model_patchers_during_sampling: list = []
        self.extra_concat_condition = None

    def clone(self) -> UnetPatcher:
        n = UnetPatcher(self.model, self.load_device, self.offload_device, self.size, self.current_device)
        n.lora_patches = self.lora_patches.copy()
        n.object_patches = self.object_patches.copy()
        n.model_options = copy.deepcopy(self.model_options)
        n.controlnet_linked_list = self.controlnet_linked_list
        n.extra_preserved_memory_during_sampling = self.extra_preserved_memory_during_sampling
        n.extra_model_patchers_during_sampling = self.extra_model_patchers_during_sampling.copy()
        n.extra_concat_condition = self.extra_concat_condition
        return n

    def add_extra_preserved_memory_during_sampling(self, memory_in_bytes: int) -> None:
        self.extra_preserved_memory_during_sampling += memory_in_bytes

    def add_extra_model_patcher_during_sampling(self, model_patcher: ModelPatcher) -> None:
        self.extra_model_patchers_during_sampling.append(model_patcher)

    def add_patched_controlnet(self, cnet: Any) -> None:
        cnet.set_previous_controlnet(self.controlnet_linked_list)
        self.controlnet_linked_list = cnet

    def list_controlnets(self) -> list:
        results, pointer = [], self.controlnet_linked_list
        while pointer is not None:
            results.append(pointer)
            pointer = pointer.previous_controlnet
        return results

    def append_model_option(self, k: str, v: Any, ensure_uniqueness: bool = False) -> None:
        self.model_options.setdefault(k, [])
        if not (ensure_uniqueness and v in self.model_options[k]):
            self.model_options[k].append(v)

    def append_transformer_option(self, k: str, v: Any, ensure_uniqueness: bool = False) -> None:
        to = self.model_options.setdefault("transformer_options", {})
        to.setdefault(k, [])
        if not (ensure_uniqueness and v in to[k]):
            to[k].append(v)

    def set_transformer_option(self, k: str, v: Any) -> None:
        self.model_options.setdefault("transformer_options", {})[k] = v

    def add_conditioning_modifier(self, modifier: Any, ensure_uniqueness: bool = False) -> None:
        self.append_model_option("conditioning_modifiers", modifier, ensure_uniqueness)
