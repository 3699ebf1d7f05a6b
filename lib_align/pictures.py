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

    def images(self) -> list[Image.Image]:
        return [im for im in (self.target, self.similarity, self.token_maps) if im is not None]


def words(chunk: ChunkTarget) -> list[str]:
    return [clean_token(t) for t in chunk.tokens] if chunk.tokens else [f"#{i + 1}" for i in range(chunk.length)]


def _label(title: str, index: int, count: int) -> str:
    return title if count == 1 else f"{title} (chunk {index + 1})"


def target_picture(targets: list[ChunkTarget], power: float | None = None) -> Image.Image:
    """T of every chunk of one prompt, labelled with its words."""
    title = "T (text self-attention)" if power is None else f"T (text self-attention, power {power:g})"
    return render_matrices([(c.target, words(c), _label(title, i, len(targets))) for i, c in enumerate(targets)])


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


def session_pictures(session: AlignSession | None, index: int, targets: list[ChunkTarget],
                     image: Image.Image | None, power: float | None = None) -> AttentionPictures:
    """All pictures of image `index` of a batch. Without recorded maps only T is drawn."""
    target = target_picture(targets, power)
    if session is None or session.first_maps is None or session.last_maps is None or not targets:
        return AttentionPictures(target, None, None)
    before, after = session.first_maps[index], session.last_maps[index]
    return AttentionPictures(target, similarity_pair(before, after, targets, session.config.smooth),
                             token_maps_picture(after, targets, image))
