"""Mirrors extensions/sd-webui-regional-prompter/scripts/attention.py (hako-mikan/sd-webui-regional-prompter),
"Attention" mode, on what reaches T-SAM: `hook_forwards` sets `module.forward = hook_forward(self, module)` on every
module named "...attn2" of the UNet, and that forward computes the attention once per region — `main_forward`
calls the module's own `to_q(x)`, `to_k(context)` and `to_v(context)` for that region's 77-token slice of the
context (`contexts[:, tll[i][0]*TOKENSCON : tll[i][1]*TOKENSCON, :]`) — then combines the regions' outputs by their
masks. The script hooks before sampling and unhooks in `postprocess` (scripts/rp.py: `hook_forwards(self,
p.sd_model.model.diffusion_model)` while processing, `unloader` afterwards).
Simplified: two column regions (ADDCOL) of equal width, one 77-token chunk each (the prompt `... BREAK ...`); no
base prompt, no LoRA handling, no negative-prompt regions.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from modules import scripts
from torch import nn

TOKENS = 77


def region_forward(module: nn.Module) -> Any:
    def main_forward(x, context):
        h = module.heads
        q, k, v = module.to_q(x), module.to_k(context), module.to_v(context)
        b, n, inner = q.shape
        d = inner // h
        q, k, v = (t.reshape(b, -1, h, d).transpose(1, 2) for t in (q, k, v))
        attn = (q @ k.transpose(-1, -2) * module.scale).softmax(dim=-1)
        return module.to_out((attn @ v).transpose(1, 2).reshape(b, n, inner))

    def forward(x, context=None, mask=None, **kwargs):
        regions = max(1, context.shape[1] // TOKENS)
        outs = [main_forward(x, context[:, i * TOKENS:(i + 1) * TOKENS, :]) for i in range(regions)]
        side = int(math.isqrt(x.shape[1]))
        columns = torch.arange(x.shape[1], device=x.device) % max(side, 1)
        region = (columns * regions) // max(side, 1)  # which column band each query position is in
        out = torch.zeros_like(outs[0])
        for i, o in enumerate(outs):
            out = out + o * (region == i).to(o.dtype)[None, :, None]
        return out

    return forward


class RegionalPrompterScript(scripts.Script):
    def __init__(self, unet: nn.Module) -> None:
        self.unet = unet
        self.active = False
        self.hooked: list[nn.Module] = []

    def title(self):
        return "Regional Prompter"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def process(self, p, *args):
        self.unhook()
        if not self.active:
            return
        for name, module in self.unet.named_modules():
            if name.endswith("attn2"):
                module.forward = region_forward(module)
                self.hooked.append(module)

    def postprocess(self, p, processed, *args):
        self.unhook()

    def unhook(self) -> None:
        for module in self.hooked:
            module.__dict__.pop("forward", None)
        self.hooked.clear()
