"""T from a transformers CLIPTextModel against the probabilities transformers' own eager attention returns.

    python tools/check_transformers_t.py        # under whichever transformers is importable; prints one JSON line

lib_align.text.encoder_self_attention recomputes each layer's probabilities from its projections instead of asking
transformers for `output_attentions` (which 4.46 serves only through a deprecated fallback from SDPA, and 5.x not
at all). This compares, on a small random CLIPTextModel (real class, 3 layers):
- `eager_max_diff`: the model loaded with attn_implementation="eager" (4.30 has only eager): our probabilities
  against `output_attentions=True` of the same pass — the same inputs, so the difference must be 0;
- `default_max_diff`: the model as transformers builds it by default (SDPA from 4.36 on), the way the host loads
  it: our probabilities (computed on that model's own hidden states) against the eager model's; float noise of
  the SDPA pass only (< 1e-6);
- `warnings`: what transformers logged while we computed T on the default model (must be none).
Exit status 1 when a check fails. The test suite runs it under A1111's transformers (4.30.2) and Forge's (4.46.1).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib_align.text import BOS_ID, EOS_ID, encoder_self_attention  # noqa: E402


def build(implementation: str | None):
    import transformers
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                            max_position_embeddings=77, vocab_size=49408)
    torch.manual_seed(0)
    if implementation is None or not hasattr(CLIPTextModel, "_from_config"):
        return CLIPTextModel(config).eval()
    if tuple(int(v) for v in transformers.__version__.split(".")[:2]) < (4, 36):
        return CLIPTextModel(config).eval()  # eager is the only implementation there
    return CLIPTextModel._from_config(config, attn_implementation=implementation).eval()


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def check() -> dict:
    import transformers

    ids = torch.randint(0, BOS_ID, (2, 77), generator=torch.Generator().manual_seed(1))
    ids[:, 0] = BOS_ID
    ids[0, 8:] = EOS_ID
    ids[1, 5:] = EOS_ID
    eager = build("eager")
    default = build(None)
    default.load_state_dict(eager.state_dict())
    with torch.no_grad():
        reference = torch.stack(eager(input_ids=ids, output_attentions=True).attentions, dim=1)
    ours_eager = encoder_self_attention(eager, ids)
    collect = _Collect()
    logger = logging.getLogger("transformers")
    logger.addHandler(collect)
    try:
        ours_default = encoder_self_attention(default, ids)
    finally:
        logger.removeHandler(collect)
    implementation = getattr(default.config, "_attn_implementation", "eager")
    result = {
        "transformers": transformers.__version__,
        "default_implementation": implementation,
        "eager_max_diff": float((ours_eager - reference).abs().max()),
        "default_max_diff": float((ours_default - reference).abs().max()),
        "warnings": collect.messages,
    }
    result["ok"] = (result["eager_max_diff"] == 0.0 and result["default_max_diff"] < 1e-6
                    and not result["warnings"])
    return result


if __name__ == "__main__":
    outcome = check()
    print(json.dumps(outcome))
    sys.exit(0 if outcome["ok"] else 1)
