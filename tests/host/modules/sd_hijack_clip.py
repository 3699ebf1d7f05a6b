"""Mirrors modules/sd_hijack_clip.py (FrozenCLIPEmbedderWithCustomWords) and, for textual inversion,
modules/textual_inversion's EmbeddingDatabase and sd_hijack.EmbeddingsWithFixes.

Faithful on what T-SAM reads: `tokenize_line(line)` -> 77-token chunks (BOS + 75 + EOS padding) with
`.tokens`, `.multipliers`, `.fixes`; BREAK starts a chunk; comma back-tracking; emphasis multipliers scale the
encoder OUTPUT only ("Original" emphasis); clip skip from `opts.CLIP_stop_at_last_layers`; `wrapped.transformer`.
Simplified: the host wraps the token embedding permanently (EmbeddingsWithFixes); here the fixes are applied by a
hook for the duration of one encode, so the shared test model is never modified.
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
        self.vectors = vec.shape[0]


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


class FrozenCLIPEmbedderWithCustomWords(torch.nn.Module):
    def __init__(self, wrapped, hijack):
        super().__init__()
        self.wrapped = wrapped  # has .transformer (CLIPTextModel) and .tokenizer, like ldm's FrozenCLIPEmbedder
        self.hijack = hijack
        self.chunk_length = 75
        self.tokenizer = wrapped.tokenizer
        self.comma_token = self.tokenizer.get_vocab().get(",</w>", None)
        self.id_start = self.tokenizer.bos_token_id
        self.id_end = self.tokenizer.eos_token_id
        self.id_pad = self.id_end

    def empty_chunk(self):
        chunk = PromptChunk()
        chunk.tokens = [self.id_start] + [self.id_end] * (self.chunk_length + 1)
        chunk.multipliers = [1.0] * (self.chunk_length + 2)
        return chunk

    def get_target_prompt_token_count(self, token_count):
        return math.ceil(max(token_count, 1) / self.chunk_length) * self.chunk_length

    def tokenize(self, texts):
        return self.tokenizer(texts, truncation=False, add_special_tokens=False)["input_ids"]

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
        return torch.hstack(zs)

    def process_tokens(self, remade_batch_tokens, batch_multipliers):
        tokens = torch.asarray(remade_batch_tokens).to(devices.device)
        z = self.encode_with_transformers(tokens)
        # sd_emphasis.EmphasisOriginal: scale each token's output, then restore the overall mean.
        multipliers = torch.asarray(batch_multipliers).to(z)
        original_mean = z.mean()
        z = z * multipliers.reshape(multipliers.shape + (1,)).expand(z.shape)
        new_mean = z.mean()
        # Stand-in only: the random tiny model's final LayerNorm has zero bias, so both means are ~0 and their ratio
        # is noise (0/0 for an empty prompt); trained encoders never hit this, so the restoration is skipped here.
        if abs(float(new_mean)) > 1e-4 * float(z.abs().mean()):
            z = z * (original_mean / new_mean)
        return z

    def encode_with_transformers(self, tokens):
        fixes, self.hijack.fixes = self.hijack.fixes, None
        with _apply_fixes(self.wrapped.transformer, fixes):
            outputs = self.wrapped.transformer(input_ids=tokens, output_hidden_states=opts.CLIP_stop_at_last_layers > 1)
        if opts.CLIP_stop_at_last_layers > 1:
            z = outputs.hidden_states[-opts.CLIP_stop_at_last_layers]
            return self.wrapped.transformer.text_model.final_layer_norm(z)
        return outputs.last_hidden_state


@contextlib.contextmanager
def _apply_fixes(transformer, batch_fixes):
    """sd_hijack.EmbeddingsWithFixes' effect: embedding vectors replace the rows after each fix's offset."""
    if not batch_fixes or not any(batch_fixes):
        yield
        return

    def hook(_module, _inputs, output):
        rows = []
        for fixes, row in zip(batch_fixes, output, strict=True):
            for offset, embedding in fixes:
                emb = embedding.vec.to(row)
                n = min(row.shape[0] - offset - 1, emb.shape[0])
                row = torch.cat([row[: offset + 1], emb[:n], row[offset + 1 + n:]])
            rows.append(row)
        return torch.stack(rows)

    handle = transformer.get_input_embeddings().register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
