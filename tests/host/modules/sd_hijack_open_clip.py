"""Mirrors modules/sd_hijack_open_clip.py of A1111 1.10.1: FrozenOpenCLIPEmbedderWithCustomWords (SD 2.x, wraps
ldm's FrozenOpenCLIPEmbedder) and FrozenOpenCLIPEmbedder2WithCustomWords (SDXL's ViT-bigG encoder, wraps sgm's
FrozenOpenCLIPEmbedder2), on the stand-in FrozenCLIPEmbedderWithCustomWordsBase (sd_hijack_clip.py).

Faithful on what T-SAM reads: the tokenizer is open_clip's module-level SimpleTokenizer (`open_clip.tokenizer.
_tokenizer`); comma_token, id_start 49406, id_end 49407 and id_pad 0 as the host sets them; Clip skip is NOT
applied (the host leaves it as a comment for SD2, and the bigG wrapper reads `wrapped.layer`); the bigG wrapper
returns `d[wrapped.layer]` with `.pooled` attached.
Simplified: open_clip is imported through standalone.openclip (no torchvision here); textual-inversion fixes are
applied by a hook on `wrapped.model.token_embedding` during one encode instead of the host's permanent
EmbeddingsWithFixes (so `encode_embedding_init_text` calls token_embedding itself, not `.wrapped`); the stand-in
Options has no `use_old_emphasis_implementation`, read with getattr (False, the host's default).
"""

from __future__ import annotations

import torch

from modules import devices, sd_hijack_clip
from modules.shared import opts
from standalone.openclip import import_open_clip

tokenizer = import_open_clip().tokenizer._tokenizer


def _old_emphasis() -> bool:
    return bool(getattr(opts, "use_old_emphasis_implementation", False))


class _OpenCLIPTokens(sd_hijack_clip.FrozenCLIPEmbedderWithCustomWordsBase):
    """What the host's two OpenCLIP wrappers share word for word: open_clip's tokenizer ids, padding with 0."""

    def __init__(self, wrapped, hijack):
        super().__init__(wrapped, hijack)
        self.comma_token = tokenizer.encoder[",</w>"]
        self.id_start = tokenizer.encoder["<start_of_text>"]
        self.id_end = tokenizer.encoder["<end_of_text>"]
        self.id_pad = 0

    def tokenize(self, texts):
        assert not _old_emphasis(), "Old emphasis implementation not supported for Open Clip"
        return [tokenizer.encode(text) for text in texts]


class FrozenOpenCLIPEmbedderWithCustomWords(_OpenCLIPTokens):
    def encode_with_transformers(self, tokens):
        # The host never sets wrapped.layer_idx from opts.CLIP_stop_at_last_layers: the config's layer is used.
        fixes, self.hijack.fixes = self.hijack.fixes, None
        with sd_hijack_clip._apply_fixes(self.wrapped.model.token_embedding, fixes):
            return self.wrapped.encode_with_transformer(tokens)

    def encode_embedding_init_text(self, init_text, nvpt):
        ids = torch.asarray([tokenizer.encode(init_text)], device=devices.device, dtype=torch.int)
        return self.wrapped.model.token_embedding(ids).squeeze(0)


class FrozenOpenCLIPEmbedder2WithCustomWords(_OpenCLIPTokens):
    def encode_with_transformers(self, tokens):
        # sgm's embedder returns {"last", "penultimate", "pooled"}; the cond is the configured layer ("penultimate"
        # in sd_xl_base.yaml), the pooled vector rides along on the tensor as the host does it.
        fixes, self.hijack.fixes = self.hijack.fixes, None
        with sd_hijack_clip._apply_fixes(self.wrapped.model.token_embedding, fixes, textual_inversion_key="clip_g"):
            d = self.wrapped.encode_with_transformer(tokens)
        z = d[self.wrapped.layer]
        pooled = d.get("pooled")
        if pooled is not None:
            z.pooled = pooled
        return z

    def encode_embedding_init_text(self, init_text, nvpt):
        ids = torch.asarray([tokenizer.encode(init_text)], device=devices.device, dtype=torch.int)
        return self.wrapped.model.token_embedding(ids).squeeze(0)
