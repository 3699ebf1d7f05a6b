"""Mirrors modules/sd_hijack_clip.py (FrozenCLIPEmbedderWithCustomWordsBase, FrozenCLIPEmbedderWithCustomWords)
and, for textual inversion, modules/textual_inversion's EmbeddingDatabase and sd_hijack.EmbeddingsWithFixes.
The base class is what modules/sd_hijack_open_clip.py's wrappers (stand-in: sd_hijack_open_clip.py) build on.

Faithful on what T-SAM reads: `tokenize_line(line)` -> 77-token chunks (BOS + 75 + EOS padding) with
`.tokens`, `.multipliers`, `.fixes`; BREAK starts a chunk; comma back-tracking; emphasis multipliers scale the
encoder OUTPUT only ("Original" emphasis); clip skip from `opts.CLIP_stop_at_last_layers`; `wrapped.transformer`.
Simplified: the host wraps the token embedding permanently (EmbeddingsWithFixes); here the fixes are applied by a
hook for the duration of one encode, so the shared test model is never modified. A1111 1.10 puts the chunking into
TextConditionalModel, the base of FrozenCLIPEmbedderWithCustomWordsBase; here both are one class.
"""

from __future__ import annotations

import contextlib
import math
from collections import namedtuple

import torch

from modules import devices, prompt_parser
from modules.shared import opts

PromptChunkFix = namedtuple("PromptChunkFix", ["offset", "embedding"])


class PromptChunk:
    def __init__(self):
        self.tokens = []
        self.multipliers = []
        self.fixes = []


class Embedding:
    """A textual-inversion embedding: `vec` [vectors, dim] placed at a placeholder word."""

    def __init__(self, vec, name):
        self.vec = vec
        self.name = name
        # SDXL embeddings are {"clip_l": [k, 768], "clip_g": [k, 1280]}; textual_inversion.py counts clip_g's rows.
        self.vectors = vec["clip_g"].shape[0] if isinstance(vec, dict) else vec.shape[0]


class EmbeddingDatabase:
    def __init__(self):
        self.ids_lookup = {}  # first token id -> [(ids, embedding)]

    def register(self, ids, embedding):
        self.ids_lookup.setdefault(ids[0], []).append((list(ids), embedding))

    def find_embedding_at_position(self, tokens, offset):
        for ids, embedding in self.ids_lookup.get(tokens[offset], []):
            if tokens[offset:offset + len(ids)] == ids:
                return embedding, len(ids)
        return None, None


class Hijack:
    """The slice of sd_hijack.StableDiffusionModelHijack the wrapper uses."""

    def __init__(self):
        self.embedding_db = EmbeddingDatabase()
        self.fixes = None
        self.extra_generation_params = {}


