"""Mirrors scripts/xyz_grid.py on what an extension touches: AxisOption, the module-level axis_options list it
appends to (found through scripts.scripts_data under the module name "xyz_grid.py"), and how one cell runs: a
shallow copy of p (sharing extra_generation_params with the other cells), the axis' apply, process_images."""

from __future__ import annotations

from copy import copy

from modules import scripts
from modules.processing import process_images


def apply_field(field):
    def fun(p, x, xs):
        setattr(p, field, x)

    return fun


def format_value_add_label(p, opt, x):
    return f"{opt.label}: {x}"


class AxisOption:
    def __init__(self, label, type, apply, format_value=format_value_add_label, confirm=None, cost=0.0,
                 choices=None, prepare=None):
        self.label = label
        self.type = type
        self.apply = apply
        self.format_value = format_value
        self.confirm = confirm
        self.cost = cost
        self.prepare = prepare
        self.choices = choices


axis_options = [
    AxisOption("Nothing", str, lambda p, x, xs: None),
    AxisOption("Seed", int, apply_field("seed")),
    AxisOption("Steps", int, apply_field("steps")),
]


def run_cells(p, label, values):
    """One row of a grid: the axis' type() converts the typed values, each cell is processed from a copy of p."""
    option = next(o for o in axis_options if o.label == label)
    typed = [option.type(v) for v in values]
    results = []
    for value in typed:
        pc = copy(p)
        option.apply(pc, value, typed)
        results.append((pc, process_images(pc)))
    return results


class Script(scripts.Script):
    def title(self):
        return "X/Y/Z plot"

    def show(self, is_img2img):
        return True  # a selectable script, not always-on
