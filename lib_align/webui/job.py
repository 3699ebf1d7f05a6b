"""One generation's T-SAM state (`Job`, kept on its `p`) and the update at each denoiser call.

Where the update lands is the host's business (`host.Host.step_latent`: A1111's CFG denoiser copies x, Forge's hands
over the sampler's own). What is common: a forward pre-hook on `p.sampler.model_wrap_cfg` (registered before
sampling) keeps a reference to the sampler's own `x` (the first argument of its forward, the sampler's loop
variable); the callback optimises the conditional rows and the host writes the result where the sampler reads it.

Ownership. The callback acts only when `params.denoiser.p` owns the job, so X/Y/Z cells (shallow copies of p) and
nested jobs (ADetailer runs whole `process_images` inside `postprocess_image`) never use another job's state.
Cleanup: the pre-hook is removed after sampling, in postprocess, when the job fails, and — because an exception
mid-sampling skips both hooks — when the next job starts (`unhook_stale`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from modules import prompt_parser, sd_samplers_common, shared
from torch import Tensor

from .. import memory
from ..capture import NotAlignable
from ..config import MEMORY_AUTO, RAN, AlignConfig
from ..families import ModelFamily
from ..optimizer import IterationCallback, StepReport
from ..pictures import ImageAttention
from ..session import AlignSession
from ..text import ChunkTarget
from . import common
from .common import JOB_ATTR, OFF_FOR_THE_REST, REST_WITHOUT, STOPS_HERE, WITHOUT, line, logger, tell

# Why an optimised step changed nothing although there were words to align (optimizer.StepReport.no_gradient).
NO_GRADIENT = ("the latent's gradient did not reach T-SAM's attention maps (another extension runs the UNet "
               "without gradient?)")
_hooked: list[Job] = []  # jobs holding a pre-hook; one whose sampling raised stays here until the next job starts


def active_text(schedule: Sequence[Sequence[Any]], call: int) -> str:
    """The prompt text in force at denoiser call `call`: the host's rule (prompt_parser.reconstruct_cond_batch) —
    the first schedule entry whose end step is not before the call."""
    for end_at_step, text in schedule:
        if call <= end_at_step:
            return text
    return schedule[-1][1]


def clip_skip(family: ModelFamily) -> int | None:
    """The "Clip skip" setting where the host applies it to the encoder T comes from; None: its configured layer."""
    if not family.uses_clip_skip(shared.opts):
        return None
    return int(getattr(shared.opts, "CLIP_stop_at_last_layers", 1) or 1)


def current_family() -> ModelFamily | None:
    return common.HOST.family(shared.sd_model)


class Job:
    """One generation's T-SAM state."""

    measure_after = False  # diagnostics: also evaluate the loss after each update (one more UNet pass per step)

    def __init__(self, p: Any, config: AlignConfig, family: ModelFamily, show: bool = False) -> None:
        self.p = p
        self.config = config
        self.family = family
        self.show = show  # "Show attention": keep each image's maps and add its pictures to the result
        self.attention: list[tuple[int, ImageAttention]] = []  # (image number in the job, what to draw)
        self.model = shared.sd_model
        self.targets: dict[str, list[ChunkTarget]] = {}  # per prompt text; the same job keeps model and clip skip
        self.schedules: list[list[tuple[int, str]]] = []  # per image: (last denoiser call, text), prompt editing
        self.sessions: dict[tuple[str, ...], AlignSession] = {}
        self.module: Any = None  # the sampler's CFG denoiser the pre-hook sits on
        self.handle: Any = None
        self.sampler_x: Tensor | None = None
        self.x_call = -1  # the denoiser call at which the pre-hook saw sampler_x
        self.done: set[int] = set()
        self.stopped: str | None = None
        self.skipped: str | None = None  # why this batch had nothing to do (recorded in its infotext)
        self.said: set[str] = set()
        self.reports: list[StepReport] = []
        self.batch_start = 0  # index in `reports` where the current batch's reports begin
        self.checkpointing = False  # memory mode auto: checkpointing chosen before the first update, or after an OOM
        self.memory_planned = False

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def say(self, message: str) -> None:
        if message not in self.said:
            self.said.add(message)
            tell(self.p, message)

    def stop(self, reason: str, consequence: str = STOPS_HERE) -> None:
        """T-SAM is off for the rest of this job; what was already applied stays (it was finite). `reason` is what
        the infotext records; the user's line adds the consequence."""
        self.stopped = reason
        self.say(line(reason, consequence))
        self.unhook()

    def fail(self, error: BaseException) -> None:
        logger.debug("T-SAM failure", exc_info=error)
        if isinstance(error, NotAlignable):  # a neighbour's doing, said in its own words (no exception name)
            self.stop(str(error), REST_WITHOUT)
            return
        self.stop(f"{type(error).__name__}: {error}", OFF_FOR_THE_REST)

    def unhook(self) -> None:
        if self.handle is not None:
            self.handle.remove()
        self.handle = self.module = self.sampler_x = None
        if self in _hooked:
            _hooked.remove(self)

    @staticmethod
    def cut_short() -> str | None:
        """Why this batch's sampling ended early, as the host's state says at post_sample (both flags are still set
        then): Interrupt or Skip, pressed during T-SAM's loop (which raises the host's InterruptedException) or
        between two steps."""
        if shared.state.interrupted:
            return "interrupted"
        if shared.state.skipped:
            return "the user skipped this image"
        return None

    def batch_reports(self) -> list[StepReport]:
        return self.reports[self.batch_start:]

    def memory_ran(self) -> str:
        """The infotext value of the memory mode: the setting, and with "auto" what ran ("auto → low")."""
        mode = self.config.low_memory
        return f"{mode}{RAN}{'low' if self.checkpointing else 'normal'}" if mode == MEMORY_AUTO else mode

    def _plan_memory(self, x: Tensor) -> None:
        """Memory mode auto, once per generation before its first update: checkpointing from the start when the
        normal pass would not fit in the device's free memory (`lib_align.memory`); else the normal pass, with the
        out-of-memory fallback behind it."""
        if self.memory_planned or self.config.low_memory != MEMORY_AUTO:
            return
        self.memory_planned = True
        dtype = next(self.family.unet.parameters()).dtype
        kind = memory.attention_kind(common.HOST.attention_name())
        choice = memory.plan(self.family.name, tuple(x.shape[-2:]), x.shape[0], kind, dtype,
                             memory.free_bytes(x.device), memory.streamed_weight_bytes(self.family.unet, x.device))
        if choice is not None and choice.low:
            self.checkpointing = True
            self.say(choice.message())

    def without_gradient(self) -> list[int]:
        """This batch's optimised steps (0-based) at which no gradient reached the maps."""
        return [r.step for r in self.batch_reports() if r.no_gradient]

    def applied_in_batch(self) -> bool:
        """Whether T-SAM changed this batch's latents (an update that was not refused for every image)."""
        batch = max(1, len(self.schedules))
        return any(r.iterations > 0 and len(r.skipped_rows) < batch for r in self.batch_reports())

    # -- before sampling ---------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Text maps for this batch's prompts (and every prompt-editing variant), then the pre-hook."""
        p, model = self.p, shared.sd_model
        self.batch_start = len(self.reports)
        self.skipped = None
        if model is not self.model:
            self.stop("the model changed after the job started", WITHOUT)
            return
        steps = int(getattr(p, "firstpass_steps", None) or p.steps)  # schedules count denoiser calls, as the host's
        use_old = bool(getattr(shared.opts, "use_old_scheduling", False))
        schedules = prompt_parser.get_learned_conditioning_prompt_schedules(list(p.prompts), steps, None, use_old)
        self.schedules = [[(int(end), str(text)) for end, text in schedule] for schedule in schedules]
        missing = dict.fromkeys(text for schedule in self.schedules for _, text in schedule if text not in self.targets)
        if missing:
            common.HOST.text_ready(self.family)
        for text in missing:
            self.targets[text] = self.family.prompt_targets(text, self.config.power, clip_skip(self.family))
        if not any(chunk.length >= 2 for chunks in self.targets.values() for chunk in chunks):
            self.skipped = "the prompt has fewer than two tokens: nothing to align"
            self.say(line(self.skipped, WITHOUT))
            return
        self.sessions.clear()
        self.done.clear()
        self.module = p.sampler.model_wrap_cfg
        self.handle = self.module.register_forward_pre_hook(self._see_x, with_kwargs=True)
        _hooked.append(self)

    def _see_x(self, module: Any, args: tuple, kwargs: dict) -> None:
        x = args[0] if args else kwargs.get("x")
        self.sampler_x = x if isinstance(x, Tensor) else None
        self.x_call = int(getattr(module, "step", -1))

    # -- at each denoiser call ---------------------------------------------------------------------------------
    def on_denoiser(self, params: Any) -> None:
        denoiser = params.denoiser
        if denoiser is not self.module or getattr(self.p, "is_hr_pass", False):
            return
        call = int(denoiser.step)
        # Second-order samplers call the model total_steps/steps times per sampler step: act on the first call.
        per_step = max(1, int(getattr(denoiser, "total_steps", 0) or 0) // max(1, int(getattr(denoiser, "steps", 1))))
        step, extra_call = divmod(call, per_step)
        if extra_call or step in self.done:
            return
        self.done.add(step)
        session = self._session(call, int(getattr(denoiser, "steps", 0) or self.p.steps), params.x)
        if not session.is_active(step):
            return
        sampler_x, batch = self.sampler_x, len(self.schedules)
        if sampler_x is None or self.x_call != call or sampler_x.shape[0] != batch:
            self.stop("could not reach the sampler's latent", REST_WITHOUT)
            return
        if shared.sd_model is not self.model:
            self.stop("the model changed during sampling (refiner?)")
            return
        cond = self.family.cond_rows(params.text_cond, params.image_cond, batch)
        if cond is None or params.x.shape[0] % batch:
            self.stop("unexpected conditioning rows (multi-cond or another extension)")
            return
        latent = common.HOST.step_latent(self.family, denoiser, params, sampler_x, batch)
        cond = common.HOST.pass_cond(self.family, cond, latent)
        textinfo = shared.state.textinfo
        # "Show attention" draws S after the optimisation: one more (no-grad, truncated) pass at the last step.
        measure = self.measure_after or (self.show and step == session.optimizer.last_step - 1)
        progress = self._progress(step, session)
        self._plan_memory(latent.x)
        session.checkpointing = session.checkpointing or self.checkpointing  # another prompt's pass ran out before
        fallbacks = session.memory_fallbacks
        try:
            with common.HOST.gradient(self.family.unet):
                if latent.sigma_to_t is not None:  # k-diffusion: level is a noise level and x = z / c_in
                    x_new, report = session.update_sigma_space(latent.x, latent.level, cond, step, latent.sigma_to_t,
                                                               on_iteration=progress, measure_after=measure)
                else:  # DDIM / PLMS / UniPC on A1111: level is the timestep and x already is z_t
                    x_new, report = session.update(latent.x, latent.level, cond, step, on_iteration=progress,
                                                   measure_after=measure)
        finally:
            shared.state.textinfo = textinfo
            self.checkpointing = self.checkpointing or session.checkpointing
        if session.memory_fallbacks > fallbacks:
            self.say("the GPU ran out of memory in T-SAM's pass; that update ran again with gradient checkpointing, "
                     "which stays on for the rest of this generation (memory mode auto).")
        if report is None:
            return
        self.reports.append(report)
        if report.no_gradient:
            self.say(f"{NO_GRADIENT} at step {step + 1}; that step was left as it was.")
            return
        if report.skipped_rows:
            images = ", ".join(str(r + 1) for r in report.skipped_rows)
            self.say(f"non-finite gradient (image {images}); those latents were left unchanged at that step.")
            if len(report.skipped_rows) == batch:
                return  # nothing was updated: leave the sampler's x exactly as it is
        if not bool(torch.isfinite(x_new).all()):
            self.stop("the update was not finite")
            return
        latent.write(x_new)

    def _session(self, call: int, total_steps: int, x_in: Tensor) -> AlignSession:
        """The session for the texts in force at this call (prompt editing switches text mid-run)."""
        texts = tuple(active_text(schedule, call) for schedule in self.schedules)
        session = self.sessions.get(texts)
        if session is None:
            family = self.family
            session = AlignSession(family.unet, family.apply_model, [self.targets[t] for t in texts], self.config,
                                   total_steps, (int(x_in.shape[-2]), int(x_in.shape[-1])), level=family.layout_level)
            self.sessions[texts] = session
        return session

    def _progress(self, step: int, session: AlignSession) -> IterationCallback:
        last = session.optimizer.last_step

        def on_iteration(iteration: int, planned: int) -> None:
            if shared.state.interrupted or shared.state.skipped:
                raise sd_samplers_common.InterruptedException
            shared.state.textinfo = f"T-SAM: step {step + 1}/{last}, update {iteration}/{planned}"

        return on_iteration


def hooked_jobs() -> list[Job]:
    """Jobs holding a pre-hook on a sampler now (after a generation: none, once the next one has started)."""
    return list(_hooked)


def own_job(p: Any) -> Job | None:
    job = getattr(p, JOB_ATTR, None)
    return job if isinstance(job, Job) and job.p is p else None


def unhook_stale() -> None:
    """A job whose sampling raised skipped post_sample and postprocess. Nested jobs (ADetailer) start only after the
    outer sampling, in postprocess_image, when the outer job's hook is already gone, so no live hook is removed."""
    for stale in list(_hooked):
        stale.unhook()
