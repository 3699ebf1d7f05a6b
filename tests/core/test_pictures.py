"""The pictures of a prompt / a generation, as the web UI and the demo show them."""

from __future__ import annotations

import pytest
import torch

from lib_align import AlignConfig, AlignSession
from lib_align.pictures import session_pictures, target_picture, words
from lib_align.visualize import matrix_layout, token_grid_layout
from standalone.pipeline import encode, prompt_targets


@pytest.mark.parametrize(("prompt", "lengths"), [
    ("car", [1]),
    ("a black car and clock", [5]),
    (" ".join(["red"] * 40), [40]),
    ("a black car BREAK a white clock", [3, 3]),
])
def test_target_picture_has_one_labelled_panel_per_chunk(tiny_model, prompt, lengths):
    _, targets = prompt_targets(tiny_model, prompt, 4.0)
    assert [t.length for t in targets] == lengths
    picture = target_picture(targets, 4.0)
    layouts = [matrix_layout(t.length, words(t), "T") for t in targets]
    # Panels sit side by side with a 16 px gap; each panel is at least its matrix layout wide.
    assert picture.width >= sum(lo.width for lo in layouts) + 16 * (len(layouts) - 1)
    assert picture.height >= max(lo.height for lo in layouts)
    assert words(targets[0])[0] in ("car", "a", "red")


@pytest.mark.slow
def test_session_pictures_show_s_before_after_and_token_maps(tiny_model):
    chunks, targets = prompt_targets(tiny_model, "a black car and a white clock", 4.0)
    cond = encode(tiny_model, chunks)
    session = AlignSession(tiny_model.unet, tiny_model.apply_model, [targets], AlignConfig.paper(), 4, (16, 16))
    from PIL import Image

    image = Image.new("RGB", (128, 128), "white")
    only_t = session_pictures(session, 0, targets, image)
    assert only_t.similarity is None and only_t.token_maps is None and len(only_t.images()) == 1

    session.update(torch.randn(1, 4, 16, 16), torch.tensor([500.0]), cond, 0, measure_after=True)
    pictures = session_pictures(session, 0, targets, image, 4.0)
    assert len(pictures.images()) == 3
    grid = token_grid_layout(7, 128, map_shape=(4, 4))
    assert pictures.token_maps.size == (grid.width, grid.height)  # one tile per prompt word
    single = matrix_layout(7, words(targets[0]), "S before")
    assert pictures.similarity.width >= 2 * single.width + 16  # S before | S after
