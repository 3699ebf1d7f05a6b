"""Pictures of T-SAM's attention: labelled T / S heatmaps and per-token cross-attention maps.

numpy + PIL only (no matplotlib, no font download), and written for both the host's Pillow 9.5 and Pillow 10+.
Each renderer has a matching layout function that returns the geometry it draws with, so callers and tests can
find every cell or tile in the picture.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .bpe import bytes_to_unicode

BACKGROUND = (255, 255, 255)
TEXT_COLOR = (24, 24, 24)
EMPTY_COLOR = (232, 232, 232)  # upper triangle of a causal matrix: there is no value there, not a zero
NAN_COLOR = (128, 128, 128)

MAX_LABEL_CHARS = 12
PAD = 8

# Viridis sampled at 9 points: perceptually uniform, readable in grey scale and by colour-blind viewers.
_ANCHORS = np.array(
    [
        (68, 1, 84),
        (71, 44, 122),
        (59, 81, 139),
        (44, 113, 142),
        (33, 144, 141),
        (39, 173, 129),
        (92, 200, 99),
        (170, 220, 50),
        (253, 231, 37),
    ],
    dtype=np.float64,
)

_SPECIAL_TOKENS = {"<|startoftext|>": "SOT", "<|endoftext|>": "EOT"}
_RESAMPLING = getattr(Image, "Resampling", Image)  # Image.Resampling appeared in Pillow 9.1


# ----------------------------------------------------------------------------------------------------- tokens


def _byte_decoder() -> dict[str, int]:
    """Inverse of CLIP's bytes_to_unicode: BPE tokens spell non-ASCII bytes as printable stand-ins."""
    return {c: b for b, c in bytes_to_unicode().items()}


def _decode_bpe(word: str) -> str:
    decoder = _byte_decoder()
    if word.isascii() or any(ch not in decoder for ch in word):
        return word
    try:
        return bytes(decoder[ch] for ch in word).decode("utf-8")
    except UnicodeDecodeError:  # already-decoded text ("café"), or half of a multi-byte character
        return word


def clean_token(token: str) -> str:
    """CLIP BPE token -> display word: no `</w>`, bytes decoded, "·" when empty, at most 12 chars (with "…")."""
    word = str(token)
    if word in _SPECIAL_TOKENS:
        return _SPECIAL_TOKENS[word]
    word = _decode_bpe(word.replace("</w>", "")).strip()
    if not word:
        return "·"
    if len(word) > MAX_LABEL_CHARS:  # result is exactly 12 chars, so cleaning twice changes nothing
        word = word[: MAX_LABEL_CHARS - 1] + "…"
    return word


def _labels(tokens: Sequence[str] | None, n: int) -> list[str]:
    """One label per row: missing tokens become their index, extra tokens are ignored."""
    given = [clean_token(t) for t in list(tokens or [])[:n]]
    return given + [f"#{i}" for i in range(len(given), n)]


