"""The pictures a user sees: T of a prompt, S before/after, and per-token maps, from a session's records.

Shared by the web UI ("Show attention", "Analyze prompt") and the demo, so both show the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image
from torch import Tensor

from .loss import similarity_matrix
from .session import AlignSession
from .text import ChunkTarget
from .visualize import clean_token, render_matrices, render_token_maps


@dataclass
class AttentionPictures:
    target: Image.Image  # T per chunk, side by side
    similarity: Image.Image | None  # S before | S after per chunk (None when nothing was optimised)
    token_maps: Image.Image | None  # each prompt word's map of the last optimised step, over the image

    def named(self) -> list[tuple[str, Image.Image]]:
        """(short name, picture) of the pictures there are; the names suffix saved files."""
        pairs = (("T", self.target), ("S", self.similarity), ("maps", self.token_maps))
        return [(name, im) for name, im in pairs if im is not None]

    def images(self) -> list[Image.Image]:
        return [im for _, im in self.named()]


def words(chunk: ChunkTarget) -> list[str]:
    return [clean_token(t) for t in chunk.tokens] if chunk.tokens else [f"#{i + 1}" for i in range(chunk.length)]


def _label(title: str, index: int, count: int) -> str:
    return title if count == 1 else f"{title} (chunk {index + 1})"


def target_picture(targets: list[ChunkTarget], power: float | None = None,
                   named: list[tuple[str, list[ChunkTarget]]] | None = None) -> Image.Image:
    """T of every chunk of one prompt, labelled with its words. `named` instead draws several T's side by side,
    each under its own title (SDXL's "Analyze prompt": the T used and the other encoder's)."""
    def titled(name: str) -> str:  # "T (text self-attention)" -> "T (text self-attention, power 4)"
        if power is None:
            return name
        return f"{name[:-1]}, power {power:g})" if name.endswith(")") else f"{name} (power {power:g})"

    panels = []
    for name, chunks in named or [("T (text self-attention)", targets)]:
        panels += [(c.target, words(c), _label(titled(name), i, len(chunks))) for i, c in enumerate(chunks)]
    return render_matrices(panels)


def similarity_pair(maps_before: Tensor, maps_after: Tensor, targets: list[ChunkTarget],
                    smooth: bool = True) -> Image.Image:
    """S before and after the optimisation for each chunk, on one colour scale so the change is visible."""
    panels = []
    for i, c in enumerate(targets):
        for maps, title in ((maps_before, "S before"), (maps_after, "S after")):
            s_matrix = similarity_matrix(maps, c.length, c.offset, smooth)
            panels.append((s_matrix, words(c), _label(title, i, len(targets))))
    return render_matrices(panels, shared_scale=True)


def token_maps_picture(maps: Tensor, targets: list[ChunkTarget], image: Image.Image | None) -> Image.Image:
    """Each prompt word's cross-attention map (all chunks, in order), over the final image."""
    parts, labels = [], []
    for c in targets:
        parts.append(maps[..., c.offset + 1 : c.offset + 1 + c.length].permute(2, 0, 1))
        labels += words(c)
    return render_token_maps(torch.cat(parts) if parts else maps[..., :0].permute(2, 0, 1), labels, image)


@dataclass
class ImageAttention:
    """What one image's pictures are drawn from, kept apart from the run that produced it (maps on the CPU)."""

    targets: list[ChunkTarget]
    before: Tensor | None = None  # [h, w, ctx] maps at the first optimised step, before its update
    after: Tensor | None = None  # [h, w, ctx] maps of the last evaluation (after the last update when measured)
    power: float | None = None
    smooth: bool = True


def image_attention(session: AlignSession | None, index: int, targets: list[ChunkTarget],
                    power: float | None = None) -> ImageAttention:
    """Image `index` of a batch: T always; the maps when the session recorded any."""
    if session is None or session.first_maps is None or session.last_maps is None:
        return ImageAttention(targets, power=power)
    return ImageAttention(targets, session.first_maps[index].detach().cpu(), session.last_maps[index].detach().cpu(),
                          power, session.config.smooth)


def draw(record: ImageAttention, image: Image.Image | None) -> AttentionPictures:
    """The pictures of one image: T, and with recorded maps S before/after and the token maps over `image`."""
    target = target_picture(record.targets, record.power)
    if record.before is None or record.after is None or not record.targets:
        return AttentionPictures(target, None, None)
    return AttentionPictures(target, similarity_pair(record.before, record.after, record.targets, record.smooth),
                             token_maps_picture(record.after, record.targets, image))


def session_pictures(session: AlignSession | None, index: int, targets: list[ChunkTarget],
                     image: Image.Image | None, power: float | None = None) -> AttentionPictures:
    """All pictures of image `index` of a batch. Without recorded maps only T is drawn."""
    return draw(image_attention(session, index, targets, power), image)
