"""The attention pictures: every cell / tile where the layout says, coloured by its value, labelled."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageFont

from lib_align import visualize as vis
from lib_align.visualize import (
    EMPTY_COLOR,
    NAN_COLOR,
    clean_token,
    colormap,
    matrix_layout,
    render_matrices,
    render_matrix,
    render_token_maps,
    token_grid_layout,
)

WORDS = ["a</w>", "photo</w>", "of</w>", "a</w>", "cat</w>", "and</w>", "dog</w>", "grass</w>"]


def tokens(n: int) -> list[str]:
    return [WORDS[i % len(WORDS)] for i in range(n)]


def causal(n: int, seed: int = 0) -> np.ndarray:
    """A T-like matrix: lower-triangular, rows sum to 1, values spread over the colour range."""
    rng = np.random.default_rng(seed)
    m = np.tril(rng.random((n, n))) + np.eye(n) * 0.5
    return (m / m.sum(axis=1, keepdims=True)).astype(np.float32)


def pixel(img: Image.Image, xy: tuple[int, int]) -> np.ndarray:
    return np.asarray(img)[xy[1], xy[0]].astype(int)


def dominant(img: Image.Image, box: tuple[int, int, int, int]) -> np.ndarray:
    """Most frequent colour in a box: the cell's fill even where a value is printed on it."""
    px = np.asarray(img.crop(box)).reshape(-1, 3)
    colours, counts = np.unique(px, axis=0, return_counts=True)
    return colours[counts.argmax()].astype(int)


def has_dark(img: Image.Image, box: tuple[int, int, int, int]) -> bool:
    region = np.asarray(img.crop(box)).astype(int)
    return bool((region.max(axis=-1) < 110).any())


@pytest.fixture
def fresh_fonts():
    vis._font.cache_clear()
    yield
    vis._font.cache_clear()


# ----------------------------------------------------------------------------------------- tokens, colours


def test_clean_token():
    assert clean_token("cat</w>") == "cat"
    assert clean_token("photo") == "photo"  # a word piece without the end marker
    assert clean_token("</w>") == "·" and clean_token("") == "·" and clean_token("  ") == "·"
    long = clean_token("extraordinarilylongword</w>")
    assert len(long) == 12 and long.endswith("…") and long.startswith("extraordin")
    assert clean_token(long) == long  # idempotent
    assert clean_token("cafÃ©</w>") == "café"  # CLIP's byte-level stand-ins decoded
    assert clean_token("café") == "café"  # already-decoded text is left alone
    assert clean_token("<|startoftext|>") == "SOT"


def test_colormap_anchors_luminance_nan():
    out = colormap(np.array([[0.0, 0.5, 1.0], [-3.0, 7.0, np.nan]]))
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [68, 1, 84]  # viridis ends and middle
    assert out[0, 1].tolist() == [33, 144, 141]
    assert out[0, 2].tolist() == [253, 231, 37]
    assert out[1, 0].tolist() == out[0, 0].tolist() and out[1, 1].tolist() == out[0, 2].tolist()  # clipped
    assert out[1, 2].tolist() == list(NAN_COLOR)
    ramp = colormap(np.linspace(0, 1, 64)).astype(float)
    lum = ramp @ np.array([0.299, 0.587, 0.114])
    assert np.all(np.diff(lum) > 0)  # perceptual: brighter means larger


# ----------------------------------------------------------------------------------------------- matrices


