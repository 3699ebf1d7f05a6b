"""A family's decisions (`FamilySpec`), how a host reaches a loaded model's objects (`Reach`), and the two bound
(`ModelFamily`): see `lib_align.families`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..capture import DEFAULT_LEVEL
from ..text import ChunkTarget


@dataclass(frozen=True)
class TextEncoder:
    """One of a family's text encoders. `label`: its name in pictures and messages; `embedding_key`: the key of its
    vectors in a textual-inversion embedding that holds one set per encoder (SDXL's "clip_l" / "clip_g")."""

    label: str
    embedding_key: str


@dataclass(frozen=True)
class FamilySpec:
    """What T-SAM does with one model family, decided once for every host.

    name: the family's name in messages and the key of its row in `lib_align.memory`'s table.
    flag: the boolean both hosts set on a loaded model of this family (A1111 modules/sd_models.py set_model_type,
      Forge backend/diffusion_engine/*.py): `is_sd1`, `is_sd2`, `is_sdxl`.
    encoders: the text encoders in the order the model holds them (SDXL: conditioner.embedders / Forge's engine_l,
      engine_g).
    t_encoder: the index of the encoder whose self-attention gives T; the others are drawn beside it by "Analyze
      prompt". T always comes from the layers that fed this job's cond: which ones is the host's to find.
    layout_level: the UNet level (latent / ds) whose cross-attention maps are aligned; 4 = the paper's 16x16 maps
      at SD1's 512^2.
    pooled: the host's cond is {"crossattn", "vector"} (a pooled embedding beside the context), not the context.
    """

    name: str
    flag: str
    encoders: tuple[TextEncoder, ...]
    t_encoder: int = 0
    layout_level: int = DEFAULT_LEVEL
    pooled: bool = False

    def analysis_titles(self) -> list[tuple[int, str]]:
        """(encoder index, title) of each T "Analyze prompt" draws, the used one first."""
        if len(self.encoders) == 1:
            return [(self.t_encoder, "T")]
        used = self.encoders[self.t_encoder].label
        return [(self.t_encoder, f"T ({used}, used)")] + [
            (i, f"T of {encoder.label} (not used)") for i, encoder in enumerate(self.encoders) if i != self.t_encoder]


class Reach:
    """How one host finds a family's objects in its loaded model; no method decisions (those are the spec's).

    A1111's is in `lib_align.webui.a1111`, Forge's in `lib_align.webui.forge` (each host adapter is its reach), the
    demo's in `standalone.pipeline`."""

    def accepts(self, model: Any, spec: FamilySpec) -> bool:
        """Whether `model` is a model of this family that this reach can run (its flag, and the objects it reads)."""
        raise NotImplementedError

    def unsupported(self, model: Any) -> str:
        """Why no family runs this model here (no trailing consequence: callers add it)."""
        raise NotImplementedError

    def unet(self, model: Any) -> nn.Module:
        return model.model.diffusion_model

    def apply_model(self, model: Any, z: Tensor, t: Tensor, cond: Any) -> Any:
        """The differentiable UNet call on the conditional rows, `cond` as `cond_rows` made it."""
        return model.apply_model(z, t, cond)

    def targets(self, model: Any, spec: FamilySpec, encoder: int, text: str, power: float, clip_skip: int | None,
                device: torch.device) -> list[ChunkTarget]:
        """T per 77-token chunk of one prompt from the model's `encoder`-th text encoder, tokenised as the host
        tokenises it, at the layers that fed the cond. `clip_skip`: the host's setting where `uses_clip_skip`."""
        raise NotImplementedError

    def uses_clip_skip(self, model: Any, spec: FamilySpec, options: Any) -> bool:
        """Whether the host applies its "Clip skip" setting (`options`: its settings object) to the T encoder."""
        return False

    def cond_rows(self, spec: FamilySpec, text_cond: Any, image_cond: Tensor, batch: int) -> Any:
        """The conditioning of the first `batch` rows (the conditional ones) in the form `apply_model` takes, or
        None when the rows are not one per image (multi-cond, another extension's extra rows)."""
        raise NotImplementedError


def batch_rows(spec: FamilySpec, text_cond: Any, batch: int) -> Tensor | dict[str, Tensor] | None:
    """The host's text cond when it holds one row per image (a tensor, or for a pooled family a dict of tensors with
    "crossattn"), else None. The hosts' `cond_rows` put it into their UNet call's form."""
    if not spec.pooled:
        return text_cond if isinstance(text_cond, Tensor) and text_cond.shape[0] == batch else None
    if not isinstance(text_cond, dict) or not isinstance(text_cond.get("crossattn"), Tensor):
        return None
    if any(not isinstance(v, Tensor) or v.shape[0] != batch for v in text_cond.values()):
        return None
    return text_cond


class ModelFamily:
    """A family spec bound to one loaded model through a host's reach: what the method code talks to."""

    def __init__(self, spec: FamilySpec, reach: Reach, model: Any, device: torch.device | None = None) -> None:
        self.spec, self.reach, self.model = spec, reach, model
        self._device = device

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def layout_level(self) -> int:
        return self.spec.layout_level

    @property
    def device(self) -> torch.device:
        """Where token ids go: the host's compute device (with --medvram the encoder is moved there on use, so its
        parameters' device at this moment is not the answer); standalone, the UNet's."""
        if self._device is None:
            self._device = next(self.unet.parameters(), torch.empty(0)).device
        return self._device

    @property
    def unet(self) -> nn.Module:
        return self.reach.unet(self.model)  # read live: Forge swaps its UNet patcher per batch (LoRA)

    def apply_model(self, z: Tensor, t: Tensor, cond: Any) -> Any:
        return self.reach.apply_model(self.model, z, t, cond)

    def prompt_targets(self, text: str, power: float, clip_skip: int | None) -> list[ChunkTarget]:
        """T per 77-token chunk of one prompt, with word labels. `clip_skip`: the host's "Clip skip" where it
        applies to the T encoder (`uses_clip_skip`), None where the encoder's configured layer feeds the cond."""
        return self.reach.targets(self.model, self.spec, self.spec.t_encoder, text, power, clip_skip, self.device)

    def uses_clip_skip(self, options: Any) -> bool:
        return self.reach.uses_clip_skip(self.model, self.spec, options)

    def analysis_targets(self, text: str, power: float, clip_skip: int | None) -> list[tuple[str, list[ChunkTarget]]]:
        """What "Analyze prompt" draws: (title, T per chunk) per encoder, the T that T-SAM uses first."""
        out = []
        for index, title in self.spec.analysis_titles():
            skip = clip_skip if index == self.spec.t_encoder else None  # the setting reaches the T encoder only
            out.append((title, self.reach.targets(self.model, self.spec, index, text, power, skip, self.device)))
        return out

    def cond_rows(self, text_cond: Any, image_cond: Tensor, batch: int) -> Any:
        return self.reach.cond_rows(self.spec, text_cond, image_cond, batch)
