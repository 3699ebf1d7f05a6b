"""Mirrors backend/text_processing/textual_inversion.py: `Embedding` (`vec`: a [vectors, dim] tensor, or for SDXL a
dict {"clip_l", "clip_g"}; `vectors`; `name`) and `EmbeddingDatabase` (one per text engine: `ids_lookup` by first
token id, `register_embedding`, `find_embedding_at_position`, and `fixes`, the per-row placements the engine hands
its CLIPEmbeddingForTextualInversion for one encode).
Simplified: nothing is read from disk; tests register embeddings directly.
"""

from __future__ import annotations

from typing import Any


class Embedding:
    def __init__(self, vec: Any, name: str, step: int | None = None) -> None:
        self.vec = vec
        self.name = name
        self.step = step
        # create_embedding_from_data: SDXL embeddings count clip_g's rows.
        self.vectors = vec["clip_g"].shape[0] if isinstance(vec, dict) else vec.shape[0]
        self.shape = None


class EmbeddingDatabase:
    def __init__(self, tokenizer: Any, expected_shape: int = -1) -> None:
        self.ids_lookup: dict[int, list] = {}
        self.word_embeddings: dict[str, Embedding] = {}
        self.expected_shape = expected_shape
        self.tokenizer = tokenizer
        self.fixes: Any = []

    def register_embedding(self, embedding: Embedding) -> Embedding:
        return self.register_embedding_by_name(embedding, embedding.name)

    def register_embedding_by_name(self, embedding: Embedding, name: str) -> Embedding:
        ids = self.tokenizer([name], truncation=False, add_special_tokens=False)["input_ids"][0]
        lookup = [x for x in self.ids_lookup.get(ids[0], []) if x[1].name != name] + [(ids, embedding)]
        self.ids_lookup[ids[0]] = sorted(lookup, key=lambda x: len(x[0]), reverse=True)
        self.word_embeddings[name] = embedding
        return embedding

    def find_embedding_at_position(self, tokens: list[int], offset: int) -> tuple[Any, Any]:
        for ids, embedding in self.ids_lookup.get(tokens[offset], []):
            if tokens[offset:offset + len(ids)] == ids:
                return embedding, len(ids)
        return None, None
