"""Mirrors backend/text_processing/classic_engine.py: `ClassicTextProcessingEngine`, Forge's port of A1111's CLIP
wrapper, one per CLIP encoder (SD1: `sd_model.text_processing_engine`; SDXL: `text_processing_engine_l` and `_g`).

Faithful on: `tokenize_line(line)` -> (chunks, token_count), each chunk 77 ids (BOS + 75 + EOS) with `.tokens`,
`.multipliers` and `.fixes` (`PromptChunkFix(offset, embedding)`); BREAK starts a chunk; comma back-tracking (Forge
hard-codes 20); textual-inversion placeholders through the engine's own `embeddings` database; `id_start`,
`id_end`, `id_pad` (the tokenizer's pad id: EOS for CLIP-L, "!" = 0 for bigG) and `process_tokens` writing id_pad
after the first EOS when they differ; `encode_with_transformers`: hidden_states[-max(clip_skip, minimal_clip_skip)],
then final_layer_norm if set, and for return_pooled the pooler output (through `text_projection` for non-clip_l
keys) as `z.pooled`; emphasis after the encoder; `__call__(texts)` -> hstack of the chunks' z (and the first chunk's
pooled). Installing the engine replaces `text_encoder.transformer.text_model.embeddings.token_embedding` by a
`CLIPEmbeddingForTextualInversion` wrapping it, as Forge does (so state-dict keys gain ".wrapped").
Simplified: no embedding directory, no "TI" infotext entry (`last_extra_generation_params` stays empty unless an
emphasis other than Original is used); no per-line cache in process_texts.
"""

from __future__ import annotations

import math
from collections import namedtuple
from typing import Any

import torch
from modules.shared import opts
from torch import Tensor

from backend import memory_management
from backend.text_processing import emphasis, parsing
from backend.text_processing.textual_inversion import EmbeddingDatabase

PromptChunkFix = namedtuple("PromptChunkFix", ["offset", "embedding"])
last_extra_generation_params: dict[str, Any] = {}


class PromptChunk:
    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.multipliers: list[float] = []
        self.fixes: list[PromptChunkFix] = []


class CLIPEmbeddingForTextualInversion(torch.nn.Module):
    """The token embedding with the database's pending `fixes` (taken once per forward) written over the rows after
    each fix's offset."""

    def __init__(self, wrapped: torch.nn.Module, embeddings: EmbeddingDatabase, textual_inversion_key: str = "clip_l"
                 ) -> None:
        super().__init__()
        self.wrapped = wrapped
        self.embeddings = embeddings
        self.textual_inversion_key = textual_inversion_key
        self.weight = self.wrapped.weight

    def forward(self, input_ids: Tensor) -> Tensor:
        batch_fixes, self.embeddings.fixes = self.embeddings.fixes, None
        inputs_embeds = self.wrapped(input_ids)
        if not batch_fixes or max(len(x) for x in batch_fixes) == 0:
            return inputs_embeds
        rows = []
        for fixes, row in zip(batch_fixes, inputs_embeds, strict=True):
            for offset, embedding in fixes:
                vec = embedding.vec
                emb = (vec[self.textual_inversion_key] if isinstance(vec, dict) else vec).to(inputs_embeds)
                n = min(row.shape[0] - offset - 1, emb.shape[0])
                row = torch.cat([row[:offset + 1], emb[:n], row[offset + 1 + n:]]).to(dtype=inputs_embeds.dtype)
            rows.append(row)
        return torch.stack(rows)


