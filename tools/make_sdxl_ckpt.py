"""Make a full-size, randomly initialised SDXL base checkpoint in the single-file key layout (fp16 safetensors, ~7 GB).

Forge (backend/loader.py -> huggingface_guess model_list.SDXL) recognises a family from the state dict's key names and
shapes, so a small model is not taken for SDXL: this one has exactly SDXL base 1.0's layout, as
Stability-AI/generative-models configs/inference/sd_xl_base.yaml builds it:
  model.diffusion_model.*                    sgm UNetModel (ch 320, mult 1-2-4, 2 res blocks, attention at ds 2/4 with
                                             transformer depth 2/10, 64-dim heads, linear proj, context 2048,
                                             adm_in_channels 2816: `label_emb`)
  first_stage_model.*                        sgm AutoencoderKL encoder/decoder (ch 128, mult 1-2-4-4, z 4) + quant convs
  conditioner.embedders.0.transformer.text_model.*
                                             CLIP ViT-L text encoder (transformers CLIPTextModel, the config Forge
                                             ships in backend/huggingface/stabilityai/stable-diffusion-xl-base-1.0/
                                             text_encoder) + embeddings.position_ids, as in sd_xl_base_1.0.safetensors
  conditioner.embedders.1.model.*            OpenCLIP ViT-bigG-14's text half in open_clip's key names (width 1280,
                                             20 heads, 32 layers, text_projection 1280x1280, logit_scale)
Forge then reports `StateDict Keys: {'unet': 1680, 'vae': 248, 'text_encoder': 197, 'text_encoder_2': 518, ...}`.

Random init (deterministic for a given seed and torch version) with the tweaks of tools/random_ckpt.py: zero layers
get N(0, 0.05), cross-attention q/k N(0, 1.5^2/in), final LayerNorm biases N(0.1, 0.05), optionally the text
encoders' self-attention q/k N(0, G^2/in) (--clip-attn-gain G; 1.5 gives a T that differs per word).

Needs: torch, transformers, open_clip (open-clip-torch), einops — a Forge venv has them — and the generative-models
source (the folder holding `sgm/`; its sgm/__init__.py is not run). Peak memory ~11 GB, ~2-4 min on 2 cores:
  python tools/make_sdxl_ckpt.py --sgm SRC/generative-models --forge FORGE --clip-attn-gain 1.5 \\
      --out FORGE/models/Stable-diffusion/random-sdxl.safetensors
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import random_ckpt  # noqa: E402  (standard library only at import)

TEXT_ENCODER_CFG = "backend/huggingface/stabilityai/stable-diffusion-xl-base-1.0/text_encoder"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sgm", required=True, help="folder holding the sgm package (Stability-AI/generative-models)")
    ap.add_argument("--forge", required=True, help="Forge folder (for the CLIP-L text encoder config)")
    random_ckpt.add_argparse_common(ap)
    a = ap.parse_args(argv)
    sgm_root = Path(a.sgm).resolve()
    cfg_dir = Path(a.forge) / TEXT_ENCODER_CFG
    for need in (sgm_root / "sgm/modules/diffusionmodules/openaimodel.py", cfg_dir / "config.json"):
        if not need.is_file():
            ap.error(f"not found: {need}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    t0 = time.time()

    import torch
    sys.path.insert(0, str(sgm_root))
    random_ckpt.stub_packages(sgm_root, ["sgm", "sgm.modules", "sgm.modules.diffusionmodules"])
    from sgm.modules.diffusionmodules.model import Decoder, Encoder
    from sgm.modules.diffusionmodules.openaimodel import UNetModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(a.seed)
    sd = {}
    # configs/inference/sd_xl_base.yaml network_config (checkpointing off, plain softmax attention: same parameters)
    unet = UNetModel(adm_in_channels=2816, num_classes="sequential", use_checkpoint=False, in_channels=4,
                     out_channels=4, model_channels=320, attention_resolutions=[4, 2], num_res_blocks=2,
                     channel_mult=[1, 2, 4], num_head_channels=64, use_linear_in_transformer=True,
                     transformer_depth=[1, 2, 10], context_dim=2048, spatial_transformer_attn_type="softmax")
    n_q, n_z = random_ckpt.unet_tweaks(unet)
    unet.half()  # in place, tensor by tensor: the fp32 UNet (10 GB) is not held twice
    sd.update({f"model.diffusion_model.{k}": v for k, v in unet.state_dict().items()})
    del unet
    print(f"unet: {n_q} cross-attention q/k re-initialised, {n_z} zero-initialised layers given "
          f"N(0, {random_ckpt.ZERO_STD}) ({time.time() - t0:.0f} s)")

    # first_stage_config ddconfig
    dd = dict(attn_type="vanilla", double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128,
              ch_mult=[1, 2, 4, 4], num_res_blocks=2, attn_resolutions=[], dropout=0.0)
    vae = torch.nn.ModuleDict(dict(encoder=Encoder(**dd), decoder=Decoder(**dd),
                                   quant_conv=torch.nn.Conv2d(8, 8, 1), post_quant_conv=torch.nn.Conv2d(4, 4, 1)))
    sd.update({f"first_stage_model.{k}": v.half() for k, v in vae.state_dict().items()})
    del vae

    clip = CLIPTextModel(CLIPTextConfig.from_pretrained(str(cfg_dir)))
    random_ckpt.hf_clip_tweaks(clip, a.clip_attn_gain)
    sd.update({f"conditioner.embedders.0.transformer.{k}": v.half() for k, v in clip.state_dict().items()})
    position_ids = "conditioner.embedders.0.transformer.text_model.embeddings.position_ids"
    sd[position_ids] = torch.arange(77, dtype=torch.int64)[None]  # transformers no longer saves it; SDXL files have it
    del clip

    bigg = random_ckpt.open_clip_text(width=1280, heads=20, layers=32, embed_dim=1280, gain=a.clip_attn_gain)
    sd.update({f"conditioner.embedders.1.model.{k}": v.half() for k, v in bigg.items()})
    del bigg
    random_ckpt.finish(sd, a.out, t0, {"format": "pt", "made_by": f"tools/make_sdxl_ckpt.py seed {a.seed} "
                                       f"clip_attn_gain {a.clip_attn_gain}"})


if __name__ == "__main__":
    main()
