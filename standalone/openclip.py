"""open_clip's text tower and tokenizer without running `open_clip/__init__.py` (standalone use; never the host).

How open_clip is imported: `open_clip/__init__.py` imports every model family and, through `open_clip.utils` and
`open_clip.transform`, torchvision; `open_clip/tokenizer.py` imports ftfy. Neither is installed here (A1111 ships
both). `import_open_clip()` first tries the real package. When that fails it registers a bare package object named
`open_clip` whose `__path__` is the installed folder (the approach of `standalone.models.import_k_diffusion`), so
that only the submodules we ask for load, from the installed files: `open_clip.transformer` (the real
`TextTransformer`, `Transformer`, `ResidualAttentionBlock`; it pulls `open_clip.utils`) and `open_clip.tokenizer`
(`SimpleTokenizer` and the BPE file that ships in the package). While those two imports run, and only then, an
empty `torchvision.ops.misc` (whose `FrozenBatchNorm2d` `open_clip.utils` imports for a vision-tower helper we never
call) and an `ftfy` whose `fix_text` returns its input are present in `sys.modules`; they are removed right after,
so no other code ever sees them. The bare package stays registered (as the k-diffusion one does): ldm's
`ldm.modules.encoders.modules` runs `import open_clip` at import time and only needs the name to exist.

The ftfy stand-in differs from ftfy only on text that ftfy would repair (mojibake, curly quotes, odd widths);
plain prompts tokenize identically.

`openclip_text_model()` builds open_clip's real `TextTransformer`, whose attributes are exactly the ones ldm's and
sgm's `FrozenOpenCLIPEmbedder*.encode_with_transformer` read from `open_clip.CLIP` (token_embedding,
positional_embedding, transformer.resblocks, ln_final, attn_mask, text_projection) with the same state-dict names.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import types
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from torch import nn

from .models import _package_dir


def _register_bare_package() -> None:
    pkg = types.ModuleType("open_clip")
    folder = str(_package_dir("open_clip"))
    pkg.__path__ = [folder]
    # A real spec keeps importlib.util.find_spec("open_clip") (standalone.models._package_dir) working.
    spec = importlib.machinery.ModuleSpec("open_clip", None, is_package=True)
    spec.submodule_search_locations = [folder]
    pkg.__spec__ = spec
    sys.modules["open_clip"] = pkg


def _temporary_stubs() -> list[str]:
    """Empty modules for what open_clip's two modules import but our use never calls, only when missing."""
    added: list[str] = []
    if importlib.util.find_spec("torchvision") is None:
        for name in ("torchvision", "torchvision.ops", "torchvision.ops.misc"):
            sys.modules[name] = types.ModuleType(name)
            added.append(name)

        class FrozenBatchNorm2d(nn.Module):  # only used by open_clip.utils.freeze_batch_norm_2d (vision towers)
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                raise RuntimeError("torchvision is not installed")

        sys.modules["torchvision.ops.misc"].FrozenBatchNorm2d = FrozenBatchNorm2d
    if importlib.util.find_spec("ftfy") is None:
        ftfy = types.ModuleType("ftfy")
        ftfy.fix_text = lambda text, *args, **kwargs: text
        sys.modules["ftfy"] = ftfy
        added.append("ftfy")
    return added


@lru_cache(maxsize=1)
def import_open_clip() -> types.ModuleType:
    """The `open_clip` package with its `transformer` and `tokenizer` submodules loaded (see the module doc)."""
    if "open_clip" not in sys.modules:
        try:
            import open_clip  # noqa: F401 — the real package, if torchvision and ftfy are present
        except ImportError:
            for name in [m for m in sys.modules if m == "open_clip" or m.startswith("open_clip.")]:
                del sys.modules[name]
            _register_bare_package()
    added = _temporary_stubs()
    try:
        importlib.import_module("open_clip.transformer")
        importlib.import_module("open_clip.tokenizer")
    finally:
        for name in added:
            sys.modules.pop(name, None)
    return sys.modules["open_clip"]


# ---------------------------------------------------------------------------------------------------------------
# text tower


