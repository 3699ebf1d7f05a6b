"""One generation's T-SAM state: the targets T per image, the capture, the schedule, and the update itself."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from .capture import DEFAULT_LEVEL, CrossAttentionCapture, checkpointed_blocks, full_precision, top_level_blocks
from .config import MEMORY_AUTO, MEMORY_ON, AlignConfig
from .loss import loss_threshold, prompt_loss
from .optimizer import IterationCallback, LatentOptimizer, StepReport
from .own_blocks import replaced_forward, through_own_blocks
from .text import ChunkTarget

# apply_model(z, t, cond_rows) runs the (differentiable) UNet on the conditional rows; its output is not used.
ApplyModel = Callable[[Tensor, Tensor, Any], Any]


class AlignSession:
    """Steers one sampling run. `targets[b]` holds the chunk targets of image b's prompt.

    The update is taken in the eps-model's input space z_t (diffusers' latents, the paper's space). For
    k-diffusion samplers, whose x = z / c_in, use `update_sigma_space`.
    """

    def __init__(
        self,
        unet: nn.Module,
        apply_model: ApplyModel,
        targets: list[list[ChunkTarget]],
        config: AlignConfig,
        total_steps: int,
        latent_hw: tuple[int, int],
        level: int = DEFAULT_LEVEL,
        stop_early: bool = True,
    ) -> None:
        self.unet = unet
        self.apply_model = apply_model
        self.targets = targets
        self.config = config
        self.optimizer = LatentOptimizer(config, total_steps)
        self.latent_hw = latent_hw
        self.level = level
        self.stop_early = stop_early
        self.history: list[StepReport] = []
        self.first_maps: Tensor | None = None  # [B, h, w, ctx] at the first optimised step, before its update
        self.last_maps: Tensor | None = None  # [B, h, w, ctx] of the latest loss evaluation
        self.thresholds = torch.tensor([loss_threshold(t, config.refine_threshold) for t in targets])
        self._capture: CrossAttentionCapture | None = None  # built at the first update: the layer walk runs once
        # The UNet's weights stop requiring grad during our pass (see `frozen_weights`); the benchmark's reference
        # (the official pipeline's structure) turns this off.
        self.freeze_weights = True
        # The memory mode's state: checkpointing from the start with "on", after an out-of-memory with "auto".
        self.checkpointing = config.low_memory == MEMORY_ON
        self.memory_fallbacks = 0  # updates run again with checkpointing after an out-of-memory

    @property
    def has_work(self) -> bool:
        """False when no image's prompt has two tokens to align: then no UNet call is made at all."""
        return any(chunk.length >= 2 for image in self.targets for chunk in image)

    def is_active(self, step: int) -> bool:
        return self.has_work and self.optimizer.is_active(step)

    def losses(self, maps: Tensor) -> Tensor:
        """Per-image losses [B] from captured maps [B, h, w, ctx], in fp32 even under the host's autocast."""
        with full_precision(maps.device):
            return torch.stack([prompt_loss(maps[b], self.targets[b], self.config.loss_form, self.config.smooth)
                                for b in range(maps.shape[0])])

    def _capture_once(self) -> CrossAttentionCapture:
        """The session's one capture (its hooks exist only inside `update`)."""
        if self._capture is None:
            self._capture = CrossAttentionCapture(self.unet, self.latent_hw, self.level, stop_early=self.stop_early)
        return self._capture

    def update(
        self,
        z: Tensor,
        t: Tensor,
        cond: Any,
        step: int,
        on_iteration: IterationCallback | None = None,
        measure_after: bool = False,
    ) -> tuple[Tensor, StepReport | None]:
        """Optimise z (conditional rows, [B, C, h, w]) at UNet timestep t; returns the new z and what was done.

        Memory mode "auto": an out-of-memory error in the normal pass turns `checkpointing` on and the same update
        runs again once (the optimiser is a function of z: nothing of the failed attempt is kept)."""
        if not self.is_active(step):
            return z, None
        try:
            return self._update(z, t, cond, step, on_iteration, measure_after)
        except BaseException as error:
            if self.config.low_memory != MEMORY_AUTO or self.checkpointing or not is_out_of_memory(error):
                raise
        release_cached_memory()
        self.checkpointing = True
        self.memory_fallbacks += 1
        return self._update(z, t, cond, step, on_iteration, measure_after)

    def _update(self, z: Tensor, t: Tensor, cond: Any, step: int, on_iteration: IterationCallback | None,
                measure_after: bool) -> tuple[Tensor, StepReport]:
        capture = self._capture_once()
        memory_mode = checkpointed_blocks(self.unet, capture) if self.checkpointing else contextlib.nullcontext()
        frozen = frozen_weights(self.unet) if self.freeze_weights else contextlib.nullcontext()
        with capture, memory_mode, frozen:

            def loss_fn(z_: Tensor) -> Tensor:
                def forward() -> Any:
                    return self.apply_model(z_, t, cond)

                if replaced_forward(self.unet) is not None and top_level_blocks(self.unet) is not None:
                    last = capture.layers[-1].module  # another extension's forward (ControlNet): see own_blocks
                    maps = capture.run(lambda: through_own_blocks(self.unet, last, forward, capture.paused))
                else:
                    maps = capture.run(forward)
                self.last_maps = maps.detach()
                if self.first_maps is None:
                    self.first_maps = self.last_maps
                return self.losses(maps)

            z_new, report = self.optimizer.step(z, step, loss_fn, self.thresholds, on_iteration, measure_after)
        self.history.append(report)
        return z_new, report

    def update_sigma_space(
        self,
        x: Tensor,
        sigma: Tensor,
        cond: Any,
        step: int,
        sigma_to_t: Callable[[Tensor], Tensor],
        **kwargs: Any,
    ) -> tuple[Tensor, StepReport | None]:
        """The same update for a k-diffusion sampler's x = x0 + sigma*eps: the UNet sees z = x * c_in.

        Stepping z and mapping back (x = z / c_in) is the paper's update exactly; a step on x itself would need
        alpha scaled by (1 + sigma^2).
        """
        if not self.is_active(step):
            return x, None
        c_in = (1.0 / (sigma.float() ** 2 + 1.0).sqrt()).to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
        z_new, report = self.update(x * c_in, sigma_to_t(sigma), cond, step, **kwargs)
        return z_new / c_in, report


def is_out_of_memory(error: BaseException) -> bool:
    """torch's OutOfMemoryError (CUDA, and the allocators that raise it), or a RuntimeError saying so (MPS, CPU)."""
    kind = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(error, kind) or (isinstance(error, RuntimeError) and "out of memory" in str(error).lower())


def release_cached_memory() -> None:
    """What the failed attempt left in the CUDA allocator's cache goes back before the retry."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextlib.contextmanager
def frozen_weights(module: nn.Module) -> Iterator[None]:
    """The module's weights stop requiring grad for the duration of our pass and are restored after it.

    `torch.autograd.grad(loss, [z])` computes no weight gradient either way, but while the weights require grad
    autograd also keeps every layer input that only a weight gradient would need (e.g. the input of each Linear),
    a sizeable part of the pass's memory. The host itself keeps requires_grad=True: hence restore, never a global
    change.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p in params:
            p.requires_grad_(True)