# ------------------------------------------------------------------------------------------------ colours


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (clipped) -> uint8 RGB of shape values.shape + (3,), viridis-like; NaN -> grey."""
    v = np.asarray(values, dtype=np.float64)
    nan = np.isnan(v)
    pos = np.clip(np.nan_to_num(v, nan=0.0), 0.0, 1.0) * (len(_ANCHORS) - 1)
    lo = np.minimum(np.floor(pos).astype(np.int64), len(_ANCHORS) - 2)
    frac = (pos - lo)[..., None]
    rgb = _ANCHORS[lo] * (1.0 - frac) + _ANCHORS[lo + 1] * frac
    out = np.rint(rgb).astype(np.uint8)
    out[nan] = NAN_COLOR
    return out


def _as_array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def to_uint8_image(x: Any) -> Image.Image:
    """PIL image, or an array/tensor [H, W], [H, W, C] or [C, H, W] (uint8, or float in [0, 1]) -> RGB image."""
    if isinstance(x, Image.Image):
        return x.convert("RGB")
    a = x.detach().float().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)  # torch's channel-first layout
    if a.ndim == 3:
        a = a[..., :3] if a.shape[-1] >= 3 else np.repeat(a[..., :1], 3, axis=-1)
    elif a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    else:
        raise ValueError(f"expected an image of 2 or 3 dimensions, got shape {a.shape}")
    if a.dtype != np.uint8:
        a = np.nan_to_num(a.astype(np.float32))
        if a.max(initial=0.0) <= 1.0:
            a = a * 255.0
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(a), "RGB")


def _text_color(fill: Sequence[int]) -> tuple[int, int, int]:
    """Dark text on light cells, white on dark ones."""
    lum = 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2]
    return TEXT_COLOR if lum > 140 else (255, 255, 255)


# -------------------------------------------------------------------------------------------------- fonts

Font = Any  # ImageFont.FreeTypeFont, or the bitmap ImageFont.ImageFont


_SYSTEM_FONTS = ("DejaVuSans.ttf", "arial.ttf")  # Linux / Windows; Pillow looks them up in the system font dirs


@cache
def _font(size: int) -> Font:
    """A font of about `size` px: a system font (wide glyph coverage), else Pillow's scalable built-in one
    (Pillow >= 10.1, ASCII-centric), else the fixed bitmap default (Pillow 9.5 without system fonts)."""
    for name in _SYSTEM_FONTS:
        try:
            return ImageFont.truetype(name, size)
        except (OSError, ImportError):
            continue
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, AttributeError, OSError, ImportError):  # Pillow 9.5: no size argument
        return ImageFont.load_default()  # ~11 px, Latin-1 only


def _safe(text: str, font: Font) -> str:
    """The bitmap font only has Latin-1 glyphs (and raises on anything else)."""
    if isinstance(font, ImageFont.FreeTypeFont):
        return text
    return text.replace("…", "..").encode("latin-1", "replace").decode("latin-1")


_SCRATCH = ImageDraw.Draw(Image.new("L", (1, 1)))


def _bbox(text: str, font: Font) -> tuple[int, int, int, int]:
    """Ink box of `text` drawn at (0, 0)."""
    text = _safe(text, font)
    try:
        box = _SCRATCH.textbbox((0, 0), text, font=font)
    except (ValueError, AttributeError, TypeError):  # Pillow < 9.2 refuses textbbox with the bitmap font
        try:
            w, h = font.getsize(text)
        except Exception:  # last resort: the bitmap font's fixed cell
            w, h = 6 * len(text), 11
        box = (0, 0, w, h)
    return tuple(int(round(v)) for v in box)  # type: ignore[return-value]


def _text_width(text: str, font: Font) -> int:
    x0, _, x1, _ = _bbox(text, font)
    return max(0, x1 - x0)


@cache
def _line(font: Font) -> tuple[int, int]:
    """Top and bottom of a line of this font (ascender to descender), so all labels share one baseline."""
    _, top, _, bottom = _bbox("Agjy|", font)
    return top, bottom


def _line_height(font: Font) -> int:
    top, bottom = _line(font)
    return bottom - top


def _fit(text: str, font: Font, width: int) -> str:
    """Shorten with "…" until the text fits `width` px."""
    if _text_width(text, font) <= width:
        return text
    while len(text) > 1 and _text_width(text + "…", font) > width:
        text = text[:-1]
    return text + "…"


def _put(draw: ImageDraw.ImageDraw, text: str, font: Font, x: float, cy: float, fill, align: str = "left") -> None:
    """Draw text vertically centred on `cy`; `x` is its left edge, right edge or centre (align)."""
    text = _safe(text, font)
    x0, _, x1, _ = _bbox(text, font)
    top, bottom = _line(font)
    width = x1 - x0
    left = {"left": x, "right": x - width, "center": x - width / 2}[align]
    draw.text((round(left - x0), round(cy - (top + bottom) / 2)), text, font=font, fill=fill)


def _put_vertical(img: Image.Image, text: str, font: Font, cx: int, bottom: int, fill) -> None:
    """Text rotated 90° (reading upwards), centred on column `cx`, its first letter at `bottom`."""
    text = _safe(text, font)
    x0, _, x1, _ = _bbox(text, font)
    top, low = _line(font)
    tmp = Image.new("L", (max(1, x1 - x0 + 2), max(1, low - top + 2)), 0)
    ImageDraw.Draw(tmp).text((1 - x0, 1 - top), text, font=font, fill=255)
    rot = tmp.rotate(90, expand=True)  # counter-clockwise
    img.paste(fill, (cx - rot.width // 2, bottom - rot.height), rot)


def _message_image(message: str, title: str = "") -> Image.Image:
    """Small picture standing in for an empty matrix / map set."""
    font, title_font = _font(12), _font(15)
    lines = [(title, title_font)] if title else []
    lines.append((message, font))
    width = max(160, max(_text_width(t, f) for t, f in lines) + 2 * PAD)
    heights = [_line_height(f) + 6 for _, f in lines]
    img = Image.new("RGB", (width, sum(heights) + 2 * PAD), BACKGROUND)
    draw = ImageDraw.Draw(img)
    y = PAD
    for (text, f), h in zip(lines, heights, strict=True):
        _put(draw, text, f, PAD, y + h / 2, TEXT_COLOR)
        y += h
    return img


def _fmt_scale(v: float) -> str:
    return f"{v:.3g}"


def _fmt_cell(v: float) -> str:
    """Compact cell value: ".12" rather than "0.12", to fit 32 px cells."""
    if abs(v) >= 10:
        return f"{v:.0f}"
    s = f"{v:.2f}"
    return s[1:] if s.startswith("0.") else s.replace("-0.", "-.")


# ------------------------------------------------------------------------------------------------ matrices


@dataclass(frozen=True)
class MatrixLayout:
    """Geometry of a `render_matrix` picture. Cell (r, c) spans x in [left + c*cell, +cell), y likewise."""

    n: int
    cell: int  # px per cell, 1 px of it is the white gap on the right / bottom
    left: int  # x of the grid's left edge
    top: int  # y of the grid's top edge
    width: int
    height: int
    title_height: int  # the title band is y in [PAD, PAD + title_height)
    label_size: int  # font sizes (ignored by the bitmap fallback font)
    value_size: int  # 0: no values printed in the cells
    bar_x: int  # colour bar box
    bar_y: int
    bar_w: int
    bar_h: int

    @property
    def grid(self) -> int:
        return self.n * self.cell

    def cell_box(self, row: int, col: int) -> tuple[int, int, int, int]:
        x0, y0 = self.left + col * self.cell, self.top + row * self.cell
        return x0, y0, x0 + self.cell - 1, y0 + self.cell - 1  # exclusive end, the gap excluded

    def cell_center(self, row: int, col: int) -> tuple[int, int]:
        return self.left + col * self.cell + (self.cell - 1) // 2, self.top + row * self.cell + (self.cell - 1) // 2


def _cell_size(n: int) -> int:
    # 48 px up to ~11 tokens, then shrinking so the grid stays near 560 px; 12 px (900 px) at 47+ tokens.
    return max(12, min(48, 560 // max(1, n)))


def matrix_layout(
    n_tokens: int, tokens: Sequence[str] | None = None, title: str = "", show_values: bool | None = None
) -> MatrixLayout:
    """Geometry `render_matrix` uses for n_tokens rows; label margins are sized from the longest cleaned token."""
    n = max(0, int(n_tokens))
    cell = _cell_size(n)
    label_size = min(13, max(9, cell - 4))
    show = cell >= 32 if show_values is None else bool(show_values)
    value_size = min(13, cell // 3 + 1) if show and n > 0 else 0
    font, title_font, bar_font = _font(label_size), _font(15), _font(11)
    label_w = max((_text_width(w, font) for w in _labels(tokens, n)), default=0)
    title_h = _line_height(title_font) + 8 if title else 0
    left = PAD + label_w + 6
    top = PAD + title_h + label_w + 6  # column labels are rotated: their length is their height
    grid = n * cell
    bar_x, bar_w = left + grid + 10, 10
    bar_text_w = _text_width("-8.88e-88", bar_font)  # widest `_fmt_scale` output
    bar_h = max(grid, 24)
    width = max(bar_x + bar_w + 4 + bar_text_w + PAD, _text_width(title, title_font) + 2 * PAD)
    height = top + max(grid, bar_h) + _line_height(bar_font) // 2 + PAD
    return MatrixLayout(
        n=n,
        cell=cell,
        left=left,
        top=top,
        width=width,
        height=height,
        title_height=title_h,
        label_size=label_size,
        value_size=value_size,
        bar_x=bar_x,
        bar_y=top,
        bar_w=bar_w,
        bar_h=bar_h,
    )


def _is_lower(m: np.ndarray) -> bool:
    return m.shape[0] > 1 and bool(np.all(np.abs(np.nan_to_num(np.triu(m, 1))) <= 1e-8))


def _auto_vmax(m: np.ndarray) -> float:
    finite = m[np.isfinite(m)]
    top = float(finite.max()) if finite.size else 0.0
    return top if top > 0 else 1.0


def render_matrix(
    matrix: Any,
    tokens: Sequence[str],
    title: str = "",
    vmax: float | None = None,
    show_values: bool | None = None,
    lower: bool | None = None,
) -> Image.Image:
    """Labelled heatmap of an L×L matrix (T or S) on a 0..vmax scale (default: its max, or 1).

    Rows are labelled on the left, columns on top. `lower` greys out the upper triangle (default: when the matrix
    is lower-triangular). `show_values` prints each value (default: when cells are >= 32 px). L = 0 gives a small
    "no tokens" picture.
    """
    m = _as_array(matrix)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"render_matrix expects a square [L, L] matrix, got shape {m.shape}")
    n = m.shape[0]
    if n == 0:
        return _message_image("no tokens", title)
    lay = matrix_layout(n, tokens, title, show_values)
    labels = _labels(tokens, n)
    scale = float(vmax) if vmax is not None and vmax > 0 else _auto_vmax(m)
    masked = _is_lower(m) if lower is None else (bool(lower) and n > 1)

    colors = colormap(m / scale)
    if masked:
        colors[np.triu_indices(n, 1)] = EMPTY_COLOR
    cell = lay.cell
    block = np.repeat(np.repeat(colors, cell, axis=0), cell, axis=1)
    block[cell - 1 :: cell, :] = BACKGROUND  # 1 px white gap between cells
    block[:, cell - 1 :: cell] = BACKGROUND
    img = Image.new("RGB", (lay.width, lay.height), BACKGROUND)
    img.paste(Image.fromarray(block, "RGB"), (lay.left, lay.top))
    draw = ImageDraw.Draw(img)

    if title:
        _put(draw, title, _font(15), PAD, PAD + lay.title_height / 2 - 2, TEXT_COLOR)
    font = _font(lay.label_size)
    for i, word in enumerate(labels):
        centre = i * cell + (cell - 1) / 2
        _put(draw, word, font, lay.left - 5, lay.top + centre, TEXT_COLOR, align="right")
        _put_vertical(img, word, font, round(lay.left + centre), lay.top - 5, TEXT_COLOR)

    if lay.value_size:
        vfont = _font(lay.value_size)
        for r in range(n):
            for c in range(r + 1 if masked else n):
                if not np.isfinite(m[r, c]):
                    continue
                x, y = lay.cell_center(r, c)
                _put(draw, _fmt_cell(float(m[r, c])), vfont, x, y, _text_color(colors[r, c]), align="center")

    # Colour bar: vmax at the top, 0 at the bottom.
    ramp = colormap(np.linspace(1.0, 0.0, lay.bar_h))[:, None, :].repeat(lay.bar_w, axis=1)
    img.paste(Image.fromarray(np.ascontiguousarray(ramp), "RGB"), (lay.bar_x, lay.bar_y))
    draw.rectangle(
        (lay.bar_x - 1, lay.bar_y - 1, lay.bar_x + lay.bar_w, lay.bar_y + lay.bar_h), outline=(160, 160, 160)
    )
    bar_font = _font(11)
    tx = lay.bar_x + lay.bar_w + 4
    _put(draw, _fmt_scale(scale), bar_font, tx, lay.bar_y + _line_height(bar_font) / 2, TEXT_COLOR)
    _put(draw, "0", bar_font, tx, lay.bar_y + lay.bar_h - _line_height(bar_font) / 2, TEXT_COLOR)
    return img


def render_matrices(
    panels: Sequence[tuple[Any, Sequence[str], str]], gap: int = 16, shared_scale: bool = False
) -> Image.Image:
    """Several `render_matrix` panels (matrix, tokens, title) side by side, top-aligned, on white.

    Panel i sits at x = sum of the earlier panel widths + i * gap, y = 0. `shared_scale` colours every panel on
    one 0..max scale (use it for "S before / S after", so colours compare).
    """
    if not panels:
        return _message_image("no tokens")
    vmax = None
    if shared_scale:
        arrays = [_as_array(p[0]) for p in panels]
        vmax = max(_auto_vmax(a) if a.size else 0.0 for a in arrays) or None
    images = [render_matrix(m, toks, title, vmax=vmax) for m, toks, title in panels]
    width = sum(im.width for im in images) + gap * (len(images) - 1)
    canvas = Image.new("RGB", (width, max(im.height for im in images)), BACKGROUND)
    x = 0
    for im in images:
        canvas.paste(im, (x, 0))
        x += im.width + gap
    return canvas


# ---------------------------------------------------------------------------------------------- token maps


@dataclass(frozen=True)
class GridLayout:
    """Geometry of a `render_token_maps` picture: tiles row-major, each captioned underneath."""

    n: int
    cols: int
    rows: int
    tile_w: int
    tile_h: int
    caption_h: int
    gap: int
    width: int
    height: int
    caption_size: int

    def tile_box(self, i: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1), end exclusive, of tile i."""
        r, c = divmod(i, self.cols)
        x0 = PAD + c * (self.tile_w + self.gap)
        y0 = PAD + r * (self.tile_h + self.caption_h + self.gap)
        return x0, y0, x0 + self.tile_w, y0 + self.tile_h

    def caption_box(self, i: int) -> tuple[int, int, int, int]:
        x0, _, x1, y1 = self.tile_box(i)
        return x0, y1, x1, y1 + self.caption_h


