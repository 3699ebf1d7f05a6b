"""Make a full-size, randomly initialised SD 2.x 768-v checkpoint in the single-file ldm key layout (fp16, ~2.6 GB).

Forge (backend/loader.py -> huggingface_guess model_list.SD20) recognises a family from the state dict's key names and
shapes, so a small model is not taken for SD2: this one has exactly the layout of v2-1_768-ema-pruned.safetensors, as
Stability-AI/stablediffusion configs/stable-diffusion/v2-inference-v.yaml builds it:
  model.diffusion_model.*          ldm UNetModel (ch 320, mult 1-2-4-4, 2 res blocks, attention at ds 4/2/1, 64-dim
                                   heads, linear proj_in/out, context 1024)
  first_stage_model.*              ldm AutoencoderKL encoder/decoder (ch 128, mult 1-2-4-4, z 4) + quant convs
  cond_stage_model.model.*         OpenCLIP ViT-H-14's text half (ldm FrozenOpenCLIPEmbedder deletes `visual`) in
                                   open_clip's key names: token_embedding, positional_embedding, 24
                                   transformer.resblocks (width 1024, 16 heads), ln_final, text_projection, logit_scale
v-prediction (768-v) or eps (512-base): the key layouts are the same. huggingface_guess (model_list.SD20.model_type)
tells them apart by the spread of one trained weight: v when std(output_blocks.11.1.transformer_blocks.0.norm1.bias)
> 0.09. A random init has that bias at 0, so with --prediction v (default) it is drawn N(0, V_BIAS_STD) here. Forge
(dfdcbab, backend/loader.py split_state_dict) calls that check without the "model.diffusion_model." prefix, so it finds
no such key and loads every single-file SD2 checkpoint as eps; what Forge does read is a `<checkpoint>.yaml` beside it
(loader.py: `parameterization: "v"`), as SD 2.x 768-v downloads come with one. With --prediction v the builder writes
that file too: a copy of the source's configs/stable-diffusion/v2-inference-v.yaml.
Forge then reports `StateDict Keys: {'unet': 686, 'vae': 248, 'text_encoder': 390, 'ignore': 0}` and
`CLIPTextModel Unexpected: [...layers.23...]`: its SD2 text encoder (the config in backend/huggingface/stabilityai/
stable-diffusion-2-1/text_encoder) has 23 layers and drops OpenCLIP-H's last block, as for a real SD 2.x file.

Random init (deterministic for a given seed and torch version) with the tweaks of tools/random_ckpt.py: zero layers
get N(0, 0.05), cross-attention q/k N(0, 1.5^2/in), the final LayerNorm bias N(0.1, 0.05) (Forge's SD2 engine applies
ln_final to its cond: with bias 0 the empty prompt's cond has mean 0, and the "Original" emphasis divides by it),
optionally the text encoder's self-attention q/k N(0, G^2/in) (--clip-attn-gain G).

Needs: torch, open_clip (open-clip-torch), einops — a Forge venv has them — and the stablediffusion source (the folder
holding `ldm/` and `configs/`). ~1 min on 2 cores:
  python tools/make_sd2_ckpt.py --ldm SRC/stablediffusion --clip-attn-gain 1.5 \\
      --out FORGE/models/Stable-diffusion/random-sd2-v.safetensors
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import random_ckpt  # noqa: E402  (standard library only at import)

V_KEY = "output_blocks.11.1.transformer_blocks.0.norm1.bias"
V_BIAS_STD = 0.15
YAML_V = "configs/stable-diffusion/v2-inference-v.yaml"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ldm", required=True, help="folder holding the ldm package (Stability-AI/stablediffusion)")
    ap.add_argument("--prediction", choices=["v", "eps"], default="v",
                    help="v: 768-v (v2-inference-v.yaml, default); eps: 512-base (v2-inference.yaml)")
    random_ckpt.add_argparse_common(ap)
    a = ap.parse_args(argv)
    ldm_root = Path(a.ldm).resolve()
    for need in ("ldm/modules/diffusionmodules/openaimodel.py", YAML_V):
        if not (ldm_root / need).is_file():
            ap.error(f"no {need} under {ldm_root}")
    t0 = time.time()

    import torch
    sys.path.insert(0, str(ldm_root))
    from ldm.modules.diffusionmodules.model import Decoder, Encoder
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    torch.manual_seed(a.seed)
    sd = {}
    unet = UNetModel(image_size=32, in_channels=4, out_channels=4, model_channels=320, attention_resolutions=[4, 2, 1],
                     num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_head_channels=64, use_spatial_transformer=True,
                     use_linear_in_transformer=True, transformer_depth=1, context_dim=1024, use_checkpoint=False,
                     legacy=False)
    n_q, n_z = random_ckpt.unet_tweaks(unet)
    if a.prediction == "v":
        with torch.no_grad():
            unet.get_submodule(V_KEY.rsplit(".", 1)[0]).bias.normal_(0.0, V_BIAS_STD)
    sd.update({f"model.diffusion_model.{k}": v for k, v in unet.state_dict().items()})
    del unet
    print(f"unet: {n_q} cross-attention q/k re-initialised, {n_z} zero-initialised layers given "
          f"N(0, {random_ckpt.ZERO_STD}); prediction {a.prediction} ({time.time() - t0:.0f} s)")

    dd = dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=[1, 2, 4, 4],
              num_res_blocks=2, attn_resolutions=[], dropout=0.0)
    vae = torch.nn.ModuleDict(dict(encoder=Encoder(**dd), decoder=Decoder(**dd),
                                   quant_conv=torch.nn.Conv2d(8, 8, 1), post_quant_conv=torch.nn.Conv2d(4, 4, 1)))
    sd.update({f"first_stage_model.{k}": v for k, v in vae.state_dict().items()})
    del vae

    text = random_ckpt.open_clip_text(width=1024, heads=16, layers=24, embed_dim=1024, gain=a.clip_attn_gain)
    sd.update({f"cond_stage_model.model.{k}": v for k, v in text.items()})
    del text
    random_ckpt.finish(sd, a.out, t0, {"format": "pt", "made_by": f"tools/make_sd2_ckpt.py seed {a.seed} prediction "
                                       f"{a.prediction} clip_attn_gain {a.clip_attn_gain}"})
    yaml = Path(a.out).with_suffix(".yaml")
    if a.prediction == "v":
        shutil.copyfile(ldm_root / YAML_V, yaml)
        print(f"wrote {yaml} (Forge reads the prediction type from it)")
    elif yaml.exists():
        print(f"note: {yaml} exists beside the checkpoint and decides its prediction type in Forge")


if __name__ == "__main__":
    main()
