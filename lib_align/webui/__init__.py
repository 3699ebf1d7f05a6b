"""The web-UI adapter (AUTOMATIC1111 1.10 and Forge): the only part of lib_align that imports a host's `modules.*`.

Both hosts share the `modules.*` API the extension uses (scripts, callbacks, processing, infotext, X/Y/Z); what
differs between them is behind `host.Host` (`a1111.py`, `forge.py`), picked once when the script loads.
This file is the list of hooks the script forwards to; each job has its own module:
`script_args` (host-free: the argument vector), `refusals`, `job` (per-generation state and the update at each
denoiser call), `infotext` (what an image records; paste fields), `output` ("Show attention" pictures and saving),
`analyze` ("Analyze prompt"), `xyz` (X/Y/Z axes). Model families (SD1, ...) are in `lib_align.families`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from modules import script_callbacks
from modules.processing import StableDiffusionProcessingTxt2Img

from ..script_args import parse_script_args
from . import infotext, output, xyz
from .analyze import analyze_prompt
from .common import JOB_ATTR, WITHOUT, line, tell
from .infotext import paste_fields
from .job import NO_GRADIENT, Job, current_family, hooked_jobs, own_job, unhook_stale
from .refusals import refusal

PROMPT_ELEM_ID = "txt2img_prompt"  # the txt2img prompt textbox (modules/ui_toprow.py)

__all__ = ["PROMPT_ELEM_ID", "Job", "hooked_jobs", "after_sampling", "analyze_prompt", "before_sampling", "finish",
           "on_cfg_denoiser", "own_job", "paste_fields", "process", "register_callbacks"]


def process(p: Any, args: Sequence[Any]) -> None:
    """Script.process: the arguments, refusals; creates the job. Returns at once when T-SAM is off."""
    unhook_stale()
    own = own_job(p)
    if own is not None:
        own.unhook()
    setattr(p, JOB_ATTR, None)  # a shallow copy of another p (X/Y/Z cell) never uses that p's job
    infotext.forget(p)
    if not isinstance(p, StableDiffusionProcessingTxt2Img):
        return  # img2img jobs (e.g. ADetailer's nested ones given our args) are left alone quietly
    try:
        request = parse_script_args(args, xyz.overrides(p))
    except ValueError as error:
        tell(p, line(str(error), WITHOUT))
        infotext.record_skipped(p, str(error))
        return
    if not request.enabled:
        return
    reason = refusal(p)
    if reason is not None:
        tell(p, line(reason, WITHOUT))
        infotext.record_skipped(p, reason)
        return
    show = request.show_attention
    if show and selectable_script_runs(p):
        tell(p, PICTURES_UNDER_A_SCRIPT)
        show = False
    setattr(p, JOB_ATTR, Job(p, request.config, current_family(), show=show))


# A selectable script (X/Y/Z plot, Prompt matrix, ...) builds its grid from `processed.images` (prompt_matrix.py
# asserts their count) or keeps only its cells' images; neither host gives extra pictures a place of their own there
# (A1111 1.10 has none; Forge's `extra_result_images` are dropped with X/Y/Z's cells). So they are left out.
PICTURES_UNDER_A_SCRIPT = ("Show attention adds no pictures while a script (X/Y/Z plot, Prompt matrix, ...) runs: "
                           "it builds its grid from the images; T-SAM itself runs")


def selectable_script_runs(p: Any) -> bool:
    """Whether a selectable script runs this job: the host puts its index + 1 in script_args[0]
    (modules/scripts.py ScriptRunner.run; 0 = none). X/Y/Z cells are copies of p with the same args."""
    args = getattr(p, "script_args", None) or [0]
    try:
        return int(args[0] or 0) > 0
    except (TypeError, ValueError):
        return False


def before_sampling(p: Any) -> None:
    """Script.process_before_every_sampling: first pass only (hires fix's second pass is left alone)."""
    job = own_job(p)
    if job is None:
        return
    job.unhook()
    if job.stopped or getattr(p, "is_hr_pass", False):
        return
    try:
        job.prepare()
    except Exception as error:  # our failure must never fail the image
        job.fail(error)


def after_sampling(p: Any) -> None:
    """Script.post_sample: the sampler is done with its x; this batch's infotext says what T-SAM did to it."""
    job = own_job(p)
    if job is None:
        return
    job.unhook()
    cut = job.stopped or job.cut_short()
    missing = job.without_gradient()
    if job.applied_in_batch():
        last = max(r.step for r in job.batch_reports() if r.iterations > 0)
        infotext.record_ran(p, job.config, cut, last, unchanged_steps=missing, memory=job.memory_ran())
    elif missing:
        infotext.record_skipped(p, cut or NO_GRADIENT)
    else:
        infotext.record_skipped(p, job.skipped or cut or "no step was optimised (strength 0, or no optimised "
                                                         "step within the sampling steps)")
    try:
        output.keep_attention(job)
    except Exception as error:  # pictures are a diagnostic: never fail the image for them
        job.show = False
        job.say(f"could not keep the attention maps ({type(error).__name__}: {error}); no pictures.")


def finish(p: Any, processed: Any = None) -> None:
    """Script.postprocess: the pictures, then drop the job (not reached when the generation raised; see
    `job.unhook_stale`)."""
    job = own_job(p)
    if job is None:
        return
    job.unhook()
    setattr(p, JOB_ATTR, None)
    if job.show and processed is not None:
        try:
            output.add_pictures(job, processed)
        except Exception as error:
            job.say(f"could not draw the attention pictures ({type(error).__name__}: {error}).")


def on_cfg_denoiser(params: Any) -> None:
    """The one `on_cfg_denoiser` callback. Jobs without T-SAM leave at the first check."""
    job = getattr(getattr(params.denoiser, "p", None), JOB_ATTR, None)
    if job is None or job.handle is None or job.p is not params.denoiser.p:
        return
    try:
        job.on_denoiser(params)
    except Exception as error:  # Interrupt/Skip (the host's InterruptedException) is a BaseException and passes
        job.fail(error)


def register_callbacks() -> None:
    """Called once when the script file is imported. The host clears all callbacks before it (re)imports scripts;
    removing ours first keeps a second import in the same session from adding a duplicate."""
    script_callbacks.remove_callbacks_for_function(on_cfg_denoiser)
    script_callbacks.remove_callbacks_for_function(xyz.add_xyz_axes)
    script_callbacks.on_cfg_denoiser(on_cfg_denoiser, name="t_sam")
    script_callbacks.on_before_ui(xyz.add_xyz_axes, name="t_sam_xyz")
    # Also now: the built-in scripts (xyz_grid.py among them) load before extensions, and with --nowebui the X/Y/Z
    # script's axis list (its `current_axis_options`, which API calls index) is taken before before_ui runs.
    xyz.add_xyz_axes()