def token_grid_layout(
    n_tokens: int, tile: int = 128, cols: int | None = None, map_shape: tuple[int, int] | None = None
) -> GridLayout:
    """Geometry `render_token_maps` uses. Maps of shape (h, w) keep their aspect, fitted inside tile × tile.

    cols defaults to ceil(sqrt(n)) capped at 8.
    """
    n = max(0, int(n_tokens))
    if cols is None:
        cols = min(8, math.ceil(math.sqrt(n))) if n else 1
    cols = max(1, min(int(cols), max(1, n)))
    rows = max(1, math.ceil(n / cols))
    h, w = map_shape if map_shape is not None else (1, 1)
    fit = tile / max(h, w, 1)
    tile_w, tile_h = max(1, round(w * fit)), max(1, round(h * fit))
    caption_size = 12
    caption_h = _line_height(_font(caption_size)) + 8
    gap = 8
    width = 2 * PAD + cols * tile_w + (cols - 1) * gap
    height = 2 * PAD + rows * (tile_h + caption_h) + (rows - 1) * gap
    return GridLayout(n, cols, rows, tile_w, tile_h, caption_h, gap, width, height, caption_size)


def _normalise(m: np.ndarray) -> np.ndarray:
    """Each map to [0, 1] on its own (a constant map becomes 0); NaN stays NaN."""
    finite = m[np.isfinite(m)]
    if finite.size == 0:
        return np.full_like(m, np.nan)
    lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        return np.where(np.isfinite(m), 0.0, np.nan).astype(np.float32)
    return ((m - lo) / (hi - lo)).astype(np.float32)


