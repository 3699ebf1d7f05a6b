"""The API's `infotext` field (issue: installing T-SAM made it answer HTTP 500 for everyone), one rule for the
switch and for booleans, and an infotext that says what really ran.

The request path is the stand-in of modules/api/api.py (`tests/host/modules/api/api.py`): `apply_infotext` sets
every paste field that has an `api` name on the request model — which refuses names it has no field for, as the
real pydantic model does — and matches script arguments by component. Not shown by the stand-in: the HTTP layer
(a ValueError there is the HTTP 500) and the built-in fields beyond the few it lists.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "host"))

import standin  # noqa: E402
from fixtures import *  # noqa: E402, F403 — pytest fixtures
from modules import infotext_utils  # noqa: E402
from modules.api import api  # noqa: E402

from lib_align.config import OFFICIAL, AlignConfig  # noqa: E402

SMALL = dict(steps=4, width=64, height=64, seed=1234)


def api_rerun(host: standin.Host, infotext: str, alwayson: dict | None = None):
    """POST /sdapi/v1/txt2img {"infotext": ...}: the request's own fields and the script args from the infotext."""
    request = api.StableDiffusionProcessingTxt2Img(infotext=infotext)
    request, script_args = api.txt2img_request(host.runner, request, alwayson)
    fields = {k: v for k, v in request.dict().items() if v is not None and k != "infotext"}
    res, p = host.txt2img(fields.pop("prompt"), script_args=script_args, **fields)
    return res, p, request


def test_the_old_api_names_are_what_broke_the_request():
    """The failure mode itself, on the stand-in request model: a paste field with api="enabled" (what T-SAM used to
    register) is set on the request, which has no such field (modules/api/api.py, apply_infotext's setattr)."""
    request = api.StableDiffusionProcessingTxt2Img(infotext="a cat\nSteps: 4, Seed: 1, Size: 64x64, T-SAM power: 3")
    broken = infotext_utils.PasteField(api.Component(False), lambda params: True, api="enabled")
    with pytest.raises(ValueError, match='"StableDiffusionProcessingTxt2Img" object has no field "enabled"'):
        api.apply_infotext(request, [broken])


def test_no_tsam_paste_field_carries_an_api_name(host):
    ours = [f for f in host.runner.infotext_fields if f.component in host.script.controls]
    assert len(ours) == 1 + len(AlignConfig.settings())
    assert all(f.api is None for f in ours)


def test_api_infotext_of_a_plain_image_works_and_leaves_tsam_off(host, jobs):
    plain, _ = host.txt2img("a black car and a white clock", **SMALL)
    res, p, request = api_rerun(host, plain.infotexts[0])
    assert (request.steps, request.seed, request.width) == (4, 1234, 64)  # the request's own fields were applied
    assert jobs[-1] is None and "T-SAM" not in res.infotexts[0]
    assert torch.equal(res.samples, plain.samples)


@pytest.mark.parametrize("config", [AlignConfig.official(step_size=7.5, steps_fraction=0.5, refine_iters=3),
                                    AlignConfig(smooth=False, low_memory=True, step_size=12.0)],
                         ids=["official", "paper-with-false-booleans"])
def test_api_infotext_of_a_tsam_image_reruns_the_same_tsam_and_the_same_image(host, jobs, config):
    first, _ = host.txt2img("a black car and a white clock", tsam=[True, *config.to_args()], **SMALL)
    assert "T-SAM preset" in first.infotexts[0]
    res, p, _ = api_rerun(host, first.infotexts[0])
    assert jobs[-1] is not None and jobs[-1].config == config  # "False" stays False (bool("False") is True)
    assert res.infotexts[0] == first.infotexts[0]
    assert torch.equal(res.samples, first.samples)


def test_request_args_win_over_the_infotext(host, jobs):
    first, _ = host.txt2img("a black car and a white clock", tsam={"step_size": 20}, **SMALL)
    api_rerun(host, first.infotexts[0], {"t-sam": {"args": [{"step_size": 5}]}})
    assert jobs[-1].config.step_size == 5.0


def test_ui_paste_still_opens_the_accordion_with_the_settings(host):
    config = AlignConfig.official(smooth=False, step_size=6.0)
    res, _ = host.txt2img(tsam=[True, *config.to_args()], **SMALL)
    fields = host.runner.infotext_fields
    values = infotext_utils.paste(fields, res.infotexts[0])
    components = [f.component for f in fields]
    ours = [values[components.index(c)] for c in host.script.controls[:-1]]
    assert ours[0] is True and AlignConfig.from_args(ours[1:]) == config


# -- one rule for the switch and for booleans ----------------------------------------------------------------------


@pytest.mark.parametrize("switch", [{"enable": False}, {"Enabled": False}, {"ENABLED": "no"}, {"enabled": "off"},
                                    {"enabled": 0}])