class ClassicTextProcessingEngine:
    def __init__(self, text_encoder: Any, tokenizer: Any, chunk_length: int = 75, embedding_dir: Any = None,
                 embedding_key: str = "clip_l", embedding_expected_shape: int = 768, emphasis_name: str = "Original",
                 text_projection: bool = False, minimal_clip_skip: int = 1, clip_skip: int = 1,
                 return_pooled: bool = False, final_layer_norm: bool = True) -> None:
        self.embeddings = EmbeddingDatabase(tokenizer, embedding_expected_shape)
        self.embedding_key = embedding_key
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.emphasis = emphasis.get_current_option(opts.emphasis)()
        self.text_projection = text_projection
        self.minimal_clip_skip = minimal_clip_skip
        self.clip_skip = clip_skip
        self.return_pooled = return_pooled
        self.final_layer_norm = final_layer_norm
        self.chunk_length = chunk_length
        self.id_start = tokenizer.bos_token_id
        self.id_end = tokenizer.eos_token_id
        self.id_pad = tokenizer.pad_token_id
        embeddings = text_encoder.transformer.text_model.embeddings
        embeddings.token_embedding = CLIPEmbeddingForTextualInversion(embeddings.token_embedding, self.embeddings,
                                                                      textual_inversion_key=embedding_key)
        self.comma_token = tokenizer.get_vocab().get(",</w>", None)

    def empty_chunk(self) -> PromptChunk:
        chunk = PromptChunk()
        chunk.tokens = [self.id_start] + [self.id_end] * (self.chunk_length + 1)
        chunk.multipliers = [1.0] * (self.chunk_length + 2)
        return chunk

    def get_target_prompt_token_count(self, token_count: int) -> int:
        return math.ceil(max(token_count, 1) / self.chunk_length) * self.chunk_length

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, truncation=False, add_special_tokens=False)["input_ids"]

    def encode_with_transformers(self, tokens: Tensor) -> Tensor:
        tokens = tokens.to(memory_management.text_encoder_device())
        outputs = self.text_encoder.transformer(tokens, output_hidden_states=True)
        z = outputs.hidden_states[-max(self.clip_skip, self.minimal_clip_skip)]
        if self.final_layer_norm:
            z = self.text_encoder.transformer.text_model.final_layer_norm(z)
        if self.return_pooled:
            pooled = outputs.pooler_output
            if self.text_projection and self.embedding_key != "clip_l":
                pooled = self.text_encoder.transformer.text_projection(pooled)
            z.pooled = pooled
        return z

    def tokenize_line(self, line: str) -> tuple[list[PromptChunk], int]:
        parsed = parsing.parse_prompt_attention(line, self.emphasis.name)
        tokenized = self.tokenize([text for text, _ in parsed])
        chunks: list[PromptChunk] = []
        chunk = PromptChunk()
        token_count = 0
        last_comma = -1

        def next_chunk(is_last: bool = False) -> None:
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

        backtrack = 20  # Forge hard-codes A1111's default "comma_padding_backtrack"
        for tokens, (text, weight) in zip(tokenized, parsed, strict=True):
            if text == "BREAK" and weight == -1:
                next_chunk()
                continue
            position = 0
            while position < len(tokens):
                token = tokens[position]
                if token == self.comma_token:
                    last_comma = len(chunk.tokens)
                elif (len(chunk.tokens) == self.chunk_length and last_comma != -1
                      and len(chunk.tokens) - last_comma <= backtrack):
                    # The words after the last comma move to the next chunk.
                    cut = last_comma + 1
                    moved_tokens, moved_mults = chunk.tokens[cut:], chunk.multipliers[cut:]
                    chunk.tokens, chunk.multipliers = chunk.tokens[:cut], chunk.multipliers[:cut]
                    next_chunk()
                    chunk.tokens, chunk.multipliers = moved_tokens, moved_mults
                if len(chunk.tokens) == self.chunk_length:
                    next_chunk()
                embedding, length_in_tokens = self.embeddings.find_embedding_at_position(tokens, position)
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
                position += length_in_tokens
        if chunk.tokens or not chunks:
            next_chunk(is_last=True)
        return chunks, token_count

    def process_texts(self, texts: list[str]) -> tuple[list[list[PromptChunk]], int]:
        batch_chunks, token_count = [], 0
        for line in texts:
            chunks, count = self.tokenize_line(line)
            token_count = max(count, token_count)
            batch_chunks.append(chunks)
        return batch_chunks, token_count

    def __call__(self, texts: list[str]) -> Any:
        self.emphasis = emphasis.get_current_option(opts.emphasis)()
        batch_chunks, _ = self.process_texts(texts)
        zs = []
        for i in range(max(len(x) for x in batch_chunks)):
            batch_chunk = [chunks[i] if i < len(chunks) else self.empty_chunk() for chunks in batch_chunks]
            self.embeddings.fixes = [x.fixes for x in batch_chunk]
            zs.append(self.process_tokens([x.tokens for x in batch_chunk], [x.multipliers for x in batch_chunk]))
        if any("(" in x or "[" in x for x in texts) and self.emphasis.name != "Original":
            last_extra_generation_params["Emphasis"] = self.emphasis.name
        if self.return_pooled:
            return torch.hstack(zs), zs[0].pooled
        return torch.hstack(zs)

    def process_tokens(self, remade_batch_tokens: list[list[int]], batch_multipliers: list[list[float]]) -> Tensor:
        tokens = torch.asarray(remade_batch_tokens)
        if self.id_end != self.id_pad:
            for row in range(len(remade_batch_tokens)):
                index = remade_batch_tokens[row].index(self.id_end)
                tokens[row, index + 1:tokens.shape[1]] = self.id_pad
        z = self.encode_with_transformers(tokens)
        pooled = getattr(z, "pooled", None)
        self.emphasis.tokens = remade_batch_tokens
        self.emphasis.multipliers = torch.asarray(batch_multipliers).to(z)
        self.emphasis.z = z
        self.emphasis.after_transformers()
        z = self.emphasis.z
        if pooled is not None:
            z.pooled = pooled
        return z
