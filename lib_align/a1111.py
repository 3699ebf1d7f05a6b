"""AUTOMATIC1111 (1.10) glue: the only module of lib_align that imports the host's `modules.*`.

Where the update lands. The CFG denoiser builds `x_in` as a NEW tensor and passes that copy to `on_cfg_denoiser`
(modules/sd_samplers_cfg_denoiser.py), so editing `params.x` alone changes one UNet call and the sampler then mixes
D(x') with its old x. A forward pre-hook on `p.sampler.model_wrap_cfg` (registered in
`process_before_every_sampling`) keeps a reference to the sampler's own `x` (the first argument of its forward, the
sampler's loop variable); the callback optimises the conditional rows, writes the result into that tensor in place
and rebuilds `params.x` (cond rows, then the uncond rows, all copies of the same x).

State. Everything a generation needs lives in a `Job` on `p` (attribute `tsam_job`). The callback (registered once,
at script import) acts only when `params.denoiser.p` owns the job, so X/Y/Z cells (shallow copies of p) and nested
jobs (ADetailer runs whole `process_images` inside `postprocess_image`) never use or tear down another job's state.

Cleanup. The pre-hook is removed after sampling (`post_sample`), in `postprocess`, when the job fails, and — because
an exception mid-sampling skips both hooks — when the next job starts. The attention capture's hooks live inside
one `with` block per update. The callback itself stays registered; it returns at once for jobs without T-SAM.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from modules import call_queue, devices, images, prompt_parser, script_callbacks, scripts, sd_samplers_common, shared
from modules.infotext_utils import PasteField
from modules.processing import StableDiffusionProcessingTxt2Img
from PIL import Image
from torch import Tensor

from .config import AlignConfig, parse_bool
from .optimizer import IterationCallback, StepReport
from .pictures import ImageAttention, draw, image_attention, target_picture
from .session import AlignSession
from .text import ChunkTarget, chunk_targets, token_labels
from .ui import SHOW_ATTENTION, TITLE

logger = logging.getLogger("t_sam")

JOB_ATTR = "tsam_job"
# X/Y/Z axes: the enable switch and these AlignConfig fields; their labels and types come from the field table.
XYZ_FIELDS = ("step_size", "steps_fraction")
XYZ_ENABLED_LABEL = f"{TITLE} enabled"
RE_AND = re.compile(r"\bAND\b")  # the host's multi-cond separator (modules/prompt_parser.py)
RE_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")  # <lora:name:1>: the host strips these before encoding
PROMPT_ELEM_ID = "txt2img_prompt"  # the txt2img prompt textbox (modules/ui_toprow.py)
ANALYZE_STEPS = 20  # prompt editing: "Analyze prompt" shows the text in force at the first of this many steps

_hooked: list[Job] = []  # jobs holding a pre-hook; one whose sampling raised stays here until the next job starts


def tell(p: Any, message: str) -> None:
    """One line in the console and, where the host supports it, under the image in the web UI."""
    message = message.removeprefix("T-SAM: ")  # AlignConfig's own messages already carry the prefix
    logger.warning("T-SAM: %s", message)
    comment = getattr(p, "comment", None)
    if callable(comment):
        comment(f"T-SAM: {message}")


# -- settings --------------------------------------------------------------------------------------------------


def script_args(args: Sequence[Any]) -> tuple[Any, list[Any] | dict[str, Any], Any]:
    """The script's argument vector as (enabled, settings, show attention), raw values.

    Positional: `[enabled, *AlignConfig.to_args(), show_attention]` in `ui()` order; the API may leave trailing
    ones out (missing settings keep the preset's defaults, a missing switch is off). The API may instead send one
    dict in place of the first argument: "enabled" (default on), "show_attention" (default off) and named
    settings (field names, labels or infotext keys).
    """
    if not args:
        return False, [], False
    if isinstance(args[0], Mapping):
        named = {k: v for k, v in args[0].items() if k.lower() != SHOW_ATTENTION}
        show = next((v for k, v in args[0].items() if k.lower() == SHOW_ATTENTION), False)
        return args[0].get("enabled", True), named, show
    count = len(AlignConfig.settings())
    return args[0], list(args[1:1 + count]), args[1 + count] if len(args) > 1 + count else False


def is_enabled(p: Any, args: Sequence[Any]) -> bool:
    """The enable switch, unless an X/Y/Z axis set `p.tsam_enabled`. Raises ValueError for an unreadable value."""
    if getattr(p, "tsam_enabled", None) is not None:
        return parse_bool(p.tsam_enabled)
    return parse_bool(script_args(args)[0])


def read_config(p: Any, args: Sequence[Any]) -> AlignConfig:
    """The settings from the script's arguments (see `script_args`), then the X/Y/Z overrides set on p.
    Raises ValueError with a readable message for bad values."""
    config = AlignConfig.from_args(script_args(args)[1])
    overrides = {name: value for name in XYZ_FIELDS if (value := getattr(p, f"tsam_{name}", None)) is not None}
    if overrides:
        config = dataclasses.replace(config, **overrides)  # __post_init__ validates again
    return config


def shows_attention(args: Sequence[Any]) -> bool:
    """The "Show attention" switch; off when absent, as in API calls written before it existed."""
    value = script_args(args)[2]
    return parse_bool(value) if value is not None else False


def forget_infotext(p: Any) -> None:
    """Remove our keys: X/Y/Z cells share one extra_generation_params dict, so stale values would leak."""
    params = getattr(p, "extra_generation_params", None)
    if isinstance(params, dict):
        for key in AlignConfig.infotext_keys():
            params.pop(key, None)


def pasted_enabled(params: Mapping[str, Any]) -> bool:
    """The accordion is open after pasting infotext exactly when the infotext carries T-SAM settings."""
    return any(key in params for key in AlignConfig.infotext_keys())


def paste_fields(enabled: Any, controls: Sequence[Any]) -> list[PasteField]:
    """`infotext_fields` for the script: the enable switch plus one field per setting, keyed by its infotext key."""
    fields = [PasteField(enabled, pasted_enabled, api="enabled")]
    for f, control in zip(AlignConfig.settings(), controls, strict=True):
        fields.append(PasteField(control, f.metadata["key"], api=f.name))
    return fields


# -- refusals --------------------------------------------------------------------------------------------------


def refusal(p: Any) -> str | None:
    """Why T-SAM cannot run for this job, or None. Each reason is one line a user can act on."""
    reason = model_refusal(shared.sd_model)
    if reason is not None:
        return f"{reason}; generating without T-SAM."
    prompts = getattr(p, "all_prompts", None) or [getattr(p, "prompt", "")]
    if any(RE_AND.search(str(prompt)) for prompt in prompts):
        return ("prompts with AND (composable diffusion) are not supported: T needs one text per image; generating "
                "without T-SAM.")
    return None


def model_refusal(model: Any) -> str | None:
    """Why T-SAM cannot work with this host and model, or None (no trailing consequence: callers add it)."""
    if model is None:
        return "no model is loaded"
    if "modules_forge" in sys.modules:
        return ("Forge is not supported (it generates under torch.inference_mode and patches the UNet its own "
                "way)")
    if getattr(shared.cmd_opts, "lowvram", False) or getattr(model, "lowvram", False):
        return ("--lowvram moves each UNet block to the CPU after use, so the gradient T-SAM needs cannot be "
                "computed (--medvram works)")
    if getattr(model, "cond_stage_key", None) == "edit":
        return "InstructPix2Pix models are not supported"
    for flag, name in (("is_sd3", "SD3"), ("is_sdxl", "SDXL"), ("is_sd2", "SD2")):
        if getattr(model, flag, False):
            return f"{name} models are not supported yet (Stable Diffusion 1.x only)"
    wrapper = getattr(model, "cond_stage_model", None)
    supported = (getattr(model, "is_sd1", True) and hasattr(getattr(model, "model", None), "diffusion_model")
                 and hasattr(wrapper, "tokenize_line") and hasattr(getattr(wrapper, "wrapped", None), "transformer"))
    if not supported:
        return "this model type is not supported (Stable Diffusion 1.x only)"
    return None


# -- the job ---------------------------------------------------------------------------------------------------


def active_text(schedule: Sequence[Sequence[Any]], call: int) -> str:
    """The prompt text in force at denoiser call `call`: the host's rule (prompt_parser.reconstruct_cond_batch) —
    the first schedule entry whose end step is not before the call."""
    for end_at_step, text in schedule:
        if call <= end_at_step:
            return text
    return schedule[-1][1]


def prompt_targets(wrapper: Any, text: str, power: float, clip_skip: int) -> list[ChunkTarget]:
    """T per 77-token chunk of one prompt, tokenized by the host's own wrapper (emphasis, BREAK, comma
    back-tracking, textual inversion); emphasis weights scale the encoder output only, so T ignores them."""
    chunks, _ = wrapper.tokenize_line(text)
    ids = torch.tensor([chunk.tokens for chunk in chunks], dtype=torch.long, device=devices.device)
    overrides = [[(fix.offset, _vectors(fix.embedding)) for fix in chunk.fixes] for chunk in chunks]
    tokenizer = getattr(wrapper.wrapped, "tokenizer", None)  # only for the pictures' labels
    labels = None
    if tokenizer is not None:
        names = [[str(getattr(fix.embedding, "name", "embedding")) for fix in chunk.fixes] for chunk in chunks]
        labels = [token_labels(tokenizer, chunk.tokens, [(offset, len(vectors), name) for (offset, vectors), name
                                                         in zip(fixes, chunk_names, strict=True)])
                  for chunk, fixes, chunk_names in zip(chunks, overrides, names, strict=True)]
    return chunk_targets(wrapper.wrapped.transformer, ids, power, clip_skip, overrides, tokens=labels)


def _vectors(embedding: Any) -> Tensor:
    vec = embedding.vec
    return vec.get("clip_l", next(iter(vec.values()))) if isinstance(vec, dict) else vec


class Job:
    """One generation's T-SAM state, kept on its `p`."""

    measure_after = False  # diagnostics: also evaluate the loss after each update (one more UNet pass per step)

    def __init__(self, p: Any, config: AlignConfig, show: bool = False) -> None:
        self.p = p
        self.config = config
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
        self.said: set[str] = set()
        self.reports: list[StepReport] = []

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def say(self, message: str) -> None:
        if message not in self.said:
            self.said.add(message)
            tell(self.p, message)

    def stop(self, reason: str) -> None:
        """T-SAM is off for the rest of this job; what was already applied stays (it was finite)."""
        self.stopped = reason
        self.say(reason)
        self.unhook()

    def fail(self, error: BaseException) -> None:
        logger.debug("T-SAM failure", exc_info=error)
        self.stop(f"{type(error).__name__}: {error}. T-SAM is off for the rest of this generation.")

    def unhook(self) -> None:
        if self.handle is not None:
            self.handle.remove()
        self.handle = self.module = self.sampler_x = None
        if self in _hooked:
            _hooked.remove(self)

    # -- before sampling ---------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Text maps for this batch's prompts (and every prompt-editing variant), then the pre-hook."""
        p, model = self.p, shared.sd_model
        if model is not self.model:
            self.stop("the model changed after the job started; generating without T-SAM.")
            return
        steps = int(getattr(p, "firstpass_steps", None) or p.steps)  # schedules count denoiser calls, as the host's
        use_old = bool(getattr(shared.opts, "use_old_scheduling", False))
        schedules = prompt_parser.get_learned_conditioning_prompt_schedules(list(p.prompts), steps, None, use_old)
        self.schedules = [[(int(end), str(text)) for end, text in schedule] for schedule in schedules]
        clip_skip = int(getattr(shared.opts, "CLIP_stop_at_last_layers", 1) or 1)
        for schedule in self.schedules:
            for _, text in schedule:
                if text not in self.targets:
                    self.targets[text] = prompt_targets(model.cond_stage_model, text, self.config.power, clip_skip)
        if not any(chunk.length >= 2 for chunks in self.targets.values() for chunk in chunks):
            self.say("the prompt has fewer than two tokens: nothing to align; generating without T-SAM.")
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
        x, batch = self.sampler_x, len(self.schedules)
        if x is None or self.x_call != call or x.shape[0] != batch:
            self.stop("could not reach the sampler's latent; generating the rest without T-SAM.")
            return
        if shared.sd_model is not self.model:
            self.stop("the model changed during sampling (refiner?); T-SAM stops here.")
            return
        if torch.is_inference_mode_enabled():
            self.stop("sampling runs under torch.inference_mode: no gradients; generating without T-SAM.")
            return
        cond_rows, rows = params.text_cond, params.x.shape[0]
        if not isinstance(cond_rows, Tensor) or cond_rows.shape[0] != batch or rows % batch:
            self.stop("unexpected conditioning rows (multi-cond or another extension); T-SAM stops here.")
            return
        cond = {"c_crossattn": [cond_rows], "c_concat": [params.image_cond[:batch]]}
        sigma = params.sigma[:batch]
        inner = denoiser.inner_model
        textinfo = shared.state.textinfo
        # "Show attention" draws S after the optimisation: one more (no-grad, truncated) pass at the last step.
        measure = self.measure_after or (self.show and step == session.optimizer.last_step - 1)
        try:
            if hasattr(inner, "sigma_to_t"):  # k-diffusion: sigma is a noise level and x = z / c_in
                x_new, report = session.update_sigma_space(x, sigma, cond, step, inner.sigma_to_t,
                                                           on_iteration=self._progress(step, session),
                                                           measure_after=measure)
            else:  # DDIM / PLMS / UniPC: sigma is the timestep and x already is z_t
                x_new, report = session.update(x, sigma, cond, step, on_iteration=self._progress(step, session),
                                               measure_after=measure)
        finally:
            shared.state.textinfo = textinfo
        if report is None:
            return
        self.reports.append(report)
        if report.skipped_rows:
            images = ", ".join(str(r + 1) for r in report.skipped_rows)
            self.say(f"non-finite gradient (image {images}); those latents were left unchanged at that step.")
            if len(report.skipped_rows) == batch:
                return  # nothing was updated: leave the sampler's x exactly as it is
        if not bool(torch.isfinite(x_new).all()):
            self.stop("the update was not finite; T-SAM stops here.")
            return
        x.copy_(x_new.to(x.dtype))  # the sampler's own tensor: the update persists into its next step
        params.x = x.repeat(rows // batch, *([1] * (x.dim() - 1))).to(params.x.dtype)

    def _session(self, call: int, total_steps: int, x_in: Tensor) -> AlignSession:
        """The session for the texts in force at this call (prompt editing switches text mid-run)."""
        texts = tuple(active_text(schedule, call) for schedule in self.schedules)
        session = self.sessions.get(texts)
        if session is None:
            model = self.model
            session = AlignSession(model.model.diffusion_model, model.apply_model, [self.targets[t] for t in texts],
                                   self.config, total_steps, (int(x_in.shape[-2]), int(x_in.shape[-1])))
            self.sessions[texts] = session
        return session

    def _progress(self, step: int, session: AlignSession) -> IterationCallback:
        last = session.optimizer.last_step

        def on_iteration(iteration: int, planned: int) -> None:
            if shared.state.interrupted or shared.state.skipped:
                raise sd_samplers_common.InterruptedException
            shared.state.textinfo = f"T-SAM: step {step + 1}/{last}, update {iteration}/{planned}"

        return on_iteration

    # -- "Show attention" ----------------------------------------------------------------------------------------
    def keep_attention(self) -> None:
        """After a batch's sampling: what each image's pictures need (T; the maps if T-SAM ran), on the CPU."""
        if not self.show or not self.schedules:
            return
        ran = [s for s in self.sessions.values() if s.history]
        latest = max(ran, key=lambda s: s.history[-1].step, default=None)  # prompt editing: the last one used
        first = int(getattr(self.p, "iteration", 0)) * len(self.schedules)
        for b, schedule in enumerate(self.schedules):
            # Nothing optimised (too short a prompt, T-SAM stopped): T alone still explains the prompt.
            targets = latest.targets[b] if latest is not None else self.targets.get(active_text(schedule, 0), [])
            self.attention.append((first + b, image_attention(latest, b, targets, self.config.power)))

    def add_pictures(self, processed: Any) -> None:
        """Append each image's pictures to the result, after all images, each with its image's infotext. Saved
        like the images only when the user saves every image ("Always save all generated images")."""
        p, opts = self.p, shared.opts
        first = int(getattr(processed, "index_of_first_image", 0))
        shown, texts = list(processed.images), list(processed.infotexts)
        save = bool(getattr(opts, "samples_save", False)) and not getattr(p, "do_not_save_samples", False)
        for number, record in self.attention:
            index = first + number
            image = shown[index] if index < len(shown) else None
            infotext = texts[index] if index < len(texts) else processed.info
            for kind, picture in draw(record, image).named():
                if getattr(opts, "enable_pnginfo", True):
                    picture.info["parameters"] = infotext
                processed.images.append(picture)
                processed.infotexts.append(infotext)
                if save:
                    seeds, prompts = getattr(p, "all_seeds", None) or [None], getattr(p, "all_prompts", None) or [""]
                    images.save_image(picture, p.outpath_samples, "", seeds[min(number, len(seeds) - 1)],
                                      prompts[min(number, len(prompts) - 1)], opts.samples_format, info=infotext,
                                      p=p, suffix=f"-tsam-{kind}")
        self.attention.clear()


# -- the hooks the script forwards to ---------------------------------------------------------------------------


def own_job(p: Any) -> Job | None:
    job = getattr(p, JOB_ATTR, None)
    return job if isinstance(job, Job) and job.p is p else None


def process(p: Any, args: Sequence[Any]) -> None:
    """Script.process: settings, refusals, infotext; creates the job. Returns at once when T-SAM is off."""
    # A job whose sampling raised skipped post_sample and postprocess. Nested jobs (ADetailer) start only after the
    # outer sampling, in postprocess_image, when the outer job's hook is already gone, so no live hook is removed.
    for stale in list(_hooked):
        stale.unhook()
    own = own_job(p)
    if own is not None:
        own.unhook()
    setattr(p, JOB_ATTR, None)  # a shallow copy of another p (X/Y/Z cell) never uses that p's job
    try:
        if not is_enabled(p, args) or not isinstance(p, StableDiffusionProcessingTxt2Img):
            forget_infotext(p)  # img2img jobs (e.g. ADetailer's nested ones given our args) are left alone quietly
            return
        config = read_config(p, args)
    except ValueError as error:
        forget_infotext(p)
        tell(p, f"{error}; generating without T-SAM.")
        return
    reason = refusal(p)
    if reason is not None:
        forget_infotext(p)
        tell(p, reason)
        return
    p.extra_generation_params.update(config.infotext())
    setattr(p, JOB_ATTR, Job(p, config, show=shows_attention(args)))


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
    """Script.post_sample: the sampler is done with its x."""
    job = own_job(p)
    if job is not None:
        job.unhook()
        try:
            job.keep_attention()
        except Exception as error:  # pictures are a diagnostic: never fail the image for them
            job.show = False
            job.say(f"could not keep the attention maps ({type(error).__name__}: {error}); no pictures.")


def finish(p: Any, processed: Any = None) -> None:
    """Script.postprocess: the pictures, then drop the job (not reached when the generation raised; see
    `process`)."""
    job = own_job(p)
    if job is None:
        return
    job.unhook()
    setattr(p, JOB_ATTR, None)
    if job.show and processed is not None:
        try:
            job.add_pictures(processed)
        except Exception as error:
            job.say(f"could not draw the attention pictures ({type(error).__name__}: {error}).")


# -- "Analyze prompt" --------------------------------------------------------------------------------------------


def analyze_prompt(prompt: str, power: float) -> tuple[Image.Image | None, str]:
    """T of the txt2img prompt, from the text encoder alone: (picture or None, one line for the user).

    Runs only when no generation holds the host's queue lock (T's encoder pass briefly hooks the text encoder's
    embedding layer for textual-inversion tokens, which a running job's encoding must not see); otherwise it says
    so and returns at once.
    """
    reason = model_refusal(shared.sd_model)
    if reason is not None:
        return None, f"T-SAM: {reason}."
    text = RE_EXTRA_NETWORK.sub("", str(prompt or ""))
    if RE_AND.search(text):
        return None, "T-SAM: prompts with AND (composable diffusion) are not supported."
    try:
        power = float(power)
    except (TypeError, ValueError):
        power = AlignConfig().power
    use_old = bool(getattr(shared.opts, "use_old_scheduling", False))
    (schedule,) = prompt_parser.get_learned_conditioning_prompt_schedules([text], ANALYZE_STEPS, None, use_old)
    first = str(schedule[0][1])
    clip_skip = int(getattr(shared.opts, "CLIP_stop_at_last_layers", 1) or 1)
    if not call_queue.queue_lock.acquire(False):
        return None, "T-SAM: a generation is running; analyze the prompt when it is done."
    try:
        with torch.no_grad():
            targets = prompt_targets(shared.sd_model.cond_stage_model, first, power, clip_skip)
        picture = target_picture(targets, power)
    except Exception as error:
        logger.debug("T-SAM analyze failure", exc_info=error)
        return None, f"T-SAM: could not analyze the prompt ({type(error).__name__}: {error})."
    finally:
        call_queue.queue_lock.release()
    tokens = sum(chunk.length for chunk in targets)
    chunks = f" in {len(targets)} chunks" if len(targets) > 1 else ""
    edited = f" (prompt editing: the text of the first steps, \"{first}\")" if len(schedule) > 1 else ""
    if tokens < 2:
        return picture, f"T of {tokens} token{edited}: T-SAM needs at least two words to align."
    return picture, (f"T of {tokens} tokens{chunks}{edited}. Row = a word, column = an earlier word; brighter = the "
                     f"text encoder ties them more. T-SAM makes the image's S follow this.")


def on_cfg_denoiser(params: Any) -> None:
    """The one `on_cfg_denoiser` callback. Jobs without T-SAM leave at the first check."""
    job = getattr(getattr(params.denoiser, "p", None), JOB_ATTR, None)
    if job is None or job.handle is None or job.p is not params.denoiser.p:
        return
    try:
        job.on_denoiser(params)
    except Exception as error:  # Interrupt/Skip (the host's InterruptedException) is a BaseException and passes
        job.fail(error)


# -- registration ----------------------------------------------------------------------------------------------


def register_callbacks() -> None:
    """Called once when the script file is imported. The host clears all callbacks before it (re)imports scripts;
    removing ours first keeps a second import in the same session from adding a duplicate."""
    script_callbacks.remove_callbacks_for_function(on_cfg_denoiser)
    script_callbacks.remove_callbacks_for_function(add_xyz_axes)
    script_callbacks.on_cfg_denoiser(on_cfg_denoiser, name="t_sam")
    script_callbacks.on_before_ui(add_xyz_axes, name="t_sam_xyz")


def add_xyz_axes() -> None:
    """X/Y/Z plot axes: enabled, and the XYZ_FIELDS settings (labels = infotext keys). Skipped when the X/Y/Z
    script is disabled."""
    xyz = next((d.module for d in scripts.scripts_data if d.script_class.__module__ == "xyz_grid.py"), None)
    if xyz is None:
        return

    def setter(attr: str) -> Any:
        def apply(p: Any, value: Any, _values: Any) -> None:
            setattr(p, attr, value)

        return apply

    fields = {f.name: f for f in AlignConfig.settings()}
    options = [xyz.AxisOption(XYZ_ENABLED_LABEL, str, setter("tsam_enabled"), choices=lambda: ["True", "False"])]
    for name in XYZ_FIELDS:
        f = fields[name]
        options.append(xyz.AxisOption(f.metadata["key"], type(f.default), setter(f"tsam_{name}")))
    known = {option.label for option in xyz.axis_options}
    xyz.axis_options.extend(option for option in options if option.label not in known)
