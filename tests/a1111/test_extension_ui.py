"""The A1111 script's surface in the stand-in host: UI built from AlignConfig's table, infotext and paste, API
arguments (positional and dict) and script-info, X/Y/Z axes, install.py, README and javascript."""

from __future__ import annotations

import html
import json
import re
import runpy
import sys
import types
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "host"))

import gradio  # noqa: E402 — the stand-in
import standin  # noqa: E402
from fixtures import *  # noqa: E402, F403 — pytest fixtures
from modules import infotext_utils, script_callbacks, scripts  # noqa: E402
from modules.api import api  # noqa: E402

from lib_align.config import OFFICIAL, PAPER, AlignConfig  # noqa: E402
from lib_align.ui import HINTS_CLASS  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SMALL = dict(steps=2, width=64, height=64)


def test_script_identity(host):
    script = host.script
    assert script.title() == "T-SAM" and script.name == "t-sam"  # the API key
    assert script.show(False) is scripts.AlwaysVisible and script.show(True) is False
    assert script.section == "accordions"
    assert len(script_callbacks.callback_map["callbacks_cfg_denoiser"]) == 1


def test_ui_is_derived_from_the_config_table(host):
    enabled, *controls, show = host.script.controls
    assert enabled.label == "T-SAM" and enabled.value is False  # closed = off
    assert show.label == "Show attention" and show.value is False  # the pictures are opt-in
    settings = AlignConfig.settings()
    assert [c.label for c in controls] == [f.metadata["label"] for f in settings]
    assert [c.value for c in controls] == AlignConfig().to_args()
    for f, c in zip(settings, controls, strict=True):
        if "minimum" in f.metadata:
            assert (c.minimum, c.maximum, c.step) == (f.metadata["minimum"], f.metadata["maximum"], f.metadata["step"])
        if "choices" in f.metadata:
            assert c.choices == list(f.metadata["choices"])
    assert controls[0].value == PAPER  # the paper is the default preset


def test_hover_hints_carry_every_help_text(host):
    holder = next(c for c in gradio.created if isinstance(c, gradio.HTML) and HINTS_CLASS in (c.value or ""))
    payload = re.search(r'data-hints="([^"]*)"', holder.value).group(1)
    hints = json.loads(html.unescape(payload))
    for f in AlignConfig.settings():
        assert hints[host.script.elem_id(f.name)] == f.metadata["help"]
    js = (ROOT / "javascript" / "t_sam.js").read_text()
    assert HINTS_CLASS in js and "dataset.hints" in js


def test_ui_registers_nothing_global(host):
    before = {name: len(items) for name, items in script_callbacks.callback_map.items()}
    host.script.ui(False)  # the API calls ui() to read defaults
    assert {name: len(items) for name, items in script_callbacks.callback_map.items()} == before


def test_choosing_a_preset_loads_its_values_but_pasting_does_not(host):
    preset = host.script.controls[1]
    events = {name: kwargs for name, kwargs in preset.events}
    assert "change" not in events  # a pasted preset must not overwrite the pasted settings
    handler = events["input"]
    others = host.script.controls[2:-1]  # every setting but the preset; not the "Show attention" switch
    assert handler["outputs"] == others
    values = handler["fn"](OFFICIAL)
    assert AlignConfig.from_args([OFFICIAL, *values]) == AlignConfig.official()


def test_script_info_labels(host):
    info = host.script.api_info
    assert info["name"] == "t-sam" and info["is_alwayson"]
    args = info["args"]
    assert args[0]["label"] == "T-SAM" and args[0]["value"] is False
    assert args[-1]["label"] == "Show attention" and args[-1]["value"] is False
    for f, arg in zip(AlignConfig.settings(), args[1:-1], strict=True):
        assert arg["label"] == f.metadata["label"]
        if "minimum" in f.metadata:
            assert arg["minimum"] == f.metadata["minimum"] and arg["maximum"] == f.metadata["maximum"]
        if "choices" in f.metadata:
            assert arg["choices"] == list(f.metadata["choices"])


