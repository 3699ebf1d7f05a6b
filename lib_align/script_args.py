"""The script's argument vector, read once, in one place: the switch, the settings and "Show attention".

Host-free: A1111 and Forge hand every script hook the same slice of `p.script_args`, positional in `ui()` order,
or (through the API) whatever the caller put there. Two forms are accepted:
- positional: `[enabled, *AlignConfig.to_args(), show_attention]`; trailing values may be missing (missing settings
  keep the preset's defaults, a missing "Show attention" is off);
- one dict in place of the first argument: "enabled" (default on; "enable" and any capitalisation are the same
  key), "show_attention" (default off) and named settings (field names, UI labels or infotext keys).
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


@dataclass
class ScriptRequest:
    """What the user asked for: on or off; when on, the settings (already validated) and whether to draw pictures."""

    enabled: bool
    config: AlignConfig | None = None
    show_attention: bool = False


def parse_script_args(args: Sequence[Any], overrides: Mapping[str, Any] | None = None) -> ScriptRequest:
    """Read the script's argument vector (see the module docstring). `overrides` are X/Y/Z axis values: "enabled"
    replaces the switch, the others replace settings by field name. Raises ValueError for anything unreadable."""
    overrides = dict(overrides or {})
    if args and isinstance(args[0], Mapping):
        enabled, named, show = _split_named(args[0])
        settings: list[Any] | dict[str, Any] = named
    else:
        count = len(AlignConfig.settings())
        enabled = args[0] if args else False
        settings = list(args[1:1 + count])
        show = args[1 + count] if len(args) > 1 + count else False
    if SWITCH in overrides:
        enabled = overrides.pop(SWITCH)
    if not parse_bool(enabled, "T-SAM enabled"):
        if isinstance(settings, dict):
            # Named settings were sent on purpose: check them even when off, so a typo is never silently dropped.
            AlignConfig.from_args(settings)
        return ScriptRequest(enabled=False)
    config = AlignConfig.from_args(settings)
    if overrides:
        config = config.replace(**overrides)
    return ScriptRequest(enabled=True, config=config,
                         show_attention=parse_bool(show, "Show attention") if show is not None else False)


def _split_named(named: Mapping[str, Any]) -> tuple[Any, dict[str, Any], Any]:
    """A dict of named arguments -> (switch, settings, show attention); the switch defaults to on."""
    enabled: Any = True
    show: Any = False
    settings: dict[str, Any] = {}
    for key, value in named.items():
        lowered = str(key).strip().lower()
        if lowered in SWITCH_ALIASES:
            enabled = value
        elif lowered in SHOW_ATTENTION_ALIASES:
            show = value
        else:
            settings[key] = value
    resolve_setting_names(settings)  # unknown names: a clear error before anything else
    return enabled, settings, show
