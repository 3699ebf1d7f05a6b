"""Gradient steps on the noisy latent z_t: z <- z - alpha_i * grad_z L(z), at the early sampling steps."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .config import OFFICIAL_REFINE_CHECK, REFINE_OFFICIAL, REFINE_WHILE_ABOVE, AlignConfig

LossFn = Callable[[Tensor], Tensor]  # z [B, C, h, w] (requires grad) -> per-image losses [B]
IterationCallback = Callable[[int, int], None]  # (iteration, planned iterations); may raise to interrupt
Evaluation = tuple[Tensor, "Tensor | None"]  # per-image losses and the gradient w.r.t. z at one z


@dataclass
class StepReport:
    """What one sampling step's optimisation did (losses per image, before the first and after the last update)."""

    step: int
    step_size: float
    iterations: int = 0
    loss_before: list[float] = field(default_factory=list)
    loss_after: list[float] | None = None
    skipped_rows: list[int] = field(default_factory=list)  # images whose update was refused (non-finite)
    # The loss did not depend on z (no gradient, or one that is zero everywhere) although there were words to
    # align: something cut the UNet's graph (another extension's forward without gradient). Nothing was changed.
    no_gradient: bool = False


def loss_and_grad(z: Tensor, loss_fn: LossFn) -> tuple[Tensor, Tensor | None]:
    """Per-image losses at z and the gradient of their sum w.r.t. z only (never the model's weights); None when
    the losses do not depend on z (no graph reached z, or a gradient that is exactly zero everywhere).

    Images in a batch are independent in the UNet, so d(sum)/dz_b = dL_b/dz_b: one backward serves all. The
    graph is freed as soon as the gradient is taken, so nothing is kept between iterations.
    """
    # A host's inference tensor (Forge samples under inference mode) cannot require grad: a normal copy can.
    z_ = (z.clone() if z.is_inference() else z).detach().requires_grad_(True)
    with torch.enable_grad():
        losses = loss_fn(z_)
        if not losses.requires_grad:
            return losses.detach(), None
        (grad,) = torch.autograd.grad(losses.sum(), [z_], allow_unused=True)
    if grad is None or not bool(grad.any()):
        return losses.detach(), None
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

        At a refinement step the refinement loop (the config's rule, see `_refine`) runs first, then the regular
        single update follows, as in the official code. A non-finite loss or gradient for an image leaves that
        image's latent as it was.
        """
        cfg = self.config
        alpha = cfg.step_size_at(step, self.total_steps)
        report = StepReport(step=step, step_size=alpha)
        z = z.detach()
        refining = step in self.refine_steps
        planned = 1 + (cfg.refine_iters if refining else 0)
        known: Evaluation | None = None  # loss and gradient at the current z, while z is unmoved
        if refining:
            z, known = self._refine(z, loss_fn, threshold, alpha, report, planned, on_iteration)
        # A refinement that stopped on convergence has just evaluated this very z: its loss and gradient are
        # reused rather than paying another UNet forward and backward for the same numbers.
        losses, grad = known if known is not None else loss_and_grad(z, loss_fn)
        if not report.loss_before:
            report.loss_before = losses.tolist()
        if grad is not None:
            z = self._update(z, grad, losses, alpha, report)
            report.iterations += 1
        else:
            report.no_gradient = True
        if on_iteration is not None:
            on_iteration(report.iterations, planned)
        if measure_after:
            with torch.no_grad():
                report.loss_after = loss_fn(z.detach()).detach().tolist()
        return z, report

    def _refine(self, z: Tensor, loss_fn: LossFn, threshold: Tensor | None, alpha: float, report: StepReport,
                planned: int, on_iteration: IterationCallback | None) -> tuple[Tensor, Evaluation | None]:
        """The refinement loop; returns z and, when its last evaluation was at that very z, (loss, grad) there.

        Rules (per image: the released code refines each image of a batch on its own; here each row has a mask):
        - official — the released loop: `for cnt in range(cap)`: at cnt == 20 an image stops if the loss of its
          latest evaluation (the 20th, taken before the 20th update) is above the threshold; otherwise evaluate and
          update. So 20 updates, or the cap (30) for an image that was already at or below the threshold.
        - while above — evaluate; images whose loss is above the threshold are updated; stop when none is or at
          the cap.
        """
        cfg = self.config
        rule = cfg.refine
        limit = None if threshold is None else threshold.detach()
        active: Tensor | None = None  # rows still refining (official rule)
        losses: Tensor | None = None
        for cnt in range(cfg.refine_iters):
            if rule == REFINE_OFFICIAL and cnt == OFFICIAL_REFINE_CHECK and losses is not None and limit is not None:
                active = active & ~(losses > limit.to(losses.device))
            if active is not None and not bool(active.any()):
                return z, None  # every image stopped at the check; z moved after the last evaluation
            losses, grad = loss_and_grad(z, loss_fn)
            if active is None:
                active = torch.ones_like(losses, dtype=torch.bool)
            if not report.loss_before:
                report.loss_before = losses.tolist()
            if grad is None:
                return z, (losses, grad)
            pending = active
            if rule == REFINE_WHILE_ABOVE and limit is not None:
                pending = active & (losses > limit.to(losses.device))
                if not bool(pending.any()):
                    return z, (losses, grad)  # converged: this evaluation is at the current z
            z = self._update(z, grad, losses, alpha, report, mask=pending)
            report.iterations += 1
            if on_iteration is not None:
                on_iteration(report.iterations, planned)
        return z, None

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