def test_every_spelling_of_the_switch_turns_tsam_off(host, jobs, switch):
    host.txt2img(script_args=api.init_script_args(host.runner, {"t-sam": {"args": [dict(switch, step_size=7)]}}),
                 **SMALL)
    assert jobs == [None]


@pytest.mark.parametrize("switch", [{"Enable": True}, {"enabled": "yes"}, {"enabled": "On"}, {}])
def test_every_spelling_of_the_switch_turns_tsam_on(host, jobs, switch):
    host.txt2img(script_args=api.init_script_args(host.runner, {"t-sam": {"args": [dict(switch, preset=OFFICIAL)]}}),
                 **SMALL)
    assert jobs[-1] is not None and jobs[-1].config == AlignConfig.official()


def positional_with(name: str, value) -> list:
    names = [f.name for f in AlignConfig.settings()]
    args = [True, *AlignConfig().to_args()]
    args[1 + names.index(name)] = value
    return args


@pytest.mark.parametrize(("args", "named"), [(["maybe"], "T-SAM enabled"), ([{"enabled": "maybe"}], "T-SAM enabled"),
                                             (positional_with("smooth", "maybe"), "Smooth attention maps")])
def test_an_unreadable_boolean_names_the_argument_and_the_accepted_values(host, jobs, args, named):
    res, _ = host.txt2img(script_args=api.init_script_args(host.runner, {"t-sam": {"args": args}}), **SMALL)
    assert jobs == [None]
    assert f"{named} must be true or false (also yes/no, on/off, 1/0), not 'maybe'" in res.comments
    assert f"T-SAM: \"skipped ({named} must be true or false" in res.infotexts[0]
    assert "T-SAM preset" not in res.infotexts[0]


def test_unknown_keys_are_a_message_even_with_the_switch_off(host, jobs):
    res, _ = host.txt2img(script_args=api.init_script_args(host.runner, {"t-sam": {"args": [
        {"enabled": False, "strenght": 3}]}}), **SMALL)
    assert jobs == [None]
    assert "unknown setting 'strenght'" in res.comments


# -- the infotext says what really ran ---------------------------------------------------------------------------------


def test_a_one_token_prompt_records_skipped_not_the_settings(host, jobs):
    res, _ = host.txt2img("car", tsam={}, **SMALL)
    text = res.infotexts[0]
    assert "T-SAM preset" not in text
    assert "T-SAM: \"skipped (the prompt has fewer than two tokens: nothing to align)\"" in text


def test_a_refusal_records_skipped(host, jobs):
    res, _ = host.txt2img("a cat AND a dog", tsam={}, **SMALL)
    assert "T-SAM preset" not in res.infotexts[0] and "T-SAM: \"skipped (prompts with AND" in res.infotexts[0]


