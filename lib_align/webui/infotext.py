"""Infotext: what a T-SAM image records, and how pasting it back (UI or API) restores the accordion.

Honesty rule: the settings keys are written only for images whose sampling T-SAM actually changed. When the user
turned T-SAM on but nothing was applied (a refusal, a prompt of one token, a failure before the first update), the
image carries `T-SAM: skipped (<reason>)` instead and no settings, so pasting it reproduces it with T-SAM closed. When
T-SAM stopped part-way, the settings are written with `T-SAM note: stopped after step k (<reason>)`; the same note
names optimised steps no gradient reached (`step k unchanged (no gradient)`), joined by "; ".
Keys are set per batch at `post_sample`, before the host builds that batch's infotexts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from modules.infotext_utils import PasteField

from ..config import AlignConfig, infotext_keys_of

SKIPPED_KEY = "T-SAM"  # "skipped (reason)": the user asked for T-SAM and nothing of it ran
NOTE_KEY = "T-SAM note"  # "stopped after step k (reason)": it ran, then stopped
MEMORY_KEY = next(f.metadata["key"] for f in AlignConfig.settings() if f.name == "low_memory")  # "auto → low"


def forget(p: Any) -> None:
    """Remove our keys: X/Y/Z cells share one extra_generation_params dict, so stale values would leak."""
    params = getattr(p, "extra_generation_params", None)
    if isinstance(params, dict):
        for key in (*AlignConfig.infotext_keys(), SKIPPED_KEY, NOTE_KEY):
            params.pop(key, None)


def record_skipped(p: Any, reason: str) -> None:
    forget(p)
    p.extra_generation_params[SKIPPED_KEY] = f"skipped ({short(reason)})"


def record_ran(p: Any, config: AlignConfig, stopped: str | None = None, last_step: int | None = None,
               unchanged_steps: Sequence[int] = (), memory: str | None = None) -> None:
    """The settings that ran (`memory`: the memory mode's value with what ran, e.g. "auto → low"), and a note when
    part of the run did not: optimised steps (0-based) that no gradient reached, and where T-SAM stopped."""
    forget(p)
    p.extra_generation_params.update(config.infotext())
    if memory is not None:
        p.extra_generation_params[MEMORY_KEY] = memory
    notes = []
    if unchanged_steps:
        steps = " ".join(str(s + 1) for s in unchanged_steps)
        notes.append(f"step{'s' if len(unchanged_steps) > 1 else ''} {steps} unchanged (no gradient)")
    if stopped is not None:
        where = f"after step {last_step + 1} " if last_step is not None else ""
        notes.append(f"stopped {where}({short(stopped)})")
    if notes:
        p.extra_generation_params[NOTE_KEY] = "; ".join(notes)


def short(reason: str) -> str:
    """A reason as an infotext value: without the "T-SAM: " some messages of AlignConfig carry, without a final
    period. Reasons never carry a consequence (common.line adds that for the user's line only)."""
    return reason.removeprefix("T-SAM: ").strip().rstrip(".")


def pasted_enabled(params: Mapping[str, Any]) -> bool:
    """The accordion is open after pasting infotext exactly when the infotext carries T-SAM settings."""
    return any(key in params for key in AlignConfig.infotext_keys())


def pasted_setting(f: Any) -> Callable[[Mapping[str, Any]], Any]:
    """A paste function for one setting: the value typed as the component holds it, or None when absent.

    Typed here because the host's API path (modules/api/api.py, Api.apply_infotext) casts a string to the
    component's value type with the type itself — bool("False") is True — while the UI path (infotext_utils
    connect_paste) special-cases "False". Returning a bool (or float, str) makes both paths agree; an unreadable
    value is left alone (None) rather than pasted wrong.
    """
    def value(params: Mapping[str, Any]) -> Any:
        key = next((k for k in infotext_keys_of(f) if k in params), None)
        if key is None:
            return None
        try:
            config = AlignConfig.from_infotext({"T-SAM preset": params.get("T-SAM preset", "Paper"), key: params[key]})
        except ValueError:
            return None
        result = getattr(config, f.name)
        if isinstance(result, tuple):
            return " ".join(f"{v:g}" for v in result)
        return result

    return value


def paste_fields(enabled: Any, controls: Sequence[Any]) -> list[PasteField]:
    """`infotext_fields` for the script: the switch plus one field per setting.

    No `api=` names: the host's API sets `api` fields as attributes of its *request model* (api.py apply_infotext,
    `setattr(request, field.api, value)`), which has no T-SAM fields and answers HTTP 500; script arguments are
    matched by component instead (`mentioned_script_args`), which needs nothing but the component.
    """
    fields = [PasteField(enabled, pasted_enabled)]
    for f, control in zip(AlignConfig.settings(), controls, strict=True):
        fields.append(PasteField(control, pasted_setting(f)))
    return fields
