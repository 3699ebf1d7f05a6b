"""Mirrors modules/api/api.py (A1111 1.10.1): `Api.apply_infotext`, `init_script_args` and the order in which
`text2imgapi` combines them, plus the request model's refusal of unknown attributes.

Kept as the host does it:
- `apply_infotext` walks every paste field of the tab (the built-in ones and every script's `infotext_fields`);
  each field with an `api` name is written onto the REQUEST with `setattr(request, field.api, value)`, unless the
  request already set that field; script arguments are matched separately, by component position in
  `script_runner.inputs`, into `mentioned_script_args`.
- `get_field_value`: `field.function(params)` or `params.get(field.label)`; the target type is the request field's
  type when `field.api` names one, else `type(field.component.value)`; a value of another type is cast with the
  type itself (so bool("False") is True — the host does this).
- The request model is pydantic v1 (`StableDiffusionProcessingTxt2Img`, built by PydanticModelGenerator):
  setting an attribute it has no field for raises ValueError('"StableDiffusionProcessingTxt2Img" object has no
  field "<name>"'), which the web server answers with HTTP 500.
- `init_script_args`: the UI defaults, then the infotext's script args, then each always-on script's "args".
Simplified: a handful of request fields; no override_settings, selectable scripts, task queue or HTTP layer.
"""

from __future__ import annotations

from typing import Any

from modules import infotext_utils


class _Field:
    def __init__(self, type_: type) -> None:
        self.type_ = type_


class StableDiffusionProcessingTxt2Img:
    """The API's request model (the fields T-SAM's tests use). Unknown attributes are refused as pydantic v1 does."""

    __fields__ = {name: _Field(type_) for name, type_ in (
        ("prompt", str), ("negative_prompt", str), ("seed", int), ("steps", int), ("cfg_scale", float),
        ("width", int), ("height", int), ("sampler_name", str), ("infotext", str))}

    def __init__(self, **values: Any) -> None:
        object.__setattr__(self, "_set", set(values))
        for name in self.__fields__:
            object.__setattr__(self, name, values.get(name))

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self.__fields__:
            raise ValueError(f'"{type(self).__name__}" object has no field "{name}"')
        object.__setattr__(self, name, value)

    def dict(self, exclude_unset: bool = False) -> dict[str, Any]:
        names = self._set if exclude_unset else self.__fields__
        return {name: getattr(self, name) for name in names}


class Component:
    """A built-in txt2img control, as far as apply_infotext looks at it (its value's type)."""

    def __init__(self, value: Any) -> None:
        self.value = value


def builtin_paste_fields() -> list[infotext_utils.PasteField]:
    """The built-in txt2img paste fields that carry an `api` name (modules/ui.py create_ui, txt2img_paste_fields)."""
    return [infotext_utils.PasteField(Component(""), "Prompt", api="prompt"),
            infotext_utils.PasteField(Component(""), "Negative prompt", api="negative_prompt"),
            infotext_utils.PasteField(Component(20), "Steps", api="steps"),
            infotext_utils.PasteField(Component("Euler"), "Sampler", api="sampler_name"),
            infotext_utils.PasteField(Component(7.0), "CFG scale", api="cfg_scale"),
            infotext_utils.PasteField(Component(-1), "Seed", api="seed"),
            infotext_utils.PasteField(Component(512), "Size-1", api="width"),
            infotext_utils.PasteField(Component(512), "Size-2", api="height")]


def apply_infotext(request: StableDiffusionProcessingTxt2Img, possible_fields: list, script_runner: Any = None,
                   mentioned_script_args: dict[int, Any] | None = None) -> dict[str, Any]:
    if not request.infotext:
        return {}
    set_fields = request.dict(exclude_unset=True)
    params = infotext_utils.parse_generation_parameters(request.infotext)

    def get_field_value(field: Any, params: dict[str, Any]) -> Any:
        value = field.function(params) if field.function else params.get(field.label)
        if value is None:
            return None
        if field.api in request.__fields__:
            target_type = request.__fields__[field.api].type_
        else:
            target_type = type(field.component.value)
        if target_type is type(None):
            return None
        if value is not None and not isinstance(value, target_type):
            value = target_type(value)
        return value

    for field in possible_fields:
        if not field.api:
            continue
        if field.api in set_fields:
            continue
        value = get_field_value(field, params)
        if value is not None:
            setattr(request, field.api, value)

    if script_runner is not None and mentioned_script_args is not None:
        indexes = {id(v): i for i, v in enumerate(script_runner.inputs)}  # the host keys by component (hashable)
        for field in possible_fields:
            index = indexes.get(id(field.component))
            if index is None:
                continue
            value = get_field_value(field, params)
            if value is None:
                continue
            mentioned_script_args[index] = value
    return params


def init_script_args(runner: Any, alwayson_scripts: dict[str, dict] | None = None,
                     input_script_args: dict[int, Any] | None = None) -> list[Any]:
    """Defaults (the components' values), then the infotext's script args, then each always-on script's "args"
    placed positionally (missing trailing args keep what is there; no type checks)."""
    script_args = runner.default_args()
    for index, value in (input_script_args or {}).items():
        script_args[index] = value
    by_title = runner.title_map()
    for name, request in (alwayson_scripts or {}).items():
        script = by_title.get(name.lower())
        if script is None:
            raise KeyError(f"always on script {name} not found")
        args = request.get("args", [])
        for idx in range(min(script.args_to - script.args_from, len(args))):
            script_args[script.args_from + idx] = args[idx]
    return script_args


def txt2img_request(runner: Any, request: StableDiffusionProcessingTxt2Img,
                    alwayson_scripts: dict[str, dict] | None = None) -> tuple[StableDiffusionProcessingTxt2Img, list]:
    """text2imgapi up to the processing object: apply the infotext, then build the script args."""
    mentioned: dict[int, Any] = {}
    apply_infotext(request, [*builtin_paste_fields(), *runner.infotext_fields], script_runner=runner,
                   mentioned_script_args=mentioned)
    return request, init_script_args(runner, alwayson_scripts, mentioned)
