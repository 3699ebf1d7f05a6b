"""Mirrors modules/script_callbacks.py: the callbacks T-SAM registers, with the host's error handling (an ordinary
exception in a callback is reported and swallowed; a BaseException such as InterruptedException passes)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class CFGDenoiserParams:
    def __init__(self, x, image_cond, sigma, sampling_step, total_sampling_steps, text_cond, text_uncond,
                 denoiser=None):
        self.x = x
        self.image_cond = image_cond
        self.sigma = sigma
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps
        self.text_cond = text_cond
        self.text_uncond = text_uncond
        self.denoiser = denoiser


@dataclass
class ScriptCallback:
    script: str
    callback: Callable
    name: str | None = None


callback_map: dict[str, list[ScriptCallback]] = dict(
    callbacks_cfg_denoiser=[],
    callbacks_before_ui=[],
    callbacks_infotext_pasted=[],
)
reported: list[str] = []  # stand-in only: what errors.report would have printed


def add_callback(callbacks: list, fun: Callable, *, name: str | None = None, category: str = "unknown") -> None:
    callbacks.append(ScriptCallback(getattr(fun, "__module__", "unknown"), fun, f"{category}/{name}"))


def clear_callbacks() -> None:
    for callback_list in callback_map.values():
        callback_list.clear()


def remove_callbacks_for_function(callback_func: Callable) -> None:
    for callback_list in callback_map.values():
        for item in [cb for cb in callback_list if cb.callback == callback_func]:
            callback_list.remove(item)


def on_cfg_denoiser(callback: Callable, *, name: str | None = None) -> None:
    add_callback(callback_map["callbacks_cfg_denoiser"], callback, name=name, category="cfg_denoiser")


def on_before_ui(callback: Callable, *, name: str | None = None) -> None:
    add_callback(callback_map["callbacks_before_ui"], callback, name=name, category="before_ui")


def cfg_denoiser_callback(params: CFGDenoiserParams) -> None:
    for c in callback_map["callbacks_cfg_denoiser"]:
        try:
            c.callback(params)
        except Exception as error:
            reported.append(f"Error executing callback cfg_denoiser_callback for {c.script}: {error!r}")


def before_ui_callback() -> None:
    for c in reversed(callback_map["callbacks_before_ui"]):
        try:
            c.callback()
        except Exception as error:
            reported.append(f"Error executing callback before_ui for {c.script}: {error!r}")


def infotext_pasted_callback(infotext: str, params: dict[str, Any]) -> None:
    for c in callback_map["callbacks_infotext_pasted"]:
        c.callback(infotext, params)
