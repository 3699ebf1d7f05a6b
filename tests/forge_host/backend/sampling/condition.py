"""Mirrors backend/sampling/condition.py: how the sampling function turns the webui conds into model inputs.

`compile_conditions(cond)`: a tensor [B, tokens, dim] -> one entry {"cross_attn", "model_conds": {"c_crossattn"}};
a dict {"crossattn", "vector"[, "guidance"]} -> one entry with "c_crossattn" and "y" (and "guidance").
`compile_weighted_conditions(cond, weights)`: one entry per AND position across the batch's images, the rows of
those images, with "strength" = the weight. `ConditionCrossAttn` concatenates contexts of different lengths by
repeating each to their least common multiple (refusing ratios above 4), as Forge does.
Simplified: a dict cond is indexed per key where Forge calls DictWithShape.advanced_indexing (the shared stand-in
prompt_parser's DictWithShape lacks it); no area / mask / timestep-range conditions.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor


def repeat_to_batch_size(tensor: Tensor, batch_size: int) -> Tensor:
    if tensor.shape[0] > batch_size:
        return tensor[:batch_size]
    if tensor.shape[0] < batch_size:
        repeats = [math.ceil(batch_size / tensor.shape[0])] + [1] * (len(tensor.shape) - 1)
        return tensor.repeat(repeats)[:batch_size]
    return tensor


class Condition:
    def __init__(self, cond: Tensor) -> None:
        self.cond = cond

    def process_cond(self, batch_size: int, device: Any, **kwargs: Any) -> Condition:
        return self.__class__(repeat_to_batch_size(self.cond, batch_size).to(device))

    def can_concat(self, other: Condition) -> bool:
        return self.cond.shape == other.cond.shape

    def concat(self, others: list[Condition]) -> Tensor:
        return torch.cat([self.cond] + [x.cond for x in others])


class ConditionCrossAttn(Condition):
    def can_concat(self, other: Condition) -> bool:
        s1, s2 = self.cond.shape, other.cond.shape
        if s1 == s2:
            return True
        if s1[0] != s2[0] or s1[2] != s2[2]:
            return False
        return math.lcm(s1[1], s2[1]) // min(s1[1], s2[1]) <= 4

    def concat(self, others: list[Condition]) -> Tensor:
        conds = [self.cond] + [x.cond for x in others]
        length = math.lcm(*(c.shape[1] for c in conds))
        return torch.cat([c.repeat(1, length // c.shape[1], 1) if c.shape[1] < length else c for c in conds])


def compile_conditions(cond: Any) -> list[dict] | None:
    if cond is None:
        return None
    if isinstance(cond, torch.Tensor):
        return [dict(cross_attn=cond, model_conds=dict(c_crossattn=ConditionCrossAttn(cond)))]
    result = dict(cross_attn=cond["crossattn"], pooled_output=cond["vector"],
                  model_conds=dict(c_crossattn=ConditionCrossAttn(cond["crossattn"]), y=Condition(cond["vector"])))
    if "guidance" in cond:
        result["model_conds"]["guidance"] = Condition(cond["guidance"])
    return [result]


def compile_weighted_conditions(cond: Any, weights: list[list[tuple[int, float]]]) -> list[dict]:
    results = []
    for position in map(list, zip(*weights, strict=False)):  # zip: Forge's (images with fewer ANDs are cut)
        indices = [i for i, _ in position]
        weight = position[-1][1]
        if isinstance(cond, dict):
            feed = {k: v[indices] for k, v in cond.items() if isinstance(v, torch.Tensor)}
        else:
            feed = cond[indices]
        entry = compile_conditions(feed)
        entry[0]["strength"] = weight
        results += entry
    return results
