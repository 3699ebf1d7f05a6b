"""Mirrors modules/infotext_utils.py: PasteField, quote/unquote, parse_generation_parameters (the "Key: value"
last line; simplified: no styles, no hires/size defaults), and the value conversion connect_paste applies to each
pasted field (`paste`)."""

from __future__ import annotations

import json
import re
from typing import Any

re_param = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
re_imagesize = re.compile(r"^(\d+)x(\d+)$")


class PasteField(tuple):
    def __new__(cls, component, target, *, api=None):
        return super().__new__(cls, (component, target))

    def __init__(self, component, target, *, api=None):
        self.component = component
        self.label = target if isinstance(target, str) else None
        self.function = target if callable(target) else None
        self.api = api


def quote(text):
    if "," not in str(text) and "\n" not in str(text) and ":" not in str(text):
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text):
    if not text or not (text.startswith('"') and text.endswith('"')):
        return text
    try:
        return json.loads(text)
    except Exception:
        return text


def parse_generation_parameters(x: str) -> dict[str, Any]:
    *lines, lastline = x.strip().split("\n")
    if len(re_param.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ""
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.strip().startswith("Negative prompt:"):
            in_negative = True
            line = line.strip()[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    res: dict[str, Any] = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for k, v in re_param.findall(lastline):
        v = unquote(v)
        m = re_imagesize.match(v)
        if m is not None:
            res[f"{k}-1"], res[f"{k}-2"] = m.group(1), m.group(2)
        else:
            res[k] = v
    return res


class Skip:
    """gr.update() with nothing to change."""


def paste(fields: list, infotext: str) -> list[Any]:
    """The value connect_paste's paste_func gives each (component, key) pair: key may be a callable of the
    parsed params; None leaves the component alone (Skip); otherwise the value is cast to the type of the
    component's current value ("False" -> False for booleans, float() for ints)."""
    params = parse_generation_parameters(infotext)
    out: list[Any] = []
    for output, key in fields:
        v = key(params) if callable(key) else params.get(key, None)
        if v is None:
            out.append(Skip)
            continue
        try:
            valtype = type(output.value)
            if valtype is bool and v == "False":
                val = False
            elif valtype is int:
                val = float(v)
            else:
                val = valtype(v)
            out.append(val)
        except Exception:
            out.append(Skip)
    return out
