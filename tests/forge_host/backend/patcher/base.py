"""Mirrors backend/patcher/base.py: `ModelPatcher`, Forge's handle on a model (ComfyUI's API): the model, its
devices, `lora_patches`, `object_patches` and `model_options` (whose "transformer_options" reach every UNet block
through the sampling function), `clone()` (same model, deep-copied options), and the patch setters.
Simplified: LoRA patches are recorded but never applied (no LoraLoader); no device moves, no object-patch
application (`forge_patch_model`).
"""

from __future__ import annotations

import copy
from typing import Any

from backend import memory_management


def set_model_options_patch_replace(model_options: dict, patch: Any, name: str, block_name: str, number: int,
                                    transformer_index: int | None = None) -> dict:
    to = dict(model_options["transformer_options"])
    to["patches_replace"] = dict(to.get("patches_replace", {}))
    to["patches_replace"][name] = dict(to["patches_replace"].get(name, {}))
    block = (block_name, number, transformer_index) if transformer_index is not None else (block_name, number)
    to["patches_replace"][name][block] = patch
    model_options["transformer_options"] = to
    return model_options


class ModelPatcher:
    def __init__(self, model: Any, load_device: Any, offload_device: Any, size: int = 0,
                 current_device: Any = None, **kwargs: Any) -> None:
        self.size = size
        self.model = model
        self.lora_patches: dict = {}
        self.object_patches: dict = {}
        self.object_patches_backup: dict = {}
        self.model_options: dict = {"transformer_options": {}}
        self.model_size()
        self.load_device = load_device
        self.offload_device = offload_device
        self.current_device = offload_device if current_device is None else current_device

    def model_size(self) -> int:
        if self.size <= 0:
            self.size = memory_management.module_size(self.model)
        return self.size

    def clone(self) -> ModelPatcher:
        n = ModelPatcher(self.model, self.load_device, self.offload_device, self.size, self.current_device)
        n.lora_patches = self.lora_patches.copy()
        n.object_patches = self.object_patches.copy()
        n.model_options = copy.deepcopy(self.model_options)
        return n

    def is_clone(self, other: Any) -> bool:
        return hasattr(other, "model") and self.model is other.model

    def has_online_lora(self) -> bool:
        return any(online for (_, _, _, online) in self.lora_patches)

    def memory_required(self, input_shape: Any) -> float:
        return self.model.memory_required(input_shape=input_shape)

    def model_dtype(self) -> Any:
        if hasattr(self.model, "get_dtype"):  # KModel has none: None, as in Forge
            return self.model.get_dtype()
        return None

    def set_model_patch(self, patch: Any, name: str) -> None:
        to = self.model_options["transformer_options"]
        to.setdefault("patches", {})
        to["patches"][name] = to["patches"].get(name, []) + [patch]

    def set_model_patch_replace(self, patch: Any, name: str, block_name: str, number: int,
                                transformer_index: int | None = None) -> None:
        self.model_options = set_model_options_patch_replace(self.model_options, patch, name, block_name, number,
                                                             transformer_index=transformer_index)

    def set_model_attn1_patch(self, patch: Any) -> None:
        self.set_model_patch(patch, "attn1_patch")

    def set_model_attn2_patch(self, patch: Any) -> None:
        self.set_model_patch(patch, "attn2_patch")

    def set_model_attn1_replace(self, patch: Any, block_name: str, number: int, transformer_index: int | None = None
                                ) -> None:
        self.set_model_patch_replace(patch, "attn1", block_name, number, transformer_index)

    def set_model_attn2_replace(self, patch: Any, block_name: str, number: int, transformer_index: int | None = None
                                ) -> None:
        self.set_model_patch_replace(patch, "attn2", block_name, number, transformer_index)

    def set_model_attn2_output_patch(self, patch: Any) -> None:
        self.set_model_patch(patch, "attn2_output_patch")

    def set_model_unet_function_wrapper(self, unet_wrapper_function: Any) -> None:
        self.model_options["model_function_wrapper"] = unet_wrapper_function

    def set_model_sampler_cfg_function(self, sampler_cfg_function: Any, disable_cfg1_optimization: bool = False
                                       ) -> None:
        self.model_options["sampler_cfg_function"] = sampler_cfg_function
        if disable_cfg1_optimization:
            self.model_options["disable_cfg1_optimization"] = True

    def add_object_patch(self, name: str, obj: Any) -> None:
        self.object_patches[name] = obj
