"""'Analyze prompt': T of the txt2img prompt box, from the text encoder alone."""

from __future__ import annotations

import re

import torch
from modules import call_queue, prompt_parser, shared
from PIL import Image

from ..config import AlignConfig
from ..pictures import target_picture
from . import common
from .common import logger
from .job import clip_skip, current_family
from .refusals import RE_AND, model_refusal

RE_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")  # <lora:name:1>: the host strips these before encoding
ANALYZE_STEPS = 20  # prompt editing: "Analyze prompt" shows the text in force at the first of this many steps


def used_panels(named: list[tuple[str, list]]) -> str:
    """Which panels of a picture with several encoders' T hold the T T-SAM uses: every chunk of the first."""
    title, chunks = named[0]
    start = title.removesuffix(")")  # the drawn title adds the power inside the brackets (pictures.target_picture)
    count = len(chunks)
    which = "the panel" if count == 1 else "both panels" if count == 2 else f"all {count} panels"
    which += " (one per chunk)" if count > 1 else ""
    return f"T-SAM uses {which} titled \"{start}…\"; the others are for comparison."


def analyze_prompt(prompt: str, power: float) -> tuple[Image.Image | None, str]:
    """T of the txt2img prompt: (picture or None, one line for the user).

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
    if not call_queue.queue_lock.acquire(False):
        return None, "T-SAM: a generation is running; analyze the prompt when it is done."
    try:
        family = current_family()
        common.HOST.text_ready(family)
        with torch.no_grad():
            named = family.analysis_targets(first, power, clip_skip(family))
        targets = named[0][1]  # the T that T-SAM uses
        picture = target_picture(targets, power, named=named if len(named) > 1 else None)
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
    others = f" {used_panels(named)}" if len(named) > 1 else ""
    return picture, (f"T of {tokens} tokens{chunks}{edited}. Row = a word, column = an earlier word; brighter = the "
                     f"text encoder ties them more. T-SAM makes the image's S follow this.{others}")