def render_token_maps(
    maps: Any,
    tokens: Sequence[str],
    image: Image.Image | None = None,
    tile: int = 128,
    cols: int | None = None,
    alpha: float = 0.55,
) -> Image.Image:
    """Grid of per-token cross-attention maps [L, h, w], each normalised on its own and captioned with its word.

    Over `image` (resized to the tile; array/tensor accepted) the map is blended with `alpha`; without an image
    it is drawn opaque. Non-square maps keep their aspect inside tile × tile.
    """
    m = _as_array(maps)
    if m.ndim == 2 and m.size:
        m = m[None]
    if m.ndim != 3:
        if m.size == 0:
            return _message_image("no tokens")
        raise ValueError(f"render_token_maps expects maps of shape [L, h, w], got {m.shape}")
    n, h, w = m.shape
    if n == 0 or h == 0 or w == 0:
        return _message_image("no tokens")
    lay = token_grid_layout(n, tile, cols, (h, w))
    size = (lay.tile_w, lay.tile_h)
    base = None
    if image is not None:
        base = np.asarray(to_uint8_image(image).resize(size, _RESAMPLING.BILINEAR), dtype=np.float32)
    labels = _labels(tokens, n)
    font = _font(lay.caption_size)

    img = Image.new("RGB", (lay.width, lay.height), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for i in range(n):
        small = Image.fromarray(np.ascontiguousarray(_normalise(m[i]), dtype=np.float32))  # mode "F"
        up = np.asarray(small.resize(size, _RESAMPLING.BILINEAR), dtype=np.float32)
        heat = colormap(up).astype(np.float32)
        out = heat if base is None else (1.0 - alpha) * base + alpha * heat
        x0, y0, x1, y1 = lay.tile_box(i)
        img.paste(Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), "RGB"), (x0, y0))
        cx0, cy0, cx1, cy1 = lay.caption_box(i)
        _put(draw, _fit(labels[i], font, lay.tile_w), font, (cx0 + cx1) / 2, (cy0 + cy1) / 2, TEXT_COLOR, "center")
    return img
