"""Mirrors modules/ui_components.py's InputAccordion: a (hidden) checkbox whose value is the accordion's open
state; used as a context manager around the accordion's contents. Built on the gradio module found at import
(the stand-in gradio in tests)."""

from __future__ import annotations

import gradio as gr


class InputAccordion(gr.Checkbox):
    global_index = 0

    def __init__(self, value, **kwargs):
        self.accordion_id = kwargs.get("elem_id")
        if self.accordion_id is None:
            self.accordion_id = f"input-accordion-{InputAccordion.global_index}"
            InputAccordion.global_index += 1
        super().__init__(value, **{**kwargs, "elem_id": f"{self.accordion_id}-checkbox", "visible": False})
        label = kwargs.get("label", "Accordion")
        self.accordion = gr.Accordion(**{**kwargs, "elem_id": self.accordion_id, "label": label, "open": value})

    def __enter__(self):
        self.accordion.__enter__()
        return self

    def __exit__(self, *exc):
        self.accordion.__exit__(*exc)