@pytest.mark.parametrize("config", [
    AlignConfig(),
    AlignConfig.official(step_size=7.5, steps_fraction=0.4),
    AlignConfig(refine=True, refine_at=(0.0, 0.25), refine_iters=4, smooth=False, loss_form="official", power=3.5),
], ids=["paper", "official-tuned", "custom"])
def test_infotext_round_trip(host, config):
    res, _ = host.txt2img(tsam=[True, *config.to_args()], **SMALL)
    fields = host.runner.infotext_fields
    values = infotext_utils.paste(fields, res.infotexts[0])
    components = [field.component for field in fields]
    ours = [values[components.index(c)] for c in host.script.controls[:-1]]  # "Show attention" is not pasted
    assert ours[0] is True
    assert AlignConfig.from_args(ours[1:]) == config
    # An image made without T-SAM closes the accordion when pasted, whatever was open before.
    plain, _ = host.txt2img(**SMALL)
    values = infotext_utils.paste(fields, plain.infotexts[0])
    assert values[components.index(host.script.controls[0])] is False


def test_api_positional_and_dict_forms_reach_process_identically(host, jobs):
    official = AlignConfig.official(step_size=7.0)
    positional = api.init_script_args(host.runner, {"T-SAM": {"args": [True, *official.to_args()]}})
    named = api.init_script_args(host.runner, {"t-sam": {"args": [{"preset": OFFICIAL, "step_size": 7}]}})
    by_label = api.init_script_args(host.runner, {"t-sam": {"args": [
        {"enabled": "true", "Preset": OFFICIAL, "T-SAM strength": "7"}]}})
    infotexts = []
    for script_args in (positional, named, by_label):
        res, _ = host.txt2img(script_args=script_args, **SMALL)
        infotexts.append(res.infotexts[0])
    assert [job.config for job in jobs] == [official] * 3
    assert infotexts[0] == infotexts[1] == infotexts[2]
    # Only the switch given: the other positions keep the components' defaults (the paper preset).
    host.txt2img(script_args=api.init_script_args(host.runner, {"t-sam": {"args": [True]}}), **SMALL)
    assert jobs[-1].config == AlignConfig()


def test_api_dict_can_switch_off(host, jobs):
    res, _ = host.txt2img(script_args=api.init_script_args(host.runner, {"t-sam": {"args": [{"enabled": False}]}}),
                          **SMALL)
    assert jobs == [None]
    assert "T-SAM" not in res.infotexts[0]


@pytest.mark.parametrize("args", [[{"step_size": "lots"}], [{"no such setting": 1}], [True, "Paper", "paper", 99.0]])
def test_bad_api_values_give_a_message_and_a_normal_image(host, tsam_log, args):
    res, _ = host.txt2img(script_args=api.init_script_args(host.runner, {"t-sam": {"args": args}}), **SMALL)
    assert len(res.images) == 1 and "T-SAM preset" not in res.infotexts[0]
    assert "T-SAM:" in res.comments and "generating without T-SAM" in res.comments
    assert any(r.getMessage().startswith("T-SAM: ") for r in tsam_log.records)


def test_xyz_axes_come_from_the_table_and_cells_do_not_leak(host, jobs):
    labels = [o.label for o in host.xyz.axis_options]
    fields = {f.name: f for f in AlignConfig.settings()}
    expected = ["T-SAM enabled", fields["step_size"].metadata["key"], fields["steps_fraction"].metadata["key"]]
    assert all(labels.count(label) == 1 for label in expected)
    script_callbacks.before_ui_callback()  # the host runs before_ui again on a UI reload: no duplicates
    assert [o.label for o in host.xyz.axis_options].count("T-SAM enabled") == 1

    p = host.make_p(tsam={"step_size": 10}, **SMALL)
    cells = host.xyz.run_cells(p, "T-SAM enabled", ["True", "False", "True"])
    infotexts = [res.infotexts[0] for _, res in cells]
    assert ["T-SAM preset" in text for text in infotexts] == [True, False, True]
    assert cells[0][0].extra_generation_params is cells[1][0].extra_generation_params  # the shared dict
    cells = host.xyz.run_cells(p, fields["step_size"].metadata["key"], ["5", "20"])
    assert [job.config.step_size for job in jobs[-2:]] == [5.0, 20.0]
    assert "T-SAM strength: 5," in cells[0][1].infotexts[0] and "T-SAM strength: 20," in cells[1][1].infotexts[0]
    cells = host.xyz.run_cells(p, fields["steps_fraction"].metadata["key"], ["0.25"])
    assert jobs[-1].config.steps_fraction == 0.25


