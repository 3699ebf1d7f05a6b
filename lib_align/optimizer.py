"""Gradient steps on the noisy latent z_t: z <- z - alpha_i * grad_z L(z), at the early sampling steps."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .config import AlignConfig

LossFn = Callable[[Tensor], Tensor]  # z [B, C, h, w] (requires grad) -> per-image losses [B]
IterationCallback = Callable[[int, int], None]  # (iteration, planned iterations); may raise to interrupt


@dataclass
class StepReport:
    """What one sampling step's optimisation did (losses per image, before the first and after the last update)."""

    step: int
    step_size: float
    iterations: int = 0
    loss_before: list[float] = field(default_factory=list)
    loss_after: list[float] | None = None
    skipped_rows: list[int] = field(default_factory=list)  # images whose update was refused (non-finite)


def loss_and_grad(z: Tensor, loss_fn: LossFn) -> tuple[Tensor, Tensor | None]:
    """Per-image losses at z and the gradient of their sum w.r.t. z only (never the model's weights).

    Images in a batch are independent in the UNet, so d(sum)/dz_b = dL_b/dz_b: one backward serves all. The
    graph is freed as soon as the gradient is taken, so nothing is kept between iterations.
    """
    z_ = z.detach().requires_grad_(True)
    with torch.enable_grad():
        losses = loss_fn(z_)
        if not losses.requires_grad:  # nothing to align (prompts of < 2 tokens)
            return losses.detach(), None
        (grad,) = torch.autograd.grad(losses.sum(), [z_])
    return losses.detach(), grad


class LatentOptimizer:
    """Applies the schedule of an AlignConfig to a sampling run of `total_steps` steps."""

    def __init__(self, config: AlignConfig, total_steps: int) -> None:
        self.config = config
        self.total_steps = total_steps
        self.last_step = config.optimised_steps(total_steps)
        self.refine_steps = config.refinement_steps(total_steps)

    def is_active(self, step: int) -> bool:
        return 0 <= step < self.last_step and self.config.step_size > 0

    def step(
        self,
        z: Tensor,
        step: int,
        loss_fn: LossFn,
        threshold: Tensor | None = None,
        on_iteration: IterationCallback | None = None,
        measure_after: bool = False,
    ) -> tuple[Tensor, StepReport]:
        """One sampling step's optimisation; returns the new z (a new tensor) and a report.

        Refinement steps first iterate while any image's loss is above its `threshold` [B] (at most
        refine_iters), then the regular single update follows, as in the official code. A non-finite loss or
        gradient for an image leaves that image's latent as it was.
        """
        cfg = self.config
        alpha = cfg.step_size_at(step, self.total_steps)
        report = StepReport(step=step, step_size=alpha)
        z = z.detach()
        planned = 1 + (cfg.refine_iters if step in self.refine_steps else 0)
        known: tuple[Tensor, Tensor | None] | None = None  # loss and gradient at the current z, while z is unmoved
        if step in self.refine_steps:
            for _ in range(cfg.refine_iters):
                losses, grad = loss_and_grad(z, loss_fn)
                known = (losses, grad)
                if not report.loss_before:
                    report.loss_before = losses.tolist()
                if grad is None:
                    break
                pending = torch.ones_like(losses, dtype=torch.bool)
                if threshold is not None:
                    # The official code's check here looks inverted (it gives up when the loss is still high);
                    # we refine while the loss is above the threshold, as Attend-and-Excite does.
                    pending = losses > threshold.to(losses.device)
                if not bool(pending.any()):
                    break
                z = self._update(z, grad, losses, alpha, report, mask=pending)
                known = None
                report.iterations += 1
                if on_iteration is not None:
                    on_iteration(report.iterations, planned)
        # A refinement that stopped on convergence has just evaluated this very z: its loss and gradient are
        # reused rather than paying another UNet forward and backward for the same numbers.
        losses, grad = known if known is not None else loss_and_grad(z, loss_fn)
        if not report.loss_before:
            report.loss_before = losses.tolist()
        if grad is not None:
            z = self._update(z, grad, losses, alpha, report)
            report.iterations += 1
        if on_iteration is not None:
            on_iteration(report.iterations, planned)
        if measure_after:
            with torch.no_grad():
                report.loss_after = loss_fn(z.detach()).detach().tolist()
        return z, report

    @staticmethod
    def _update(z: Tensor, grad: Tensor, losses: Tensor, alpha: float, report: StepReport,
                mask: Tensor | None = None) -> Tensor:
        """z - alpha * grad for the rows whose loss and gradient are finite (and in `mask`)."""
        finite = torch.isfinite(losses.to(grad.device)) & torch.isfinite(grad).flatten(1).all(dim=1)
        for row in (~finite).nonzero().flatten().tolist():
            if row not in report.skipped_rows:
                report.skipped_rows.append(row)
        keep = finite if mask is None else finite & mask.to(grad.device)
        safe = torch.where(torch.isfinite(grad), grad, torch.zeros_like(grad))
        step = alpha * safe * keep.to(grad.dtype).view(-1, *([1] * (grad.dim() - 1)))
        return z - step.to(z.dtype)
