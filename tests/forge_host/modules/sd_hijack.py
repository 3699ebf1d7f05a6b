"""Mirrors Forge's modules/sd_hijack.py: `model_hijack` is a StableDiffusionModelHijack whose methods do nothing
(no embedding database, no optimisations); prompt lengths come from the engine."""

from __future__ import annotations

from typing import Any


class StableDiffusionModelHijack:
    def apply_optimizations(self, option: Any = None) -> None:
        pass

    def hijack(self, m: Any) -> None:
        pass

    def undo_hijack(self, m: Any) -> None:
        pass

    def clear_comments(self) -> None:
        pass

    def get_prompt_lengths(self, text: str, cond_stage_model: Any = None) -> tuple[int, int]:
        from modules import shared

        return shared.sd_model.get_prompt_lengths_on_ui(text)


model_hijack = StableDiffusionModelHijack()
