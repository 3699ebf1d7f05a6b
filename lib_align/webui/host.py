"""The seam between the web-UI adapter and each host that runs it (A1111 1.10, Forge).

Everything in `lib_align.webui` talks to the host through the `modules.*` API that A1111 and Forge share (scripts,
callbacks, processing, infotext, X/Y/Z). What differs between them sits behind `Host`:
- how the loaded model's objects are reached (a `Host` is the `lib_align.families.Reach` of its models: the UNet,
  the text encoders and their tokenisation, the conditioning form; the families' decisions are not the host's),
- why a model cannot be aligned on this host (`model_refusal`),
- making the text encoder runnable before T is computed (`text_ready`; Forge moves models itself),
- the context our differentiable UNet pass runs in (`gradient`; Forge samples under torch.inference_mode),
- where the latent of one denoiser call is and how an update is written back so the sampler sees it
  (`step_latent`),
- which attention kernel the UNet runs (`attention_name`: the memory mode "auto" estimates the pass's need by it).
A third host (e.g. reForge) is one more module with a `Host` subclass (and its stand-in under tests/), and one more
branch in `pick_host`.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from ..families import FamilySpec, ModelFamily, Reach


@dataclass
class StepLatent:
    """One denoiser call's latent, as the update needs it.

    x: the conditional rows to optimise [batch, C, h, w]; level: sigma when `sigma_to_t` is given (x is then a
    k-diffusion latent x0 + sigma*eps), else the UNet timestep (x is then z_t); write(x_new): puts the update where
    the sampler reads it, and into this call's own input.
    """

    x: Tensor
    level: Tensor
    sigma_to_t: Callable[[Tensor], Tensor] | None
    write: Callable[[Tensor], None]


class Host(Reach):
    name: ClassVar[str] = "?"

    def family(self, model: Any) -> ModelFamily | None:
        """The family running this loaded model, or None when none supports it."""
        raise NotImplementedError

    def model_refusal(self, model: Any) -> str | None:
        """Why T-SAM cannot work with this model on this host, or None (no trailing consequence)."""
        raise NotImplementedError

    def text_ready(self, family: ModelFamily) -> None:
        """Make the family's text encoder runnable now (before T is computed)."""

    def gradient(self, unet: nn.Module) -> contextlib.AbstractContextManager:
        """The context our differentiable UNet pass runs in, inside the host's denoiser callback."""
        return contextlib.nullcontext()

    def step_latent(self, family: ModelFamily, denoiser: Any, params: Any, sampler_x: Tensor,
                    batch: int) -> StepLatent:
        """This call's latent. `sampler_x`: the first argument of the CFG denoiser's forward (the sampler's x)."""
        raise NotImplementedError

    def attention_name(self) -> str | None:
        """The name of the attention the host's UNet runs (`lib_align.memory.attention_kind` reads it)."""
        return None

    def pass_cond(self, family: ModelFamily, cond: Any, latent: StepLatent) -> Any:
        """The conditioning of T-SAM's pass for this call, with what the host adds inside its own UNet call that
        T-SAM's call of the UNet would otherwise miss (Forge: ControlNet's residuals). A1111's ControlNet replaces the
        UNet's forward instead, which `lib_align.own_blocks` handles for every host."""
        return cond


class UnsupportedHost(Host):
    """A host we recognise and cannot run on: every model is refused with the same line."""

    name = "unsupported"

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def accepts(self, model: Any, spec: FamilySpec) -> bool:
        return False

    def unsupported(self, model: Any) -> str:
        return self.reason

    def family(self, model: Any) -> ModelFamily | None:
        return None

    def model_refusal(self, model: Any) -> str | None:
        return self.reason


def pick_host() -> Host:
    """The host this process is, decided once when the script loads. Forge has `modules_forge`; its 2024 rewrite
    (the one supported) also has `backend.diffusion_engine`; reForge and older Forge have `modules_forge` without it."""
    if importlib.util.find_spec("modules_forge") is None:
        from .a1111 import A1111

        return A1111()
    if importlib.util.find_spec("backend") is None or importlib.util.find_spec("backend.diffusion_engine") is None:
        return UnsupportedHost("this Forge variant is not supported (supported: stable-diffusion-webui-forge with "
                               "its 2024 `backend`; reForge and older Forge are not)")
    from .forge import Forge

    return Forge()
