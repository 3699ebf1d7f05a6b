"""Mirrors backend/attention.py's `attention_pytorch`, the attention function Forge picks with PyTorch attention
(the default without xformers): q, k, v of shape [B, tokens, heads * dim_head] through
`scaled_dot_product_attention` with its default scale dim_head ** -0.5. The probabilities are never materialised.
Simplified: no xformers, split or sub-quadratic variants; no upcast option (everything is float32 here).
"""

from __future__ import annotations

import torch
from torch import Tensor


def attention_pytorch(q: Tensor, k: Tensor, v: Tensor, heads: int, mask: Tensor | None = None,
                      attn_precision: torch.dtype | None = None, skip_reshape: bool = False) -> Tensor:
    if skip_reshape:
        b, _, _, dim_head = q.shape
    else:
        b, _, dim_head = q.shape
        dim_head //= heads
        q, k, v = (t.view(b, -1, heads, dim_head).transpose(1, 2) for t in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False)
    return out.transpose(1, 2).reshape(b, -1, heads * dim_head)


attention_function = attention_pytorch
