"""The script's argument vector, read once, in one place: the switch, the settings and "Show attention".

Host-free: A1111 and Forge hand every script hook the same slice of `p.script_args`, positional in `ui()` order,
or (through the API) whatever the caller put there. Two forms are accepted:
- positional: the names of `POSITIONAL`, in that order; trailing values may be missing (missing settings keep the
  preset's defaults, a missing "Show attention" is off). `POSITIONAL` is frozen: every layout ever released is a
  prefix of it, so an old list keeps its meaning; a new argument is appended at its end, never inserted.
- one dict in place of the first argument (the stable API): "enabled" (default on; "enable" and any capitalisation
  are the same key), "show_attention" and named settings (field names, UI labels or infotext keys). The host fills
  the positions after the dict with the UI's defaults or, when the request carries an `infotext`, with that
  infotext's T-SAM settings (modules/api/api.py, `init_script_args` after `apply_infotext`): those come first and
  the dict's keys go on top. A "preset" key sets what a preset decides (`AlignConfig.with_preset`).
The switch has exactly one owner here: `ScriptRequest.enabled`. Every boolean, in either form, is read by
`config.parse_bool`; a key that is not a setting, an unreadable value or an out-of-range one is a ValueError with a
message that names the argument — never silently dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .config import AlignConfig, parse_bool, resolve_setting_names

SWITCH = "enabled"  # the API dict's name of the on/off switch
SWITCH_ALIASES = ("enabled", "enable")
SHOW_ATTENTION = "show_attention"  # the API dict's name (and the UI's item id) of the "Show attention" switch
SHOW_ATTENTION_ALIASES = ("show_attention", "show attention")

# The positional vector, as released (git history of this repository): 076e875 sent the first 12 (no low_memory,
# no show_attention), 5e5dfa5 the first 13 (README's positional example since then), 0abaad3 all 14. Each layout is
# a prefix of the next, which is why a new argument may only be appended here — the UI's inputs follow this order.
POSITIONAL = (SWITCH, "preset", "loss_form", "power", "step_size", "step_decay", "steps_fraction", "refine",
              "refine_at", "refine_iters", "refine_threshold", "smooth", "low_memory", SHOW_ATTENTION)


@dataclass
class ScriptRequest:
    """What the user asked for: on or off; when on, the settings (already validated) and whether to draw pictures."""

    enabled: bool
    config: AlignConfig | None = None
    show_attention: bool = False


def positional_args(enabled: Any, config: AlignConfig, show_attention: Any = False) -> list[Any]:
    """The positional vector for these values, in `POSITIONAL` order (what `ui()` returns and the API accepts)."""
    values = {SWITCH: enabled, SHOW_ATTENTION: show_attention, **dict(zip(
        (f.name for f in AlignConfig.settings()), config.to_args(), strict=True))}
    return [values[name] for name in POSITIONAL]


def parse_script_args(args: Sequence[Any], overrides: Mapping[str, Any] | None = None) -> ScriptRequest:
    """Read the script's argument vector (see the module docstring). `overrides` are X/Y/Z axis values: "enabled"
    replaces the switch, the others replace settings by field name, on top of everything else. Raises ValueError
    for anything unreadable."""
    overrides = dict(overrides or {})
    named: dict[str, Any] = {}
    if args and isinstance(args[0], Mapping):
        named = _resolve_named(args[0])
        args = [True, *args[1:]]  # the dict's switch defaults to on; the positions after it are the host's
    if len(args) > len(POSITIONAL):
        raise ValueError(f"T-SAM: expected at most {len(POSITIONAL)} arguments "
                         f"({', '.join(POSITIONAL)}), got {len(args)}")
    given = {name: value for name, value in zip(POSITIONAL, args, strict=False) if value is not None}
    enabled = given.pop(SWITCH, False)
    show = given.pop(SHOW_ATTENTION, False)
    enabled = named.pop(SWITCH, enabled)
    show = named.pop(SHOW_ATTENTION, show)
    enabled = overrides.pop(SWITCH, enabled)
    if not parse_bool(enabled, "T-SAM enabled"):
        if named:
            # Named settings were sent on purpose: check them even when off, so a typo is never silently dropped.
            _on_top(AlignConfig(), named)
        return ScriptRequest(enabled=False)
    config = _on_top(_on_top(AlignConfig.from_args(given), named), overrides)
    return ScriptRequest(enabled=True, config=config, show_attention=parse_bool(show, "Show attention"))


def _on_top(config: AlignConfig, changes: Mapping[str, Any]) -> AlignConfig:
    """`config` with named settings put on top: a preset first (it sets what a preset decides), then the rest."""
    changes = dict(changes)
    if "preset" in changes:
        config = config.with_preset(changes.pop("preset"))
    return config.replace(**changes) if changes else config


def _resolve_named(named: Mapping[str, Any]) -> dict[str, Any]:
    """A dict of named arguments -> {"enabled"?, "show_attention"?, setting field name: value}; unknown names are a
    clear error before anything else."""
    out: dict[str, Any] = {}
    settings: dict[str, Any] = {}
    for key, value in named.items():
        lowered = str(key).strip().lower()
        if lowered in SWITCH_ALIASES:
            out[SWITCH] = value
        elif lowered in SHOW_ATTENTION_ALIASES:
            out[SHOW_ATTENTION] = value
        else:
            settings[key] = value
    return {**out, **resolve_setting_names(settings)}
