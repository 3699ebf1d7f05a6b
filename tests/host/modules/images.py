"""Mirrors modules/images.py's `save_image` signature. Simplified: nothing is written to disk; each call is recorded
in `saved` (image, path, basename, seed, prompt, extension, info, suffix) for the tests."""

from __future__ import annotations

from typing import Any

saved: list[dict[str, Any]] = []


def save_image(image, path, basename, seed=None, prompt=None, extension="png", info=None, short_filename=False,
               no_prompt=False, grid=False, pnginfo_section_name="parameters", p=None, existing_info=None,
               forced_filename=None, suffix="", save_to_dirs=None):
    saved.append(dict(image=image, path=path, basename=basename, seed=seed, prompt=prompt, extension=extension,
                      info=info, grid=grid, suffix=suffix))
    return f"{path}/{basename}{suffix}.{extension}", None
