"""X/Y/Z plot axes: the switch and a few settings, set as attributes on each cell's p and read in `process`.

A cell's value goes on top of the accordion's settings (`script_args.parse_script_args`); a preset cell sets what a
preset decides (`AlignConfig.with_preset`), so "Preset: Paper, Official code" compares the two methods with the
user's other settings kept. A value a setting cannot take makes that cell run without T-SAM and say why."""

from __future__ import annotations

from typing import Any

from modules import scripts

from ..config import AlignConfig
from ..script_args import SWITCH
from ..ui import TITLE

# AlignConfig fields with an axis; labels, types and choices from the table
XYZ_FIELDS = ("preset", "step_size", "steps_fraction", "refine")
XYZ_ENABLED_LABEL = f"{TITLE} enabled"
ATTR_PREFIX = "tsam_"  # p.tsam_enabled, p.tsam_step_size, ...


def overrides(p: Any) -> dict[str, Any]:
    """The axis values set on this cell's p: {"enabled": ..., field name: ...} (absent axes are absent)."""
    names = (SWITCH, *XYZ_FIELDS)
    return {name: value for name in names if (value := getattr(p, ATTR_PREFIX + name, None)) is not None}


def add_xyz_axes() -> None:
    """Called at `on_before_ui`. Skipped when the X/Y/Z script is disabled (modules/scripts.py scripts_data holds
    the module of scripts/xyz_grid.py, whose AxisOption(label, type, apply, ..., choices=...) we append to)."""
    xyz = next((d.module for d in scripts.scripts_data if d.script_class.__module__ == "xyz_grid.py"), None)
    if xyz is None:
        return

    def setter(attr: str) -> Any:
        def apply(p: Any, value: Any, _values: Any) -> None:
            setattr(p, attr, value)

        return apply

    fields = {f.name: f for f in AlignConfig.settings()}
    options = [xyz.AxisOption(XYZ_ENABLED_LABEL, str, setter(ATTR_PREFIX + SWITCH), choices=lambda: ["True", "False"])]
    for name in XYZ_FIELDS:
        f = fields[name]
        choices = f.metadata.get("choices")
        options.append(xyz.AxisOption(f.metadata["key"], type(f.default), setter(ATTR_PREFIX + name),
                                      choices=(lambda c=choices: list(c)) if choices else None))
    known = {option.label for option in xyz.axis_options}
    xyz.axis_options.extend(option for option in options if option.label not in known)
