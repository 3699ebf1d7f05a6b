"""Issue 5 in the stand-in host: "Show attention" adds T, S before/after and the token maps after the images (with
their image's infotext, saved only when the user saves every image) and costs nothing when off; "Analyze prompt"
draws T of the prompt box from the text encoder alone.

Where the stand-in differs from the real web UI: gradio events are recorded, not run by a browser, so the button's
function is called directly with what the click would pass (the prompt box's text and the power slider's value);
saving goes to a recording `modules.images.save_image` instead of the disk.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "host"))

import gradio  # noqa: E402 — the stand-in
import standin  # noqa: E402
from fixtures import *  # noqa: E402, F403 — pytest fixtures
from fixtures import assert_normal  # noqa: E402
from modules import call_queue, images, shared  # noqa: E402
from modules.api import api  # noqa: E402
from modules.sd_hijack_clip import Embedding  # noqa: E402
from modules.ui_components import InputAccordion  # noqa: E402

from lib_align import ui  # noqa: E402
from lib_align.config import AlignConfig  # noqa: E402
from lib_align.pictures import target_picture, words  # noqa: E402
from standalone.models import count_calls  # noqa: E402

BASE = dict(steps=4, width=128, height=128)
SHOW = {"step_size": 40.0, "show_attention": True}
NO_SHOW = {"step_size": 40.0}
PICTURES = 3  # T, S before/after, token maps


def counted(host, prompt=standin.DEFAULT_PROMPT, **kwargs):
    """(result, p, UNet calls of the job: the host's and T-SAM's alike)."""
    with count_calls(host.model.sd) as calls:
        res, p = host.txt2img(prompt, **kwargs)
    return res, p, calls["unet_calls"]


def assert_normal_with_pictures(res, count: int, per_image: int) -> None:
    first = res.index_of_first_image
    assert len(res.images) == first + count * (1 + per_image) == len(res.infotexts)
    assert all(im.size == (128, 128) for im in res.images[first:first + count])


# -- "Show attention" ------------------------------------------------------------------------------------------


def test_show_attention_appends_the_three_pictures_with_the_image_infotext(host, jobs):
    res, _ = host.txt2img(tsam=SHOW, seed=3, **BASE)
    image, *pictures = res.images
    assert len(pictures) == PICTURES and res.index_of_first_image == 0
    assert res.infotexts == [res.infotexts[0]] * (1 + PICTURES)  # each picture carries its image's infotext
    assert all(pic.info["parameters"] == res.infotexts[0] for pic in pictures)  # and in its PNG info
    assert "T-SAM preset" in res.infotexts[0]
    t, s, maps = pictures
    assert t.size != s.size and s.width > t.width  # S before | S after side by side
    assert maps.size[0] >= 128  # tiles of the final image
    # The image itself is untouched by the option (pictures come after it).
    plain, _ = host.txt2img(tsam=NO_SHOW, seed=3, **BASE)
    assert len(plain.images) == 1
    assert torch.equal(res.samples, plain.samples)
    assert image.tobytes() == plain.images[0].tobytes()


def test_s_after_is_measured_after_the_last_update(host, jobs):
    host.txt2img(tsam=SHOW, **BASE)
    host.txt2img(tsam=NO_SHOW, **BASE)
    shown, hidden = jobs
    assert shown.reports[-1].loss_after is not None  # one more (no-grad, truncated) pass at the last step only
    assert all(r.loss_after is None for r in shown.reports[:-1])
    assert all(r.loss_after is None for r in hidden.reports)


def test_pictures_follow_each_image_of_batches_and_the_grid(host):
    prompts = ["a black car and a white clock", "a red cat on a small blue sofa"] * 2
    res, _ = host.txt2img(prompts, tsam=SHOW, batch_size=2, n_iter=2, **BASE)
    assert res.index_of_first_image == 1  # the host's grid comes first
    assert_normal_with_pictures(res, 4, PICTURES)
    for number in range(4):
        own = res.infotexts[1 + number]
        start = 1 + 4 + number * PICTURES
        assert res.infotexts[start:start + PICTURES] == [own] * PICTURES
        assert f"Seed: {1 + number}," in own
    # Each image's T is drawn from its own prompt: a 7-token and an 8-token prompt give different T pictures.
    t_first, t_second = res.images[5], res.images[5 + PICTURES]
    assert t_first.size != t_second.size


def test_hires_fix_pictures_show_the_first_pass_over_the_final_image(host, jobs, monkeypatch):
    drawn = []
    output = sys.modules["lib_align.webui.output"]
    original = output.draw

    def spy(record, image):
        drawn.append((record, image))
        return original(record, image)

    monkeypatch.setattr(output, "draw", spy)
    res, _ = host.txt2img(tsam=SHOW, enable_hr=True, hr_scale=1.5, hr_second_pass_steps=2, **BASE)
    assert len(res.images) == 1 + PICTURES and res.images[0].size == (192, 192)  # the upscaled result
    ((record, image),) = drawn
    assert image is res.images[0]  # the token maps lie over the final image
    assert record.after.shape[:2] == (4, 4)  # the first pass's maps (latent 16x16 at level 4); the second pass
    assert all(r.step < 4 for r in jobs[0].reports)  # is left alone


def test_pictures_are_saved_only_when_every_image_is(host, monkeypatch):
    host.txt2img(tsam=SHOW, seed=5, **BASE)
    assert [entry["suffix"] for entry in images.saved] == ["-tsam-T", "-tsam-S", "-tsam-maps"]
    assert all(entry["seed"] == 5 and entry["info"] and "T-SAM preset" in entry["info"] for entry in images.saved)
    images.saved.clear()
    monkeypatch.setattr(shared.opts, "samples_save", False)
    res, _ = host.txt2img(tsam=SHOW, **BASE)
    assert images.saved == [] and len(res.images) == 1 + PICTURES  # still shown
    monkeypatch.setattr(shared.opts, "samples_save", True)
    res, _ = host.txt2img(tsam=SHOW, do_not_save_samples=True, **BASE)  # the API's default save_images=false
    assert images.saved == [] and len(res.images) == 1 + PICTURES


def test_off_adds_nothing_and_costs_nothing(host, jobs):
    with count_calls(host.model.sd) as without:
        host.txt2img_without_extension(**BASE)
    plain_calls = without["unet_calls"]
    res_off, _, off_calls = counted(host, tsam=None, **BASE)
    res_hidden, _, hidden_calls = counted(host, tsam=NO_SHOW, **BASE)
    old_api = [True, *AlignConfig.from_args(NO_SHOW).to_args()]  # args from before the switch existed
    res_old, _, old_calls = counted(host, tsam=old_api, **BASE)
    res_shown, _, shown_calls = counted(host, tsam=SHOW, **BASE)
    assert len(res_off.images) == len(res_hidden.images) == len(res_old.images) == 1
    assert off_calls == plain_calls  # installed, T-SAM closed: the calls of the host without the extension
    assert hidden_calls == old_calls  # the switch off does exactly what T-SAM did without it
    assert shown_calls == hidden_calls + 1  # on: one short pass for S after, nothing else
    closed, hidden, old, shown = jobs
    assert closed is None
    assert hidden.show is False and old.show is False and hidden.attention == [] and shown.show is True
    assert images.saved and all(entry["suffix"].startswith("-tsam-") for entry in images.saved)
    assert len(images.saved) == PICTURES  # only the run with the switch on saved pictures
    assert len(res_shown.images) == 1 + PICTURES


def test_api_dict_and_positional_forms_switch_the_pictures_on(host, jobs):
    named = api.init_script_args(host.runner, {"t-sam": {"args": [{"show_attention": True, "step_size": 40}]}})
    res, _ = host.txt2img(script_args=named, **BASE)
    assert len(res.images) == 1 + PICTURES and jobs[-1].config.step_size == 40.0
    positional = api.init_script_args(host.runner, {"t-sam": {"args": [
        True, *AlignConfig(step_size=40.0).to_args(), True]}})
    res, _ = host.txt2img(script_args=positional, **BASE)
    assert len(res.images) == 1 + PICTURES and jobs[-1].config.step_size == 40.0


def test_nothing_to_optimise_still_shows_t(host, tsam_log):
    res, _ = host.txt2img("car", tsam=SHOW, **BASE)  # one token: T-SAM says why and does not run
    assert "fewer than two tokens" in res.comments
    assert len(res.images) == 2  # the image and T


def test_a_failing_renderer_costs_the_pictures_not_the_image(host, monkeypatch, tsam_log):
    def broken(*args, **kwargs):
        raise RuntimeError("no font")

    monkeypatch.setattr(sys.modules["lib_align.webui.output"], "draw", broken)
    res, _ = host.txt2img(tsam=SHOW, **BASE)
    assert_normal(res, 1, 128, 128)  # the image, no pictures
    # postprocess runs after the host built the result's comments: the console says it.
    assert any("could not draw the attention pictures" in r.getMessage() for r in tsam_log.records)


# -- "Analyze prompt" -------------------------------------------------------------------------------------------


def analyze_event(host) -> dict:
    """The click event of this host's "Analyze prompt" button (another Host built in the same session, e.g. by the
    benchmark's installed-but-off check, has its own button with the same elem_id)."""
    power = host.script.controls[1 + [f.name for f in AlignConfig.settings()].index("power")]
    button = next(c for c in reversed(gradio.created) if isinstance(c, gradio.Button)
                  and c.elem_id == host.script.elem_id("analyze") and c.events
                  and any(inp is power for inp in c.events[0][1]["inputs"]))
    ((name, event),) = button.events
    assert name == "click"
    return event