@pytest.mark.parametrize("n", [1, 5, 40])
def test_matrix_cells_where_layout_says(n):
    m = causal(n)
    img = render_matrix(m, tokens(n), title="T", show_values=False)
    lay = matrix_layout(n, tokens(n), "T", show_values=False)
    assert img.size == (lay.width, lay.height)
    expected = colormap(m / m.max()).astype(int)
    for r in range(n):
        for c in range(n):
            got = pixel(img, lay.cell_center(r, c))
            want = expected[r, c] if c <= r else np.array(EMPTY_COLOR)
            assert np.abs(got - want).max() <= 1, (r, c, got, want)
    # The 1 px gap right of and below each cell is background, so cells are separate.
    x0, y0, x1, y1 = lay.cell_box(0, 0)
    assert pixel(img, (x1, (y0 + y1) // 2)).tolist() == [255, 255, 255]
    assert pixel(img, ((x0 + x1) // 2, y1)).tolist() == [255, 255, 255]


def test_known_cell_colour_and_vmax():
    m = np.zeros((5, 5), dtype=np.float32)
    m[3, 1] = 1.0
    m[4, 4] = 2.0
    img = render_matrix(m, tokens(5), show_values=False)  # scale 0..2
    lay = matrix_layout(5, tokens(5), show_values=False)
    assert pixel(img, lay.cell_center(3, 1)).tolist() == [33, 144, 141]  # 1/2 -> viridis middle
    assert pixel(img, lay.cell_center(4, 4)).tolist() == [253, 231, 37]
    assert pixel(img, lay.cell_center(2, 0)).tolist() == [68, 1, 84]  # a zero inside the triangle is coloured
    img = render_matrix(m, tokens(5), vmax=1.0, show_values=False)
    assert pixel(img, lay.cell_center(3, 1)).tolist() == [253, 231, 37]


def test_values_printed_on_large_cells():
    m = causal(5)
    img = render_matrix(m, tokens(5))
    lay = matrix_layout(5, tokens(5))
    assert lay.cell >= 32 and lay.value_size > 0
    expected = colormap(m / m.max()).astype(int)
    for r in range(5):
        for c in range(r + 1):
            fill = dominant(img, lay.cell_box(r, c))
            assert np.abs(fill - expected[r, c]).max() <= 1
            px = np.asarray(img.crop(lay.cell_box(r, c))).astype(int)
            assert (np.abs(px - fill).sum(axis=-1) > 200).sum() > 10, (r, c)  # the number, in a contrasting colour
        if r + 1 < 5:  # nothing printed on the greyed upper triangle
            assert np.all(np.asarray(img.crop(lay.cell_box(r, r + 1))) == EMPTY_COLOR)
    assert matrix_layout(40).value_size == 0  # small cells: no numbers


def test_lower_override_and_full_matrix():
    sym = np.full((4, 4), 0.5, dtype=np.float32)
    lay = matrix_layout(4, tokens(4), show_values=False)
    full = render_matrix(sym, tokens(4), vmax=1.0, show_values=False)
    assert pixel(full, lay.cell_center(0, 3)).tolist() == [33, 144, 141]  # not triangular: upper drawn
    masked = render_matrix(sym, tokens(4), vmax=1.0, show_values=False, lower=True)
    assert pixel(masked, lay.cell_center(0, 3)).tolist() == list(EMPTY_COLOR)
    tri = render_matrix(np.tril(sym), tokens(4), vmax=1.0, show_values=False, lower=False)
    assert pixel(tri, lay.cell_center(0, 3)).tolist() == [68, 1, 84]


@pytest.mark.parametrize("n", [1, 5, 40])
def test_matrix_labels_present(n):
    img = render_matrix(causal(n), tokens(n), title="S after")
    lay = matrix_layout(n, tokens(n), "S after")
    for i in range(n):
        x0, y0, x1, y1 = lay.cell_box(i, i)
        assert has_dark(img, (0, y0, lay.left - 1, y1)), f"row label {i}"
        assert has_dark(img, (x0, vis.PAD + lay.title_height, x1, lay.top - 1)), f"column label {i}"
    assert has_dark(img, (0, 0, img.width, vis.PAD + lay.title_height))  # the title
    assert not has_dark(img, (0, lay.top + lay.grid, lay.left - 1, img.height))  # below the labels: blank
    colour_bar = np.asarray(img.crop((lay.bar_x, lay.bar_y, lay.bar_x + lay.bar_w, lay.bar_y + lay.bar_h)))
    assert colour_bar[0, 0].tolist() == [253, 231, 37] and colour_bar[-1, 0].tolist() == [68, 1, 84]


def test_layout_shrinks_and_fits():
    cells = [matrix_layout(n).cell for n in (1, 8, 16, 20, 40, 75)]
    assert cells[0] == 48 and cells[-1] >= 12 and cells == sorted(cells, reverse=True)
    long_words = ["extraordinarilylongword</w>"] * 75
    lay = matrix_layout(75, long_words, "T, chunk 1")
    assert lay.width <= 1200 and lay.height <= 1200
    assert render_matrix(causal(75), long_words, "T, chunk 1").size == (lay.width, lay.height)


def test_matrix_empty_nan_and_inputs():
    for empty in (np.zeros((0, 0)), torch.zeros(0, 0)):
        img = render_matrix(empty, [], title="T")
        assert img.width < 400 and img.height < 120 and has_dark(img, (0, 0, img.width, img.height))
    m = causal(5)
    m[2, 1] = np.nan
    img = render_matrix(m, tokens(5), show_values=False)
    lay = matrix_layout(5, tokens(5), show_values=False)
    assert pixel(img, lay.cell_center(2, 1)).tolist() == list(NAN_COLOR)
    assert pixel(img, lay.cell_center(4, 4)).tolist() != list(NAN_COLOR)  # the scale ignores NaN
    render_matrix(np.full((3, 3), np.nan), tokens(3))  # all NaN: scale falls back to 1
    render_matrix(np.array([[np.inf]]), ["x"])
    # torch (bf16 included) renders the same as numpy; too few tokens are numbered, extra ones ignored.
    t = torch.tensor(causal(4))
    assert np.array_equal(np.asarray(render_matrix(t, tokens(4))), np.asarray(render_matrix(t.numpy(), tokens(4))))
    render_matrix(t.bfloat16(), tokens(4))
    short = matrix_layout(4, ["a</w>"])
    assert render_matrix(t, ["a</w>"]).size == (short.width, short.height)
    render_matrix(t, tokens(9))
    with pytest.raises(ValueError):
        render_matrix(np.zeros((2, 3)), tokens(2))


def test_render_matrices_side_by_side():
    a, b = causal(6, seed=1), causal(20, seed=2)
    panels = [(a, tokens(6), "chunk 1"), (torch.tensor(b), tokens(20), "chunk 2")]
    img = render_matrices(panels, gap=16)
    singles = [render_matrix(m, t, title) for m, t, title in panels]
    assert img.width == singles[0].width + 16 + singles[1].width >= sum(s.width for s in singles)
    assert img.height == max(s.height for s in singles)
    offsets = [0, singles[0].width + 16]
    for (m, toks, title), dx in zip(panels, offsets, strict=True):
        m = np.asarray(m)
        lay = matrix_layout(len(m), toks, title)
        expected = colormap(m / m.max()).astype(int)
        for r in range(len(m)):
            for c in range(r + 1):
                x0, y0, x1, y1 = lay.cell_box(r, c)
                assert np.abs(dominant(img, (x0 + dx, y0, x1 + dx, y1)) - expected[r, c]).max() <= 1
    gap = np.asarray(img.crop((singles[0].width, 0, singles[0].width + 16, img.height)))
    assert np.all(gap == 255)
    assert render_matrices([]).width > 0


def test_render_matrices_shared_scale():
    before = np.tril(np.ones((3, 3), dtype=np.float32))
    after = before * 0.5
    panels = [(before, tokens(3), "S before"), (after, tokens(3), "S after")]
    dx = render_matrix(before, tokens(3), "S before").width + 16
    lay = matrix_layout(3, tokens(3), "S after")
    x0, y0, x1, y1 = lay.cell_box(2, 0)
    box = (x0 + dx, y0, x1 + dx, y1)
    assert dominant(render_matrices(panels), box).tolist() == [253, 231, 37]  # own scale: 0.5 is its max
    assert dominant(render_matrices(panels, shared_scale=True), box).tolist() == [33, 144, 141]


# --------------------------------------------------------------------------------------------- token maps


def hot_maps(n: int, h: int, w: int) -> tuple[np.ndarray, list[int]]:
    """One hot pixel per map, cycling through the four quadrants; returns the quadrant of each."""
    spots = [(h // 5, w // 5), (h // 5, w - 1 - w // 5), (h - 1 - h // 5, w // 5), (h - 1 - h // 5, w - 1 - w // 5)]
    maps = np.zeros((n, h, w), dtype=np.float32)
    quads = []
    for i in range(n):
        r, c = spots[i % 4]
        maps[i, r, c] = 3.0 + i  # scale differs per map: each is normalised on its own
        quads.append(i % 4)
    return maps, quads


def brightest_quadrant(img: Image.Image, box: tuple[int, int, int, int]) -> int:
    tile = np.asarray(img.crop(box)).astype(int)
    bright = tile[..., 0] + tile[..., 1]  # viridis' top is yellow
    y, x = np.unravel_index(bright.argmax(), bright.shape)
    return 2 * int(y >= tile.shape[0] / 2) + int(x >= tile.shape[1] / 2)


@pytest.mark.parametrize("n", [1, 5, 40])
@pytest.mark.parametrize("with_image", [False, True])
def test_token_maps_tiles_and_captions(n, with_image):
    maps, quads = hot_maps(n, 16, 16)
    image = Image.new("RGB", (512, 512), (128, 128, 128)) if with_image else None
    img = render_token_maps(maps, tokens(n), image=image, tile=64)
    lay = token_grid_layout(n, 64, map_shape=(16, 16))
    assert img.size == (lay.width, lay.height)
    assert lay.cols == min(8, int(np.ceil(np.sqrt(n))))
    for i in range(n):
        box = lay.tile_box(i)
        assert brightest_quadrant(img, box) == quads[i], i
        assert has_dark(img, lay.caption_box(i)), f"caption {i}"
        far = (box[2] - 2, box[3] - 2) if quads[i] == 0 else (box[0] + 1, box[1] + 1)  # away from the spot
        cold = colormap(np.float32(0.0)).astype(float)
        want = 0.45 * 128 + 0.55 * cold if with_image else cold
        assert np.abs(pixel(img, far) - want).max() <= 2
    for i in range(n, lay.cols * lay.rows):  # unused grid slots stay blank
        assert np.all(np.asarray(img.crop(lay.tile_box(i))) == 255)


@pytest.mark.parametrize("shape", [(16, 24), (24, 16)])
def test_token_maps_non_square_keep_aspect(shape):
    h, w = shape
    maps, quads = hot_maps(4, h, w)
    lay = token_grid_layout(4, 96, map_shape=shape)
    assert max(lay.tile_w, lay.tile_h) == 96 and lay.tile_w / lay.tile_h == pytest.approx(w / h, rel=0.02)
    img = render_token_maps(torch.tensor(maps), tokens(4), image=torch.rand(3, h * 8, w * 8), tile=96)
    assert img.size == (lay.width, lay.height)
    for i in range(4):
        assert brightest_quadrant(img, lay.tile_box(i)) == quads[i]


def test_token_maps_cols_empty_nan():
    lay = token_grid_layout(5, 32, cols=2)
    assert (lay.cols, lay.rows) == (2, 3)
    assert render_token_maps(np.zeros((5, 8, 8)), tokens(5), tile=32, cols=2).size == (lay.width, lay.height)
    for empty in (np.zeros((0, 16, 16)), torch.zeros(0, 16, 16)):
        img = render_token_maps(empty, [])
        assert img.width < 400 and has_dark(img, (0, 0, img.width, img.height))
    maps = np.random.default_rng(0).random((3, 8, 8)).astype(np.float32)
    maps[1] = np.nan
    maps[2, 0, 0] = np.nan
    img = render_token_maps(maps, ["extraordinarilylongword</w>", "</w>"], tile=48)
    lay = token_grid_layout(3, 48, map_shape=(8, 8))
    x0, y0, x1, y1 = lay.tile_box(1)
    assert pixel(img, ((x0 + x1) // 2, (y0 + y1) // 2)).tolist() == list(NAN_COLOR)
    for i in range(3):
        assert has_dark(img, lay.caption_box(i))  # long word shortened to the tile, missing one numbered


# ------------------------------------------------------------------------------------------- Pillow 9.5


def test_pillow_95_font_fallback(monkeypatch, fresh_fonts):
    """Without system fonts and with Pillow 9.5's load_default() (no size), the bitmap font still renders."""
    bitmap = ImageFont.load_default_imagefont() if hasattr(ImageFont, "load_default_imagefont") else None
    real = ImageFont.load_default

    def load_default_95(*args, **kwargs):
        if args or kwargs:
            raise TypeError("load_default() got an unexpected keyword argument 'size'")
        return bitmap if bitmap is not None else real()

    monkeypatch.setattr(vis, "_SYSTEM_FONTS", ("no-such-font-xyz.ttf",))
    monkeypatch.setattr(ImageFont, "load_default", load_default_95)
    font = vis._font(13)
    assert not isinstance(font, ImageFont.FreeTypeFont)
    words = ["猫</w>", "extraordinarilylongword</w>", "cafÃ©</w>", "a</w>", "</w>"]  # non-Latin-1, "…"
    img = render_matrix(causal(5), words, title="T ✓")
    lay = matrix_layout(5, words, "T ✓")
    assert img.size == (lay.width, lay.height)
    for i in range(4):
        x0, y0, x1, y1 = lay.cell_box(i, i)
        assert has_dark(img, (0, y0, lay.left - 1, y1))
    maps_img = render_token_maps(np.random.default_rng(0).random((5, 8, 8)), words, tile=48)
    grid = token_grid_layout(5, 48, map_shape=(8, 8))
    assert maps_img.size == (grid.width, grid.height) and has_dark(maps_img, grid.caption_box(1))
