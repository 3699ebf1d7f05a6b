"""Mirrors modules/scripts.py: Script, AlwaysVisible, scripts_data, load_scripts (clears every callback, executes
each file as a module named after it with its extension root on sys.path) and a ScriptRunner for always-on scripts
(argument slices from p.script_args; hook exceptions are reported and the job goes on, except where the host lets
them through). The API's argument handling (modules/api/api.py) and script-info (create_script_ui_inner) are here too.
Like the host, importing it patches gradio's component constructor so that every component created while a runner
is `scripts_current` is passed to each script's `after_component` (the host's IOComponent_init).
Selectable scripts: `ScriptRunner.run` as the host's (script_args[0] = the selected script's index + 1, 0 = none),
without their dropdown UI. Simplified: no user sort order, no gr.Group around each script, no before_component.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import re
import sys
from collections import namedtuple
from typing import Any

import gradio

from modules import script_callbacks

AlwaysVisible = object()
scripts_current: Any = None  # the runner whose tab's UI is being built (modules/ui.py sets it per tab)
ScriptClassData = namedtuple("ScriptClassData", ["script_class", "path", "basedir", "module"])
scripts_data: list[ScriptClassData] = []


class PostSampleArgs:
    def __init__(self, samples):
        self.samples = samples


class PostprocessImageArgs:
    def __init__(self, image):
        self.image = image


class Script:
    name = None
    section = None
    filename = None
    args_from = None
    args_to = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    create_group = True
    infotext_fields = None
    paste_field_names = None
    api_info = None
    controls = None

    def title(self):
        raise NotImplementedError()

    def ui(self, is_img2img):
        pass

    def show(self, is_img2img):
        return True

    def before_process(self, p, *args):
        pass

    def process(self, p, *args):
        pass

    def before_process_batch(self, p, *args, **kwargs):
        pass

    def process_before_every_sampling(self, p, *args, **kwargs):
        pass

    def process_batch(self, p, *args, **kwargs):
        pass

    def post_sample(self, p, ps, *args):
        pass

    def postprocess_batch(self, p, *args, **kwargs):
        pass

    def postprocess_image(self, p, pp, *args):
        pass

    def postprocess(self, p, processed, *args):
        pass

    def before_hr(self, p, *args):
        pass

    def after_component(self, component, **kwargs):
        pass

    def elem_id(self, item_id):
        need_tabname = self.show(True) == self.show(False)
        tabkind = "img2img" if self.is_img2img else "txt2img"
        tabname = f"{tabkind}_" if need_tabname else ""
        title = re.sub(r"[^a-z_0-9]", "", re.sub(r"\s", "_", self.title().lower()))
        return f"script_{tabname}{title}_{item_id}"


def load_module(path: str) -> Any:
    """script_loading.load_module: the module is named after the file (e.g. "t_sam.py")."""
    module_spec = importlib.util.spec_from_file_location(os.path.basename(path), path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def load_scripts(paths: list[tuple[str, str]]) -> None:
    """(basedir, path) per script file, in load order."""
    scripts_data.clear()
    script_callbacks.clear_callbacks()
    syspath = sys.path
    for basedir, path in paths:
        try:
            sys.path = [basedir] + sys.path
            module = load_module(path)
            for script_class in module.__dict__.values():
                if inspect.isclass(script_class) and issubclass(script_class, Script):
                    scripts_data.append(ScriptClassData(script_class, path, basedir, module))
        finally:
            sys.path = syspath


class ScriptRunner:
    """Always-on scripts of one tab. Each hook runs every script with its slice of p.script_args."""

    def __init__(self) -> None:
        self.scripts: list[Script] = []
        self.alwayson_scripts: list[Script] = []
        self.selectable_scripts: list[Script] = []  # tests append (args_from/args_to set by them)
        self.inputs: list[Any] = [None]
        self.infotext_fields: list[Any] = []
        self.paste_field_names: list[str] = []
        self.errors: list[str] = []  # stand-in only: what errors.report would have printed

    def initialize_scripts(self, is_img2img: bool) -> None:
        self.scripts.clear()
        self.alwayson_scripts.clear()
        for script_data in scripts_data:
            script = script_data.script_class()
            script.filename = script_data.path
            script.is_txt2img = not is_img2img
            script.is_img2img = is_img2img
            if script.show(is_img2img) == AlwaysVisible:
                script.alwayson = True
                self.scripts.append(script)
                self.alwayson_scripts.append(script)

    def create_script_ui(self, script: Script) -> None:
        script.args_from = script.args_to = len(self.inputs)
        controls = script.ui(script.is_img2img)
        script.controls = controls
        if controls is None:
            return
        script.name = script.title().lower()
        script.api_info = {"name": script.name, "is_img2img": script.is_img2img, "is_alwayson": script.alwayson,
                           "args": [api_arg(control) for control in controls]}
        if script.infotext_fields is not None:
            self.infotext_fields += script.infotext_fields
        if script.paste_field_names is not None:
            self.paste_field_names += script.paste_field_names
        self.inputs += controls
        script.args_to = len(self.inputs)

    def setup_ui(self) -> list[Any]:
        self.inputs = [None]
        for script in self.alwayson_scripts:
            self.create_script_ui(script)
        return self.inputs

    def default_args(self) -> list[Any]:
        """What the UI (and the API, api.py init_default_script_args) starts from: each component's value."""
        return [None if c is None else c.value for c in self.inputs]

    def run(self, p: Any, *args: Any) -> Any:
        """modules/scripts.py ScriptRunner.run: the selected script's run() with its slice of the args, or None when
        no script is selected (then txt2img calls process_images itself)."""
        script_index = args[0] if args else 0
        if not script_index:
            return None
        script = self.selectable_scripts[script_index - 1]
        return script.run(p, *args[script.args_from:script.args_to])

    def title_map(self) -> dict[str, Script]:
        return {script.title().lower(): script for script in self.scripts}

    def _run(self, name: str, p: Any, *extra: Any, **kwargs: Any) -> None:
        for script in self.alwayson_scripts:
            if getattr(type(script), name) is getattr(Script, name):
                continue
            try:
                getattr(script, name)(p, *extra, *p.script_args[script.args_from:script.args_to], **kwargs)
            except Exception as error:
                self.errors.append(f"Error running {name}: {script.filename}: {error!r}")

    def before_process(self, p):
        self._run("before_process", p)

    def process(self, p):
        self._run("process", p)

    def before_process_batch(self, p, **kwargs):
        self._run("before_process_batch", p, **kwargs)

    def process_batch(self, p, **kwargs):
        self._run("process_batch", p, **kwargs)

    def process_before_every_sampling(self, p, **kwargs):
        self._run("process_before_every_sampling", p, **kwargs)

    def post_sample(self, p, ps):
        self._run("post_sample", p, ps)

    def postprocess_batch(self, p, images, **kwargs):
        self._run("postprocess_batch", p, images=images, **kwargs)

    def postprocess_image(self, p, pp):
        self._run("postprocess_image", p, pp)

    def postprocess(self, p, processed):
        self._run("postprocess", p, processed)

    def before_hr(self, p):
        self._run("before_hr", p)

    def after_component(self, component: Any, **kwargs: Any) -> None:
        for script in self.scripts:
            try:
                script.after_component(component, **kwargs)
            except Exception as error:
                self.errors.append(f"Error running after_component: {script.filename}: {error!r}")


def _after_component(component: Any, **kwargs: Any) -> None:
    if scripts_current is not None:
        scripts_current.after_component(component, **kwargs)


if _after_component not in gradio.after_component_hooks:
    gradio.after_component_hooks.append(_after_component)


def api_arg(control: Any) -> dict[str, Any]:
    """create_script_ui_inner: one ScriptArg per control — label, value, minimum, maximum, step, choices."""
    info: dict[str, Any] = {"label": control.label or ""}
    for name in ("value", "minimum", "maximum", "step"):
        value = getattr(control, name, None)
        if value is not None:
            info[name] = value
    choices = getattr(control, "choices", None)
    if choices is not None:
        info["choices"] = [x[0] if isinstance(x, tuple) else x for x in choices]
    return info