class FrozenCLIPEmbedderWithCustomWordsBase(torch.nn.Module):
    """Chunking, emphasis and the forward shared by the CLIP and open_clip wrappers; subclasses set the token ids
    (comma_token, id_start, id_end, id_pad) and implement tokenize / encode_with_transformers."""

    def __init__(self, wrapped, hijack):
        super().__init__()
        self.wrapped = wrapped
        self.hijack = hijack
        self.chunk_length = 75
        self.return_pooled = getattr(wrapped, "return_pooled", False)  # SDXL's bigG embedder sets it
        self.comma_token = None
        self.id_start = None
        self.id_end = None
        self.id_pad = None

    def tokenize(self, texts):
        raise NotImplementedError

    def encode_with_transformers(self, tokens):
        raise NotImplementedError

    def empty_chunk(self):
        chunk = PromptChunk()
        chunk.tokens = [self.id_start] + [self.id_end] * (self.chunk_length + 1)
        chunk.multipliers = [1.0] * (self.chunk_length + 2)
        return chunk

    def get_target_prompt_token_count(self, token_count):
        return math.ceil(max(token_count, 1) / self.chunk_length) * self.chunk_length

    def tokenize_line(self, line):
        parsed = prompt_parser.parse_prompt_attention(line) if opts.emphasis != "None" else [[line, 1.0]]
        tokenized = self.tokenize([text for text, _ in parsed])
        chunks = []
        chunk = PromptChunk()
        token_count = 0
        last_comma = -1

        def next_chunk(is_last=False):
            nonlocal token_count, last_comma, chunk
            token_count += len(chunk.tokens) if is_last else self.chunk_length
            to_add = self.chunk_length - len(chunk.tokens)
            if to_add > 0:
                chunk.tokens += [self.id_end] * to_add
                chunk.multipliers += [1.0] * to_add
            chunk.tokens = [self.id_start] + chunk.tokens + [self.id_end]
            chunk.multipliers = [1.0] + chunk.multipliers + [1.0]
            last_comma = -1
            chunks.append(chunk)
            chunk = PromptChunk()

        for tokens, (text, weight) in zip(tokenized, parsed, strict=True):
            if text == "BREAK" and weight == -1:
                next_chunk()
                continue
            position = 0
            while position < len(tokens):
                token = tokens[position]
                if token == self.comma_token:
                    last_comma = len(chunk.tokens)
                elif (opts.comma_padding_backtrack != 0 and len(chunk.tokens) == self.chunk_length
                      and last_comma != -1 and len(chunk.tokens) - last_comma <= opts.comma_padding_backtrack):
                    # Words after the last comma move to the next chunk, as the host's comma back-tracking does.
                    cut = last_comma + 1
                    moved_tokens, moved_mults = chunk.tokens[cut:], chunk.multipliers[cut:]
                    chunk.tokens, chunk.multipliers = chunk.tokens[:cut], chunk.multipliers[:cut]
                    next_chunk()
                    chunk.tokens, chunk.multipliers = moved_tokens, moved_mults
                if len(chunk.tokens) == self.chunk_length:
                    next_chunk()
                embedding, embedding_length_in_tokens = self.hijack.embedding_db.find_embedding_at_position(
                    tokens, position)
                if embedding is None:
                    chunk.tokens.append(token)
                    chunk.multipliers.append(weight)
                    position += 1
                    continue
                emb_len = int(embedding.vectors)
                if len(chunk.tokens) + emb_len > self.chunk_length:
                    next_chunk()
                chunk.fixes.append(PromptChunkFix(len(chunk.tokens), embedding))
                chunk.tokens += [0] * emb_len
                chunk.multipliers += [weight] * emb_len
                position += embedding_length_in_tokens
        if chunk.tokens or not chunks:
            next_chunk(is_last=True)
        return chunks, token_count

    def forward(self, texts):
        batch_chunks = [self.tokenize_line(line)[0] for line in texts]
        chunk_count = max(len(x) for x in batch_chunks)
        zs = []
        for i in range(chunk_count):
            batch_chunk = [chunks[i] if i < len(chunks) else self.empty_chunk() for chunks in batch_chunks]
            self.hijack.fixes = [x.fixes for x in batch_chunk]
            zs.append(self.process_tokens([x.tokens for x in batch_chunk], [x.multipliers for x in batch_chunk]))
        if self.return_pooled:
            return torch.hstack(zs), zs[0].pooled
        return torch.hstack(zs)

    def process_tokens(self, remade_batch_tokens, batch_multipliers):
        tokens = torch.asarray(remade_batch_tokens).to(devices.device)
        # SD2/SDXL-bigG: open_clip pads with 0 after the first EOS (SD1 pads with EOS: id_pad == id_end).
        if self.id_end != self.id_pad:
            for batch_pos in range(len(remade_batch_tokens)):
                index = remade_batch_tokens[batch_pos].index(self.id_end)
                tokens[batch_pos, index + 1:tokens.shape[1]] = self.id_pad
        z = self.encode_with_transformers(tokens)
        pooled = getattr(z, "pooled", None)
        # sd_emphasis.EmphasisOriginal: scale each token's output, then restore the overall mean.
        multipliers = torch.asarray(batch_multipliers).to(z)
        original_mean = z.mean()
        z = z * multipliers.reshape(multipliers.shape + (1,)).expand(z.shape)
        new_mean = z.mean()
        # Stand-in only: the random tiny model's final LayerNorm has zero bias, so both means are ~0 and their ratio
        # is noise (0/0 for an empty prompt); trained encoders never hit this, so the restoration is skipped here.
        if abs(float(new_mean)) > 1e-4 * float(z.abs().mean()):
            z = z * (original_mean / new_mean)
        if pooled is not None:
            z.pooled = pooled
        return z


