"""CLIP image-text similarity as Attend-and-Excite measures it, which the T-SAM paper reports.

A&E's protocol (metrics/compute_clip_similarity.py and metrics/imagenet_utils.py in yuval-alaluf/Attend-and-Excite):
OpenAI CLIP ViT-B/16; a text's embedding is the mean of its L2-normalised embeddings in the 80 ImageNet prompt
templates of CLIP (with "a a" -> "a" and "the a" -> "a"), normalised again; an image's score is the cosine
between its normalised embedding and that text embedding.

- full-prompt similarity: the whole prompt;
- minimum-object similarity: each object's sub-prompt ("a cat", "a red car", see `object_prompts`) scored on its
  own, and the smaller of the scores kept.

The image side reproduces CLIP's own preprocessing (clip/clip.py `_transform`: resize the short side to the input
size with bicubic filtering, centre crop, scale to [0, 1], normalise with CLIP's mean and std) with PIL and numpy
only, so that no torchvision is needed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .prompt_sets import object_prompts

# OpenAI CLIP's normalisation constants (openai/CLIP, clip/clip.py `_transform`).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

DEFAULT_CLIP = "openai/clip-vit-base-patch16"  # the Hugging Face copy of OpenAI's ViT-B/16, the model A&E used
HOW_TO_GET_CLIP = ("get it with `huggingface-cli download openai/clip-vit-base-patch16 --local-dir clip-vit-b16` "
                   "and pass --clip clip-vit-b16")

# CLIP's 80 ImageNet prompt templates (openai/CLIP, notebooks/Prompt_Engineering_for_ImageNet.ipynb), which A&E's
# metric averages every text over.
IMAGENET_TEMPLATES = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
    "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
    "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.",
    "a photo of a {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.",
    "a origami {}.", "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.",
    "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
    "a photo of the weird {}.", "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
    "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.",
    "a photo of a small {}.", "a tattoo of the {}.",
)


class SetupError(Exception):
    """A problem the user must fix before anything runs (missing CLIP, no GPU, ...): one line, no traceback."""


# ---------------------------------------------------------------------------------------------------------------
# the arithmetic (pure functions: what the tests check by hand)


def cosine(a: Tensor, b: Tensor) -> float:
    """Cosine similarity of two vectors (CLIP score of an image and a text embedding)."""
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()))


def minimum_object(similarities: Sequence[float]) -> float:
    """A&E's minimum-object similarity: the worst-depicted object's score decides."""
    if not similarities:
        raise ValueError("a prompt needs at least one object")
    return float(min(similarities))


def template_texts(text: str, templates: Sequence[str] = IMAGENET_TEMPLATES) -> list[str]:
    """The texts A&E embeds for one prompt: each template filled in, with its two article fixes."""
    return [t.format(text).replace("a a", "a").replace("the a", "a") for t in templates]


def averaged_embedding(embeddings: Tensor) -> Tensor:
    """Mean of L2-normalised embeddings [n, d], normalised again -> [d]."""
    e = embeddings.float()
    e = e / e.norm(dim=-1, keepdim=True)
    mean = e.mean(dim=0)
    return mean / mean.norm()


def preprocess(image: Image.Image, size: int) -> Tensor:
    """CLIP's preprocessing with PIL + numpy: short side to `size` (bicubic), centre crop, RGB, [0, 1], normalise.

    Follows torchvision's Resize (long side int(size * long / short)) and CenterCrop (offsets rounded) as CLIP
    applies them to PIL images, so the pixels equal OpenAI CLIP's `preprocess`.
    """
    w, h = image.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), Image.BICUBIC)
    left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
    image = image.crop((left, top, left + size, top + size)).convert("RGB")
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return (pixels - mean) / std


# ---------------------------------------------------------------------------------------------------------------
# scoring


@dataclass
class ImageScore:
    full: float  # full-prompt similarity
    objects: list[str]  # the object sub-prompts
    object_similarities: list[float]
    min_object: float


@dataclass
class ClipScorer:
    """A CLIP model behind two functions: texts -> embeddings, preprocessed pixels -> embeddings."""

    name: str
    image_size: int
    encode_texts: Callable[[list[str]], Tensor]
    encode_pixels: Callable[[Tensor], Tensor]
    _texts: dict[str, Tensor] = field(default_factory=dict, repr=False)

    def text_embedding(self, text: str) -> Tensor:
        """A&E's template-averaged embedding of one text (cached: each prompt's texts are embedded once)."""
        if text not in self._texts:
            with torch.no_grad():
                self._texts[text] = averaged_embedding(self.encode_texts(template_texts(text))).cpu()
        return self._texts[text]

    def image_embeddings(self, images: Sequence[Image.Image]) -> Tensor:
        pixels = torch.stack([preprocess(im, self.image_size) for im in images])
        with torch.no_grad():
            return self.encode_pixels(pixels).float().cpu()

    def score(self, images: Sequence[Image.Image], prompt: str) -> list[ImageScore]:
        """Full-prompt and per-object similarities of images of one prompt."""
        objects = object_prompts(prompt)
        full = self.text_embedding(prompt)
        parts = [self.text_embedding(o) for o in objects]
        out = []
        for emb in self.image_embeddings(images):
            sims = [cosine(emb, p) for p in parts]
            out.append(ImageScore(full=cosine(emb, full), objects=objects, object_similarities=sims,
                                  min_object=minimum_object(sims)))
        return out


# ---------------------------------------------------------------------------------------------------------------
# loading a CLIP (offline only)


def load_clip(spec: str, device: torch.device | str = "cpu") -> ClipScorer:
    """A CLIP from a local transformers folder, a Hugging Face id already in the local cache, or
    `open_clip:MODEL/PRETRAINED` (e.g. open_clip:ViT-B-16/openai) already in open_clip's cache. Never downloads:
    anything missing is a SetupError that says how to get it."""
    device = torch.device(device)
    if spec.startswith("open_clip:"):
        return _load_open_clip(spec[len("open_clip:"):], device)
    from transformers import CLIPModel, CLIPTokenizer

    where = "folder" if Path(spec).is_dir() else "Hugging Face cache"
    try:
        model = CLIPModel.from_pretrained(spec, local_files_only=True)
        tokenizer = CLIPTokenizer.from_pretrained(spec, local_files_only=True)
    except (OSError, ValueError) as e:
        if where == "folder":
            raise SetupError(f"--clip {spec}: this folder holds no transformers CLIP model ({_first_line(e)}); "
                             f"{HOW_TO_GET_CLIP}") from None
        raise SetupError(f"--clip {spec}: CLIP is neither a local folder nor in the Hugging Face cache; "
                         f"{HOW_TO_GET_CLIP}") from None
    model = model.to(device).eval()

    def encode_texts(texts: list[str]) -> Tensor:
        batch = tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt").to(device)
        return model.get_text_features(**batch)

    def encode_pixels(pixels: Tensor) -> Tensor:
        return model.get_image_features(pixel_values=pixels.to(device))

    return ClipScorer(name=spec, image_size=int(model.config.vision_config.image_size),
                      encode_texts=encode_texts, encode_pixels=encode_pixels)


def _load_open_clip(name: str, device: torch.device) -> ClipScorer:
    model_name, _, pretrained = name.partition("/")
    try:
        import open_clip
    except ImportError as e:  # open_clip imports torchvision at the top
        raise SetupError(f"--clip open_clip:{name}: open_clip cannot be imported ({_first_line(e)}); install "
                         f"torchvision, or use a transformers CLIP: {HOW_TO_GET_CLIP}") from None
    if not hasattr(open_clip, "create_model"):
        # Only its text tower was imported (standalone.openclip does that where torchvision is missing).
        raise SetupError(f"--clip open_clip:{name}: open_clip cannot be imported in full (no torchvision); install "
                         f"torchvision, or use a transformers CLIP: {HOW_TO_GET_CLIP}")
    if not pretrained or not _open_clip_cached(open_clip, model_name, pretrained):
        raise SetupError(f"--clip open_clip:{name}: these weights are not in open_clip's cache; run once online "
                         f"`python -c \"import open_clip; open_clip.create_model('{model_name}', "
                         f"pretrained='{pretrained or 'openai'}')\"`, or {HOW_TO_GET_CLIP}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: the cache check above found the file
    model = open_clip.create_model(model_name, pretrained=pretrained, device=device).eval()
    tokenizer = open_clip.get_tokenizer(model_name)
    size = model.visual.image_size
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    return ClipScorer(name=f"open_clip:{name}", image_size=size,
                      encode_texts=lambda texts: model.encode_text(tokenizer(texts).to(device)),
                      encode_pixels=lambda pixels: model.encode_image(pixels.to(device)))


def _open_clip_cached(open_clip: Any, model_name: str, pretrained: str) -> bool:
    """Whether open_clip would find these weights without a download (its URL cache or the HF hub cache)."""
    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not cfg:
        return Path(pretrained).is_file()
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        repo_id = "/".join(cfg["hf_hub"].split("/")[:2])
        for candidate in ("open_clip_pytorch_model.bin", "open_clip_model.safetensors"):
            if isinstance(try_to_load_from_cache(repo_id, candidate), str):
                return True
        return False
    url = cfg.get("url", "")
    return bool(url) and (Path.home() / ".cache" / "clip" / os.path.basename(url)).is_file()


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
