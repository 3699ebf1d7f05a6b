"""Why T-SAM cannot run for a job or a model: each reason is one line a user can act on."""

from __future__ import annotations

import re
from typing import Any

from modules import shared

from . import common

RE_AND = re.compile(r"\bAND\b")  # the host's multi-cond separator (modules/prompt_parser.py)


def refusal(p: Any) -> str | None:
    """Why T-SAM cannot run for this job (a short reason for the infotext's "skipped (...)"), or None."""
    reason = model_refusal(shared.sd_model)
    if reason is not None:
        return reason
    prompts = getattr(p, "all_prompts", None) or [getattr(p, "prompt", "")]
    if any(RE_AND.search(str(prompt)) for prompt in prompts):
        return "prompts with AND (composable diffusion) are not supported: T needs one text per image"
    return None


def model_refusal(model: Any) -> str | None:
    """Why T-SAM cannot work with this host and model, or None (no trailing consequence: callers add it)."""
    if model is None:
        return "no model is loaded"
    return common.HOST.model_refusal(model)
