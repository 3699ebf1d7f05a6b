"""A minimal stand-in of gradio 3.41 for tests (gradio is not installed in CI): components keep their constructor
arguments as attributes (label, value, minimum, maximum, step, choices, elem_id, visible) — what A1111 reads for
script-info and paste — and record event registrations. Layout blocks are no-op context managers."""

from __future__ import annotations

from typing import Any

created: list[Any] = []  # every component made, in order (tests use it to check ui() builds only components)


class Block:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.elem_id = kwargs.get("elem_id")
        self.visible = kwargs.get("visible", True)
        self.events: list[tuple[str, dict]] = []
        created.append(self)

    def __enter__(self) -> Block:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def _event(self, name: str, **kwargs: Any) -> None:
        self.events.append((name, kwargs))

    def change(self, fn=None, inputs=None, outputs=None, **kwargs):
        self._event("change", fn=fn, inputs=inputs, outputs=outputs, **kwargs)

    def input(self, fn=None, inputs=None, outputs=None, **kwargs):
        self._event("input", fn=fn, inputs=inputs, outputs=outputs, **kwargs)

    def select(self, fn=None, inputs=None, outputs=None, **kwargs):
        self._event("select", fn=fn, inputs=inputs, outputs=outputs, **kwargs)

    def click(self, fn=None, inputs=None, outputs=None, **kwargs):
        self._event("click", fn=fn, inputs=inputs, outputs=outputs, **kwargs)


class Component(Block):
    def __init__(self, value: Any = None, *, label: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.value = value
        self.label = label
        self.info = kwargs.get("info")
        for hook in after_component_hooks:  # the host patches IOComponent.__init__ to call these (scripts.py)
            hook(self, label=label, **kwargs)


after_component_hooks: list[Any] = []


class Checkbox(Component):
    def __init__(self, value: bool = False, **kwargs: Any) -> None:
        super().__init__(value, **kwargs)


class Radio(Component):
    def __init__(self, choices: list | None = None, value: Any = None, **kwargs: Any) -> None:
        super().__init__(value, **kwargs)
        self.choices = list(choices or [])


class Dropdown(Radio):
    pass


class Slider(Component):
    def __init__(self, minimum: float = 0, maximum: float = 100, step: float | None = None, value: Any = None,
                 **kwargs: Any) -> None:
        super().__init__(minimum if value is None else value, **kwargs)
        self.minimum, self.maximum, self.step = minimum, maximum, step


class Textbox(Component):
    def __init__(self, value: str = "", **kwargs: Any) -> None:
        super().__init__(value, **kwargs)


class Number(Component):
    pass


class Button(Component):
    def __init__(self, value: str = "Run", **kwargs: Any) -> None:
        super().__init__(value, **kwargs)


class Image(Component):
    def __init__(self, value: Any = None, **kwargs: Any) -> None:
        super().__init__(value, **kwargs)
        self.type = kwargs.get("type", "numpy")


class HTML(Component):
    def __init__(self, value: str = "", **kwargs: Any) -> None:
        super().__init__(value, **kwargs)


class Row(Block):
    pass


class Column(Block):
    pass


class Group(Block):
    pass


class Accordion(Block):
    def __init__(self, label: str | None = None, open: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.label, self.open = label, open


def update(**kwargs: Any) -> dict[str, Any]:
    return {"__type__": "update", **kwargs}
