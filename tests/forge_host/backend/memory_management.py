"""Mirrors backend/memory_management.py: the device queries and the model-loading calls Forge makes.

Simplified: CPU only, float32 everywhere, nothing is ever moved or unloaded. Stand-in only: `loaded` lists every
patcher `load_models_gpu` was given, in order, and `load_calls` each call (models, memory_required,
hard_memory_preservation), so tests can see what Forge would have loaded and with how much memory reserved. Each
patcher's `current_device` becomes its `load_device`, as Forge's LoadedModel.model_load does.
"""

from __future__ import annotations

from typing import Any

import torch

cpu = torch.device("cpu")
signal_empty_cache = False
OOM_EXCEPTION = torch.cuda.OutOfMemoryError
loaded: list[Any] = []  # stand-in only: every patcher loaded, in order
load_calls: list[dict[str, Any]] = []  # stand-in only: one entry per load_models_gpu call


def get_torch_device() -> torch.device:
    return cpu


def text_encoder_device() -> torch.device:
    return cpu


def text_encoder_offload_device() -> torch.device:
    return cpu


def unet_offload_device() -> torch.device:
    return cpu


def unet_inital_load_device(parameters: int = 0, dtype: Any = None) -> torch.device:  # sic: Forge's spelling
    return cpu


def vae_device() -> torch.device:
    return cpu


def vae_offload_device() -> torch.device:
    return cpu


def unet_dtype(device: Any = None, model_params: int = 0, supported_dtypes: Any = None) -> torch.dtype:
    return torch.float32


def get_computation_dtype(inference_device: Any = None, parameters: int = 0,
                          supported_dtypes: Any = None) -> torch.dtype:
    return torch.float32


def text_encoder_dtype(device: Any = None) -> torch.dtype:
    return torch.float32


def vae_dtype(device: Any = None, allowed_dtypes: Any = None) -> torch.dtype:
    return torch.float32


def dtype_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size() if isinstance(dtype, torch.dtype) else 1


def module_size(module: torch.nn.Module, **_: Any) -> int:
    return sum(t.nelement() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def get_free_memory(dev: Any = None, torch_free_too: bool = False) -> int:
    """Plenty: the stand-in always batches cond and uncond in one UNet call (Forge does when memory allows)."""
    free = 1 << 40
    return (free, free) if torch_free_too else free


def soft_empty_cache(force: bool = False) -> None:
    pass


def load_models_gpu(models: list[Any], memory_required: int = 0, hard_memory_preservation: int = 0) -> None:
    load_calls.append(dict(models=list(models), memory_required=memory_required,
                           hard_memory_preservation=hard_memory_preservation))
    loaded.extend(models)
    for patcher in models:
        patcher.current_device = getattr(patcher, "load_device", cpu)


def load_model_gpu(model: Any) -> None:
    return load_models_gpu([model])


def unload_all_models() -> None:
    pass