@dataclass(frozen=True)
class TextTowerSpec:
    width: int
    layers: int
    heads: int
    output_dim: int
    attention_gain: float = 1.0  # >1 widens the random q/k init of tiny towers (see widen_text_attention)


# The text_cfg of open_clip's own model_configs/ViT-H-14.json (SD 2.x) and ViT-bigG-14.json (SDXL's second
# encoder); output_dim is each config's embed_dim. The tiny ones are for CPU tests (16-dim heads).
TEXT_TOWERS: dict[str, TextTowerSpec] = {
    "ViT-H-14": TextTowerSpec(width=1024, layers=24, heads=16, output_dim=1024),
    "ViT-bigG-14": TextTowerSpec(width=1280, layers=32, heads=20, output_dim=1280),
    "tiny-H": TextTowerSpec(width=64, layers=4, heads=4, output_dim=64, attention_gain=2.0),
    "tiny-bigG": TextTowerSpec(width=80, layers=5, heads=5, output_dim=80, attention_gain=2.0),
}


def openclip_text_model(
    width: int,
    layers: int,
    heads: int,
    context_length: int = 77,
    vocab_size: int = 49408,
    seed: int = 0,
    output_dim: int | None = None,
    attention_gain: float = 1.0,
    device: torch.device | str | None = None,
) -> nn.Module:
    """open_clip's real `TextTransformer` (GELU, LayerNorm, causal mask: the ViT-H-14 / bigG text settings),
    randomly initialised by open_clip's own `init_parameters` under `seed` without touching the global RNG.

    `attention_gain` > 1 scales the q and k rows of every block's in-projection (see `widen_text_attention`).
    `device="meta"` builds the shapes only (for full-size towers in tests).
    """
    open_clip = import_open_clip()
    with torch.random.fork_rng(devices=[]), torch.device(device or "cpu"):
        torch.manual_seed(seed)
        tower = open_clip.transformer.TextTransformer(
            context_length=context_length, vocab_size=vocab_size, width=width, heads=heads, layers=layers,
            output_dim=output_dim or width, act_layer=nn.GELU)
    if attention_gain != 1.0:
        widen_text_attention(tower, attention_gain)
    return tower.eval()


def openclip_text_preset(name: str, seed: int = 0, device: torch.device | str | None = None) -> nn.Module:
    """A text tower from `TEXT_TOWERS` ("ViT-H-14", "ViT-bigG-14", "tiny-H", "tiny-bigG")."""
    spec = TEXT_TOWERS[name]
    return openclip_text_model(spec.width, spec.layers, spec.heads, seed=seed, output_dim=spec.output_dim,
                               attention_gain=spec.attention_gain, device=device)


@torch.no_grad()
def widen_text_attention(tower: nn.Module, gain: float) -> None:
    """Scale the q and k projections so the attention logits of a random tower grow by gain**2.

    open_clip's init gives q.k/sqrt(d) of order one; with 16-dim heads, 4 layers and 77 causal positions most rows
    are then close to uniform over their prefix, so T would be almost the same for every prompt. Tests of the
    mechanics need rows that differ; a trained encoder has them. Still random weights: only mechanics are tested.
    """
    for block in tower.transformer.resblocks:
        d = block.attn.embed_dim
        block.attn.in_proj_weight[: 2 * d].mul_(gain)
        if block.attn.in_proj_bias is not None:
            block.attn.in_proj_bias[: 2 * d].mul_(gain)


# ---------------------------------------------------------------------------------------------------------------
# tokenizer

BOS_ID = 49406  # "<start_of_text>" in open_clip 2.20 (<|startoftext|> in transformers' CLIPTokenizer)
EOS_ID = 49407  # "<end_of_text>"
PAD_ID = 0  # what A1111's open_clip wrappers pad with after EOS (id_pad = 0)


@lru_cache(maxsize=1)
def openclip_tokenizer() -> Any:
    """open_clip's module-level `SimpleTokenizer` instance (the object A1111's sd_hijack_open_clip uses)."""
    return import_open_clip().tokenizer._tokenizer
