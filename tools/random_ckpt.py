"""Shared by tools/make_sdxl_ckpt.py and tools/make_sd2_ckpt.py: the init tweaks of the real-forge SD1 builder
(/work/shared/real-hosts/real-forge/make_sd1_ckpt.py) and a safetensors writer that streams tensor by tensor.

Why the tweaks (a randomly initialised model, default init, is useless for T-SAM checks):
  - ldm/sgm zero-initialise every ResBlock's last conv, every SpatialTransformer's proj_out and the UNet's last conv
    (an untrained UNet then predicts 0 and the latent's gradient through the attention maps is 0): those get
    N(0, ZERO_STD) weights;
  - with PyTorch's default init the cross-attention logits are small and every word's map is nearly the same (S
    flat): the cross-attention q/k projections (attn2.to_q/to_k) get N(0, ATTN_GAIN^2 / in_features);
  - a text encoder's final LayerNorm bias is drawn around 0.1: with bias 0 the empty prompt's output has a mean of
    exactly 0 and the "Original" emphasis (old mean / new mean) turns it into NaN;
  - optional (--clip-attn-gain G): the text encoders' self-attention q/k get N(0, G^2 / in_features); with the
    default init their causal self-attention is uniform and T-SAM's T is 1/(r+1) per row.
Only the standard library is imported at the top: torch is imported by the functions (callers parse --help first).
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

ZERO_STD = 0.05
ATTN_GAIN = 1.5
FINAL_LN_BIAS = (0.1, 0.05)  # mean, std


def add_argparse_common(ap, seed: int = 0) -> None:
    ap.add_argument("--out", required=True,
                    help="the .safetensors file to write (e.g. FORGE/models/Stable-diffusion/x.safetensors)")
    ap.add_argument("--seed", type=int, default=seed,
                    help=f"torch seed (default {seed}; same seed + torch version = same file)")
    ap.add_argument("--clip-attn-gain", type=float, default=0.0,
                    help="if > 0: the text encoders' self-attention q/k projections get N(0, gain^2 / in) (default "
                         "init gives a uniform causal self-attention, so T-SAM's T is 1/(r+1) per row; 1.5 makes it "
                         "differ)")


def stub_packages(root: Path, names: list[str]) -> None:
    """Make `names` importable as bare packages of `root` without running their __init__.py (sgm/__init__.py imports
    the training stack: pytorch_lightning models, the conditioner, ...); their submodules import as usual."""
    for name in names:
        if name in sys.modules:
            continue
        module = types.ModuleType(name)
        module.__path__ = [str(root / name.replace(".", "/"))]
        sys.modules[name] = module


def unet_tweaks(unet) -> tuple[int, int]:
    """Cross-attention q/k gain and noise in the zero-initialised layers; returns (q/k re-initialised, zero layers)."""
    import torch
    n_q = n_z = 0
    with torch.no_grad():
        for name, m in unet.named_modules():
            if name.endswith(("attn2.to_q", "attn2.to_k")):
                torch.nn.init.normal_(m.weight, 0.0, ATTN_GAIN / m.in_features ** 0.5)
                n_q += 1
            elif isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and not m.weight.any():
                torch.nn.init.normal_(m.weight, 0.0, ZERO_STD)
                n_z += 1
    return n_q, n_z


def hf_clip_tweaks(clip, gain: float) -> None:
    """A transformers CLIPTextModel: final LayerNorm bias around 0.1; self-attention q/k gain when gain > 0."""
    import torch
    with torch.no_grad():
        clip.text_model.final_layer_norm.bias.normal_(*FINAL_LN_BIAS)
        if gain > 0:
            for name, m in clip.named_modules():
                if name.endswith(("self_attn.q_proj", "self_attn.k_proj")):
                    torch.nn.init.normal_(m.weight, 0.0, gain / m.in_features ** 0.5)


def open_clip_text(width: int, heads: int, layers: int, embed_dim: int, gain: float):
    """The text half of an open_clip CLIP (what ldm's FrozenOpenCLIPEmbedder and sgm's FrozenOpenCLIPEmbedder2 keep
    after `del model.visual`), as a state dict in open_clip's key names: token_embedding.weight, positional_embedding,
    transformer.resblocks.N.{ln_1, attn.in_proj_weight/bias, attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}, ln_final,
    text_projection, logit_scale. Built with open_clip's own TextTransformer and init."""
    import math

    import open_clip.model as ocm
    import torch
    cfg = ocm.CLIPTextCfg(context_length=77, vocab_size=49408, width=width, heads=heads, layers=layers)
    text = ocm._build_text_tower(embed_dim, cfg)  # the class and init open_clip's CLIP uses for its text half
    with torch.no_grad():
        text.ln_final.bias.normal_(*FINAL_LN_BIAS)
        if gain > 0:
            for block in text.transformer.resblocks:
                w = block.attn.in_proj_weight  # rows [0:w] q, [w:2w] k, [2w:3w] v
                torch.nn.init.normal_(w[: 2 * width], 0.0, gain / width ** 0.5)
    sd = dict(text.state_dict())
    sd["logit_scale"] = torch.tensor(math.log(1 / 0.07))  # CLIP's init; real checkpoints carry the trained value
    return sd


def write_safetensors(tensors: dict, path: str, metadata: dict | None = None) -> int:
    """Write a safetensors file tensor by tensor (safetensors' save_file copies every tensor to bytes first: a second
    7 GB for SDXL). Format: 8-byte little-endian header length, JSON header (dtype, shape, data_offsets), raw data."""
    import torch
    names = {torch.float16: "F16", torch.float32: "F32", torch.bfloat16: "BF16", torch.int64: "I64", torch.int32: "I32"}
    header, offset = {}, 0
    for key, t in tensors.items():
        n = t.numel() * t.element_size()
        header[key] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    if metadata:
        header["__metadata__"] = metadata
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for t in tensors.values():
            f.write(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return 8 + len(blob) + offset


def finish(sd: dict, out: str, t0: float, metadata: dict | None = None) -> None:
    """fp16 for every float tensor (ints kept), no non-finite values, written to `out` (via out.tmp, then renamed)."""
    import time

    import torch
    for key in list(sd):
        v = sd[key].detach()
        sd[key] = (v.to(torch.float16) if v.is_floating_point() else v).contiguous()
        if sd[key].is_floating_point() and not torch.isfinite(sd[key]).all():
            raise SystemExit(f"non-finite values in {key}")
    tmp = out + ".tmp"
    size = write_safetensors(sd, tmp, metadata)
    Path(tmp).replace(out)
    n = sum(v.numel() for v in sd.values())
    print(f"wrote {out}: {len(sd)} tensors, {n / 1e6:.1f} M values, {size / 1e9:.2f} GB, {time.time() - t0:.0f} s")