def test_analyze_button_is_wired_to_the_prompt_box_and_power(host):
    event = analyze_event(host)
    power = host.script.controls[1 + [f.name for f in AlignConfig.settings()].index("power")]
    assert event["inputs"] == [host.prompt_box, power]
    image = event["outputs"][0]
    assert isinstance(image, gradio.Image) and image.elem_id == host.script.elem_id("analysis")
    assert image.visible is False
    # gradio 3.41 and 4.40 draw a shown label as a chip over the picture's top-left corner, on the panel titles.
    assert image.kwargs.get("show_label") is False


def test_analyze_draws_t_of_the_prompt_without_sampling(host):
    event = analyze_event(host)
    with count_calls(host.model.sd) as calls:
        update, note = event["fn"]("a black car and a white clock", 4.0)
    assert calls["unet_calls"] == 0 and calls["text_encoder_calls"] == 1  # text encoder only
    picture = update["value"]
    assert isinstance(picture, Image.Image) and update["visible"] is True
    assert "7 tokens" in note
    family = host.module.current_family()
    expected = target_picture(family.prompt_targets("a black car and a white clock", 4.0, 1), 4.0)
    assert picture.size == expected.size and picture.tobytes() == expected.tobytes()
    # LoRA tags are stripped like the host does; the power slider changes T.
    same, _ = event["fn"]("<lora:detail:0.8>a black car and a white clock", 4.0)
    assert same["value"].tobytes() == picture.tobytes()
    other, _ = event["fn"]("a black car and a white clock", 1.0)
    assert other["value"].tobytes() != picture.tobytes()