class FrozenCLIPEmbedderWithCustomWords(FrozenCLIPEmbedderWithCustomWordsBase):
    def __init__(self, wrapped, hijack):
        super().__init__(wrapped, hijack)  # wrapped has .transformer (CLIPTextModel) and .tokenizer, like ldm's
        self.tokenizer = wrapped.tokenizer
        self.comma_token = self.tokenizer.get_vocab().get(",</w>", None)
        self.id_start = self.tokenizer.bos_token_id
        self.id_end = self.tokenizer.eos_token_id
        self.id_pad = self.id_end

    def tokenize(self, texts):
        return self.tokenizer(texts, truncation=False, add_special_tokens=False)["input_ids"]

    def encode_with_transformers(self, tokens):
        fixes, self.hijack.fixes = self.hijack.fixes, None
        with _apply_fixes(self.wrapped.transformer.get_input_embeddings(), fixes):
            outputs = self.wrapped.transformer(input_ids=tokens, output_hidden_states=opts.CLIP_stop_at_last_layers > 1)
        if opts.CLIP_stop_at_last_layers > 1:
            z = outputs.hidden_states[-opts.CLIP_stop_at_last_layers]
            return self.wrapped.transformer.text_model.final_layer_norm(z)
        return outputs.last_hidden_state


@contextlib.contextmanager
def _apply_fixes(token_embedding, batch_fixes, textual_inversion_key="clip_l"):
    """sd_hijack.EmbeddingsWithFixes' effect: embedding vectors replace the rows after each fix's offset. SDXL
    embeddings hold one tensor per encoder; each encoder's EmbeddingsWithFixes picks its key (clip_l / clip_g)."""
    if not batch_fixes or not any(batch_fixes):
        yield
        return

    def hook(_module, _inputs, output):
        rows = []
        for fixes, row in zip(batch_fixes, output, strict=True):
            for offset, embedding in fixes:
                vec = embedding.vec[textual_inversion_key] if isinstance(embedding.vec, dict) else embedding.vec
                emb = vec.to(row)
                n = min(row.shape[0] - offset - 1, emb.shape[0])
                row = torch.cat([row[: offset + 1], emb[:n], row[offset + 1 + n:]])
            rows.append(row)
        return torch.stack(rows)

    handle = token_embedding.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class FrozenCLIPEmbedderForSDXLWithCustomWords(FrozenCLIPEmbedderWithCustomWords):
    """modules/sd_hijack_clip.py (1.10.1, :370-384): SDXL's CLIP-L wrapper around sgm's FrozenCLIPEmbedder, whose
    sd_xl_base.yaml settings are layer "hidden", layer_idx 11: z is hidden_states[11] (the penultimate layer's
    output) with NO final layer norm. "Clip skip" reaches CLIP-L only with the "sdxl_clip_l_skip" option on
    (shared_options.py:180, default off), and then as hidden_states[-CLIP_stop_at_last_layers]: with skip 1 that
    is the last layer's output, not the default hidden_states[11]. The stand-in Options has no sdxl_clip_l_skip
    (read with getattr: the host's default, False)."""

    def encode_with_transformers(self, tokens):
        fixes, self.hijack.fixes = self.hijack.fixes, None
        with _apply_fixes(self.wrapped.transformer.get_input_embeddings(), fixes):
            outputs = self.wrapped.transformer(input_ids=tokens, output_hidden_states=self.wrapped.layer == "hidden")
        if getattr(opts, "sdxl_clip_l_skip", False) is True:
            return outputs.hidden_states[-opts.CLIP_stop_at_last_layers]
        if self.wrapped.layer == "last":
            return outputs.last_hidden_state
        return outputs.hidden_states[self.wrapped.layer_idx]