def test_xyz_preset_and_refinement_axes_compare_methods_and_bad_cells_say_why(host, jobs):
    """Axes named by their infotext keys, with the table's choices; a preset cell sets what a preset decides and
    keeps the accordion's other settings (here the refinement cap and Low memory)."""
    options = {o.label: o for o in host.xyz.axis_options}
    assert options["T-SAM preset"].choices() == ["Paper", "Official code"]
    assert options["T-SAM refine"].choices() == ["off", "official", "while above"]
    p = host.make_p(tsam={"refine_iters": 4, "low_memory": True}, **SMALL)
    cells = host.xyz.run_cells(p, "T-SAM preset", ["Paper", "Official code"])
    assert [job.config for job in jobs[-2:]] == [AlignConfig.paper(refine_iters=4, low_memory=True),
                                                 AlignConfig.official(refine_iters=4, low_memory=True)]
    assert "T-SAM preset: Official code" in cells[1][1].infotexts[0]
    host.xyz.run_cells(p, "T-SAM refine", ["off", "official", "while above"])
    assert [job.config.refine for job in jobs[-3:]] == ["off", "official", "while above"]
    assert all(job.config.refine_iters == 4 for job in jobs[-3:])
    count = len(jobs)
    (cell, res), = host.xyz.run_cells(p, "T-SAM refine", ["sometimes"])
    assert len(jobs) == count + 1 and jobs[-1] is None  # the bad cell runs without T-SAM ...
    assert "Iterative refinement must be one of off, official, while above, not 'sometimes'" in res.comments
    assert "T-SAM: skipped (T-SAM: Iterative refinement must be one of" not in res.infotexts[0]
    assert "skipped (Iterative refinement must be one of" in res.infotexts[0]  # ... and says why
    host.xyz.run_cells(p, "T-SAM preset", ["Paper"])  # the next cell is not affected
    assert jobs[-1].config == AlignConfig.paper(refine_iters=4, low_memory=True)


def test_xyz_axes_are_added_when_the_script_loads_not_only_at_before_ui(host):
    """--nowebui (A1111's webui.py api_only) builds the X/Y/Z script's axis list, which API calls index, before it
    runs before_ui: seen in the real A1111 1.10.1, where the axes were missing from /sdapi/v1/script-info."""
    saved = list(host.xyz.axis_options)
    host.xyz.axis_options[:] = [o for o in saved if not o.label.startswith("T-SAM")]
    try:
        host.module.register_callbacks()  # what importing scripts/t_sam.py runs
        labels = [o.label for o in host.xyz.axis_options]
        assert {"T-SAM enabled", "T-SAM preset", "T-SAM strength", "T-SAM steps", "T-SAM refine"} <= set(labels)
        host.module.register_callbacks()
        assert [o.label for o in host.xyz.axis_options].count("T-SAM preset") == 1
    finally:
        host.xyz.axis_options[:] = saved


def test_install_py_installs_nothing_the_host_has(monkeypatch, capsys):
    calls: list[str] = []
    launch = types.ModuleType("launch")
    launch.is_installed = lambda name: True
    launch.run_pip = lambda command, desc=None: calls.append(command)
    monkeypatch.setitem(sys.modules, "launch", launch)
    runpy.run_path(str(ROOT / "install.py"), run_name="__main__")
    assert calls == []
    launch.is_installed = lambda name: False  # even then: never pip-install the host's own packages
    runpy.run_path(str(ROOT / "install.py"), run_name="__main__")
    assert calls == []
    assert "T-SAM" in capsys.readouterr().out


def test_readme_documents_usage_settings_api_limitations():
    readme = (ROOT / "README.md").read_text()
    for section in ("## Usage", "## Settings", "## API", "## Limitations"):
        assert section in readme
    api = readme[readme.index("## API"):]
    assert "curl" in api and '"t-sam"' in api and "alwayson_scripts" in api
    settings = readme[readme.index("## Settings"):readme.index("## API")]
    for f in AlignConfig.settings():
        assert f.metadata["label"] in settings and f.metadata["key"] in settings
    # Both API examples are the same job.
    named, positional = (json.loads(m) for m in re.findall(r'"t-sam": \{"args": (\[.*?\])\}', api))
    expected = AlignConfig.official(step_size=7.5)
    assert len(positional) == 1 + len(AlignConfig.settings())  # the example gives every value
    assert AlignConfig.from_args(named[0]) == AlignConfig.from_args(positional[1:]) == expected


def test_stand_in_files_name_the_host_file_they_mirror():
    for path in (ROOT / "tests" / "host" / "modules").glob("*.py"):
        if path.name != "__init__.py":
            assert "Mirrors modules/" in path.read_text().split('"""')[1], path.name
    assert standin.HOST.name == "host"
