"""The T-SAM accordion, built from `AlignConfig.settings()`.

Host-free on purpose: the caller passes the gradio module and the host's `InputAccordion` class, so this file never
imports `modules.*` and its layout can be tested with any stand-in. Every label, range and hover hint comes from
the field table in `config.py`; nothing here names a setting's text a second time.
"""

from __future__ import annotations

import dataclasses
import html
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .config import AlignConfig
from .script_args import POSITIONAL, SHOW_ATTENTION, SWITCH

TITLE = "T-SAM"  # the accordion's label, the script's title() and, lower-cased, its API key
ENABLED = SWITCH  # item id of the enable switch (the accordion itself)
# Shown at once; the other settings sit in a closed "Advanced" accordion. A layout choice, not a list of settings.
MAIN = ("preset", "step_size", "steps_fraction", "loss_form", "power", "refine", "refine_iters")
HINTS_CLASS = "tsam-hints"  # javascript/t_sam.js reads the hover texts from this hidden element

VIEW_HINTS = {
    SHOW_ATTENTION: "Adds pictures after each image: T (what the text encoder ties together), S before and after "
                    "T-SAM (what the image does) and where each word lands. Saved only when 'Always save all "
                    "generated images' is on. Costs one more short UNet pass per image batch.",
    "analyze": "Shows T for the prompt above now, from the text encoder alone (no sampling): check whether it "
               "already ties 'black' to 'car' before you generate.",
}

# "Analyze prompt": (prompt text, power) -> (picture or None, one line for the user). Supplied by the host adapter.
Analyze = Callable[[str, float], tuple[Any, str]]


@dataclass
class Controls:
    """The accordion's components. `settings` are in `AlignConfig.settings()` order; `inputs` is the script's
    argument vector, in `script_args.POSITIONAL` order (frozen, so old API calls keep their meaning)."""

    enabled: Any
    settings: list[Any]
    show_attention: Any
    analyze: Any  # the "Analyze prompt" button
    analysis: Any  # the picture it shows
    note: Any  # its one-line message

    @property
    def inputs(self) -> list[Any]:
        by_name = {ENABLED: self.enabled, SHOW_ATTENTION: self.show_attention,
                   **dict(zip((f.name for f in AlignConfig.settings()), self.settings, strict=True))}
        return [by_name[name] for name in POSITIONAL]


def component(gr: Any, f: dataclasses.Field, value: Any, elem_id: Callable[[str], str]) -> Any:
    """One gradio input for one AlignConfig field: choices -> Radio, bool -> Checkbox, number list -> Textbox,
    number -> Slider (its range and step from the field's metadata)."""
    spec = f.metadata
    common = dict(label=spec["label"], elem_id=elem_id(f.name))
    if "choices" in spec:
        return gr.Radio(choices=list(spec["choices"]), value=value, **common)
    if isinstance(f.default, bool):
        return gr.Checkbox(value=value, **common)
    if spec.get("kind") == "floats":
        return gr.Textbox(value=value, **common)
    return gr.Slider(minimum=spec["minimum"], maximum=spec["maximum"], step=spec["step"], value=value, **common)


def hints(elem_id: Callable[[str], str]) -> dict[str, str]:
    """Hover text per element id: the accordion's and every setting's help from the field table."""
    out = {elem_id(ENABLED): "T-SAM steers the first denoising steps so that the image's cross-attention follows "
                             "the text encoder's own word structure. Closed = off: nothing runs."}
    out.update({elem_id(f.name): f.metadata["help"] for f in AlignConfig.settings()})
    out.update({elem_id(name): text for name, text in VIEW_HINTS.items()})
    return out


def hints_html(elem_id: Callable[[str], str]) -> str:
    """A hidden element carrying the hover texts as JSON for javascript/t_sam.js (gradio cannot set titles)."""
    payload = html.escape(json.dumps(hints(elem_id)), quote=True)
    return f'<div class="{HINTS_CLASS}" style="display:none" data-hints="{payload}"></div>'


def preset_values(name: str) -> list[Any]:
    """Values of every setting but the preset itself, for the preset's defaults (what choosing a preset loads)."""
    config = AlignConfig.from_preset(name)
    return [v for f, v in zip(AlignConfig.settings(), config.to_args(), strict=True) if f.name != "preset"]


def analysis_handler(gr: Any, analyze: Analyze) -> Callable[[str, float], tuple[Any, str]]:
    """The button's gradio function: the picture (shown only when there is one) and the message as HTML."""

    def run(prompt: str, power: float) -> tuple[Any, str]:
        picture, message = analyze(prompt, power)
        return gr.update(value=picture, visible=picture is not None), html.escape(message)

    return run


def build(gr: Any, input_accordion: Any, elem_id: Callable[[str], str], prompt: Any = None,
          analyze: Analyze | None = None) -> Controls:
    """Create the accordion. `prompt` is the tab's prompt textbox and `analyze` the host's T-of-a-prompt function;
    without both the "Analyze prompt" button is hidden."""
    defaults = dict(zip((f.name for f in AlignConfig.settings()), AlignConfig().to_args(), strict=True))
    fields = {f.name: f for f in AlignConfig.settings()}
    made: dict[str, Any] = {}
    can_analyze = prompt is not None and analyze is not None
    with input_accordion(False, label=TITLE, elem_id=elem_id(ENABLED)) as enabled:
        with gr.Row():
            made["preset"] = component(gr, fields["preset"], defaults["preset"], elem_id)
            made["loss_form"] = component(gr, fields["loss_form"], defaults["loss_form"], elem_id)
        for name in MAIN:
            if name not in made:
                made[name] = component(gr, fields[name], defaults[name], elem_id)
        with gr.Accordion("Advanced", open=False, elem_id=elem_id("advanced")):
            for name, f in fields.items():
                if name not in made:
                    made[name] = component(gr, f, defaults[name], elem_id)
        with gr.Row():
            show = gr.Checkbox(value=False, label="Show attention", elem_id=elem_id(SHOW_ATTENTION))
            button = gr.Button(value="Analyze prompt", elem_id=elem_id("analyze"), visible=can_analyze)
        note = gr.HTML(value="", elem_id=elem_id("analysis_note"))
        # No label: gradio 3 and 4 draw the label as a chip over the picture's top-left corner, where its own
        # panel titles are. The message above it says what the picture is.
        analysis = gr.Image(label="T of the prompt", show_label=False, type="pil", interactive=False, visible=False,
                            elem_id=elem_id("analysis"))
        gr.HTML(value=hints_html(elem_id))
    controls = Controls(enabled, [made[f.name] for f in AlignConfig.settings()], show, button, analysis, note)
    others = [made[f.name] for f in AlignConfig.settings() if f.name != "preset"]
    # `.input` fires on user choices only; `.change` would also fire when pasted infotext sets the preset and
    # overwrite the pasted settings with the preset's defaults.
    made["preset"].input(fn=preset_values, inputs=[made["preset"]], outputs=others, show_progress=False)
    if can_analyze:
        button.click(fn=analysis_handler(gr, analyze), inputs=[prompt, made["power"]], outputs=[analysis, note],
                     show_progress=False)
    return controls