def test_a_failure_before_any_update_records_skipped(host, jobs, monkeypatch):
    def broken(self, *args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(host.module.Job, "on_denoiser", broken)
    res, _ = host.txt2img("a black car and a white clock", tsam={}, **SMALL)
    assert "T-SAM preset" not in res.infotexts[0]
    assert "skipped (RuntimeError: boom)" in res.infotexts[0]


def test_a_failure_after_updates_records_the_settings_and_where_it_stopped(host, jobs, monkeypatch):
    original = host.module.Job.on_denoiser

    def fails_at_second_step(self, params):
        if int(params.denoiser.step) >= 1:
            raise RuntimeError("boom")
        original(self, params)

    monkeypatch.setattr(host.module.Job, "on_denoiser", fails_at_second_step)
    res, _ = host.txt2img("a black car and a white clock", tsam={}, **SMALL)
    text = res.infotexts[0]
    assert "T-SAM preset: Paper" in text
    assert "T-SAM note: \"stopped after step 1 (RuntimeError: boom)\"" in text


def test_strength_zero_records_that_nothing_was_optimised(host, jobs):
    res, _ = host.txt2img("a black car and a white clock", tsam={"step_size": 0}, **SMALL)
    assert "T-SAM preset" not in res.infotexts[0] and "skipped (no step was optimised" in res.infotexts[0]


def test_each_batch_records_its_own_outcome(host, jobs):
    """n_iter 2: the first batch's prompt has one token (skipped), the second is aligned."""
    res, _ = host.txt2img(["car", "a black car and a white clock"], tsam={}, n_iter=2, batch_size=1, **SMALL)
    first, second = res.infotexts[-2:]
    assert "skipped (" in first and "T-SAM preset" not in first
    assert "T-SAM preset: Paper" in second and "skipped" not in second


# -- the named form on top of an infotext (issue: a dict threw the infotext's settings away) ---------------------------

TUNED = {"preset": OFFICIAL, "step_size": 7.5, "refine": "while above", "refine_iters": 5}


@pytest.mark.parametrize("named", [{"show_attention": True}, {"enabled": True}, {}])
def test_a_dict_goes_on_top_of_the_infotexts_settings(host, jobs, named):
    first, _ = host.txt2img("a black car and a white clock", tsam=dict(TUNED), **SMALL)
    tuned = AlignConfig.official(step_size=7.5, refine="while above", refine_iters=5)
    assert jobs[-1].config == tuned
    res, _, _ = api_rerun(host, first.infotexts[0], {"t-sam": {"args": [named]}})
    assert jobs[-1].config == tuned  # not the Paper defaults
    assert jobs[-1].show is bool(named.get("show_attention"))
    assert res.infotexts[0] == first.infotexts[0]
    assert torch.equal(res.samples[:1], first.samples[:1])


def test_a_dict_preset_sets_what_a_preset_decides_and_keeps_the_rest(host, jobs):
    first, _ = host.txt2img("a black car and a white clock", tsam=dict(TUNED), **SMALL)
    api_rerun(host, first.infotexts[0], {"t-sam": {"args": [{"preset": "Paper", "power": 2}]}})
    # Paper's loss, strength, decay, steps and rule; the infotext's cap; the dict's power last.
    assert jobs[-1].config == AlignConfig.paper(refine_iters=5, power=2.0)


def test_without_an_infotext_a_dict_still_starts_from_the_ui_defaults(host, jobs):
    host.txt2img(script_args=api.init_script_args(host.runner, {"t-sam": {"args": [{"refine_iters": 5}]}}), **SMALL)
    assert jobs[-1].config == AlignConfig(refine_iters=5)


# -- the positional layout is frozen (issue: a setting added at the end of the settings shifted Show attention) -------

# The vectors this repository ever accepted, read from its git history (lib_align/a1111.py and config.py):
# 076e875 [enabled, 11 settings]; 5e5dfa5 [enabled, 12 settings] (README's positional example since then);
# 0abaad3 [enabled, 12 settings, show_attention]. Each is a prefix of the next.
RELEASED = ("enabled", "preset", "loss_form", "power", "step_size", "step_decay", "steps_fraction", "refine",
            "refine_at", "refine_iters", "refine_threshold", "smooth", "low_memory", "show_attention")


def test_the_positional_layout_starts_with_every_released_layout_and_holds_every_setting():
    from lib_align.script_args import POSITIONAL

    assert POSITIONAL[:len(RELEASED)] == RELEASED
    names = [f.name for f in AlignConfig.settings()]
    assert sorted(n for n in POSITIONAL if n in names) == sorted(names)
    assert len(set(POSITIONAL)) == len(POSITIONAL)


def test_the_ui_inputs_are_the_positional_layout(host):
    from lib_align.script_args import POSITIONAL

    controls = host.script.controls  # [0] is the accordion's own checkbox (InputAccordion), the switch
    assert POSITIONAL[0] == "enabled" and controls[0].elem_id.startswith(host.script.elem_id("enabled"))
    assert [c.elem_id for c in controls[1:]] == [host.script.elem_id(name) for name in POSITIONAL[1:]]


@pytest.mark.parametrize("length", [12, 13, 14])
def test_every_released_length_keeps_its_meaning(host, jobs, length):
    values = {"enabled": True, **dict(zip((f.name for f in AlignConfig.settings()),
                                          AlignConfig.official(step_size=7.5, low_memory=True).to_args(), strict=True)),
              "show_attention": True}
    args = [values[name] for name in RELEASED[:length]]
    host.txt2img(script_args=api.init_script_args(host.runner, {"t-sam": {"args": args}}), **SMALL)
    job = jobs[-1]
    assert job.config.preset == OFFICIAL and job.config.step_size == 7.5
    assert job.config.low_memory == ("on" if length >= 13 else "auto")  # a 12-item list: the default mode
    assert job.show is (length >= 14)


def test_a_setting_added_to_the_table_does_not_move_show_attention(monkeypatch):
    """What broke before: the reader found Show attention at 1 + len(settings). With one more setting in the table
    (appended, as low_memory once was), a released 14-item vector must still read Show attention at position 13."""
    import dataclasses

    from lib_align import script_args

    future = dataclasses.field(default=False, metadata={"label": "Future", "key": "T-SAM future", "help": ""})
    future.name = "future"
    fields = AlignConfig.settings()
    args = [True, *AlignConfig.official().to_args(), True]
    monkeypatch.setattr(AlignConfig, "settings", classmethod(lambda cls: (*fields, future)))
    request = script_args.parse_script_args(args)
    assert request.show_attention is True and request.config == AlignConfig.official()