@pytest.mark.parametrize("prompt, expected, has_picture", [
    ("", "T-SAM needs at least two words", True),
    ("a black car AND a white clock", "AND (composable diffusion) are not supported", False),
    ("a [black:red:0.5] car", "prompt editing", True),
    ("a black car BREAK a white clock", "in 2 chunks", True),
])
def test_analyze_explains_awkward_prompts(host, prompt, expected, has_picture):
    update, note = analyze_event(host)["fn"](prompt, 4.0)
    assert expected in note
    assert (update["value"] is not None) == has_picture and update["visible"] == has_picture


def test_analyze_waits_for_no_generation_and_refuses_unsupported_models(host, monkeypatch):
    fn = analyze_event(host)["fn"]
    with call_queue.queue_lock:  # a generation holds the host's queue lock
        update, note = fn("a black car and a white clock", 4.0)
    assert update["value"] is None and "generation is running" in note
    assert call_queue.queue_lock.acquire(False)  # and the lock was not left taken
    call_queue.queue_lock.release()
    monkeypatch.setattr(host.model, "is_sd1", False)
    monkeypatch.setattr(host.model, "is_sd3", True)
    update, note = fn("a black car and a white clock", 4.0)
    assert update["value"] is None and "SD3 models are not supported" in note


def test_without_a_prompt_box_the_button_is_hidden_and_unwired():
    controls = ui.build(gradio, InputAccordion, lambda name: f"test_{name}")
    assert controls.analyze.visible is False and controls.analyze.events == []
    assert controls.inputs[-1] is controls.show_attention and controls.show_attention.value is False


def test_pictures_are_labelled_with_the_prompt_words_and_embedding_names(host, monkeypatch):
    wrapper = host.model.cond_stage_model
    targets = host.module.current_family().prompt_targets("a black (car:1.3) and a white clock", 4.0, 1)
    assert words(targets[0]) == ["a", "black", "car", "and", "a", "white", "clock"]
    monkeypatch.setattr(wrapper.hijack.embedding_db, "ids_lookup", {})
    vec = torch.randn(2, 64, generator=torch.Generator().manual_seed(3))
    wrapper.hijack.embedding_db.register(wrapper.tokenize(["tsamstyle"])[0], Embedding(vec, "tsamstyle"))
    (chunk,) = host.module.current_family().prompt_targets("a tsamstyle car", 4.0, 1)
    assert words(chunk) == ["a", "tsamstyle", "tsamstyle·2", "car"] and chunk.length == 4
