"""Mirrors backend/nn/unet.py: Forge's own UNet (`IntegratedUNet2DConditionModel`), written from ldm's, with the
same module tree and state-dict keys as ldm/sgm's UNetModel (input_blocks / middle_block / output_blocks of
`TimestepEmbedSequential`, `SpatialTransformer.transformer_blocks[i].attn1/attn2`, `Downsample`, `Upsample`).

What Forge does differently from ldm, kept here:
- `CrossAttention` has `heads`, `dim_head`, `to_q`, `to_k`, `to_v`, `to_out` and NO `scale`; its forward is
  (x, context=None, value=None, mask=None, transformer_options) through backend.attention's SDPA (scale
  dim_head ** -0.5), so attention probabilities never exist as a tensor;
- `transformer_options` flows through every block: the UNet writes "original_shape", "transformer_index",
  "block" = ("input" | "middle" | "output", id) into the dict it is given, SpatialTransformer writes "block_index";
  BasicTransformerBlock honours "patches" (attn1_patch, attn2_patch, attn1_output_patch, attn2_output_patch) and
  "patches_replace" for attn1/attn2 keyed by (block name, id, index) or (block name, id), as Forge does;
- the top-level forward is (x, timesteps, context, y, control, transformer_options, **kwargs); Upsample takes the
  skip connection's size (`output_shape`), so latents of any size work without ldm's concat fix.
Simplified: no ResBlock up/down-sampling variant, no scale-shift norm, no disabled self-attention, no
`block_modifiers` / `block_inner_modifiers` / `group_norm_wrapper`, no block patches; `control` is applied as
Forge's apply_control does (pop from per-stage lists); config from a dict, not diffusers' ConfigMixin;
`transformer_options` defaults to None (Forge's `{}` default is shared between calls).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from backend.attention import attention_function


def timestep_embedding(timesteps: Tensor, dim: int, max_period: int = 10000) -> Tensor:
    """[cos, sin] of timesteps times geometric frequencies (the same function as ldm's)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half).to(timesteps.device)
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


def apply_control(h: Tensor, control: Any, name: str) -> Tensor:
    if control is not None and name in control and len(control[name]) > 0:
        ctrl = control[name].pop()
        if ctrl is not None:
            h += ctrl  # in place, as Forge does: under autograd this breaks a backward through the skip tensors
    return h


class Timestep(nn.Module):
    """The size embedder SDXL's engine uses for the `vector` input."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, t: Tensor) -> Tensor:
        return timestep_embedding(t, self.dim)


class TimestepBlock(nn.Module):
    pass


class TimestepEmbedSequential(nn.Sequential, TimestepBlock):
    def forward(self, x: Tensor, emb: Tensor, context: Any = None, transformer_options: dict | None = None,
                output_shape: Any = None) -> Tensor:
        transformer_options = {} if transformer_options is None else transformer_options
        for layer in self:
            if isinstance(layer, TimestepBlock):
                x = layer(x, emb, transformer_options)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context, transformer_options)
                if "transformer_index" in transformer_options:
                    transformer_options["transformer_index"] += 1
            elif isinstance(layer, Upsample):
                x = layer(x, output_shape=output_shape)
            else:
                x = layer(x)
        return x


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: Tensor) -> Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * torch.nn.functional.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, dim_out: int | None = None, mult: int = 4, glu: bool = True) -> None:
        super().__init__()
        inner_dim = int(dim * mult)
        project_in = GEGLU(dim, inner_dim) if glu else nn.Sequential(nn.Linear(dim, inner_dim), nn.GELU())
        self.net = nn.Sequential(project_in, nn.Dropout(0.0), nn.Linear(inner_dim, dim_out or dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class CrossAttention(nn.Module):
    def __init__(self, query_dim: int, context_dim: int | None = None, heads: int = 8, dim_head: int = 64) -> None:
        super().__init__()
        inner_dim = dim_head * heads
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.dim_head = dim_head
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(0.0))

    def forward(self, x: Tensor, context: Tensor | None = None, value: Tensor | None = None,
                mask: Tensor | None = None, transformer_options: dict | None = None) -> Tensor:
        q = self.to_q(x)
        context = x if context is None else context
        k = self.to_k(context)
        v = self.to_v(value if value is not None else context)
        return self.to_out(attention_function(q, k, v, self.heads, mask))


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, n_heads: int, d_head: int, context_dim: int | None = None) -> None:
        super().__init__()
        self.attn1 = CrossAttention(query_dim=dim, heads=n_heads, dim_head=d_head)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(query_dim=dim, context_dim=context_dim, heads=n_heads, dim_head=d_head)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.n_heads = n_heads
        self.d_head = d_head

    def _attention(self, which: str, attn: CrossAttention, n: Tensor, context: Tensor | None, patches: dict,
                   replace: dict, block_keys: tuple, extra: dict) -> Tensor:
        """One attention with Forge's patch protocol: `<which>_patch` functions rewrite (n, context, value);
        a `patches_replace[which]` entry for this block replaces the attention after the q/k/v projections."""
        value = None
        if f"{which}_patch" in patches:
            context = n if context is None else context
            value = context
            for patch in patches[f"{which}_patch"]:
                n, context, value = patch(n, context, value, extra)
        replace_fn = next((replace[key] for key in block_keys if key in replace), None)
        if replace_fn is None:
            n = attn(n, context=context, value=value, transformer_options=extra)
        else:
            context = n if context is None else context
            value = context if value is None else value
            n = attn.to_out(replace_fn(attn.to_q(n), attn.to_k(context), attn.to_v(value), extra))
        for patch in patches.get(f"{which}_output_patch", []):
            n = patch(n, extra)
        return n

    def forward(self, x: Tensor, context: Tensor | None = None, transformer_options: dict | None = None) -> Tensor:
        options = {} if transformer_options is None else transformer_options
        extra = {k: v for k, v in options.items() if k not in ("patches", "patches_replace")}
        extra["n_heads"], extra["dim_head"] = self.n_heads, self.d_head
        patches = options.get("patches", {})
        replace = options.get("patches_replace", {})
        block = options.get("block")
        block_keys = ((block[0], block[1], options.get("block_index", 0)), block) if block is not None else ()
        # In place, as Forge's BasicTransformerBlock._forward (`x += n` after each attention): x is the very tensor
        # norm1 / norm2 saved for their backward, so a naive autograd pass through this block fails.
        x += self._attention("attn1", self.attn1, self.norm1(x), None, patches, replace.get("attn1", {}),
                             block_keys, extra)
        x += self._attention("attn2", self.attn2, self.norm2(x), context, patches, replace.get("attn2", {}),
                             block_keys, extra)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    def __init__(self, in_channels: int, n_heads: int, d_head: int, depth: int = 1, context_dim: int | None = None,
                 use_linear: bool = False) -> None:
        super().__init__()
        inner_dim = n_heads * d_head
        self.in_channels = in_channels
        self.norm = nn.GroupNorm(num_groups=32, num_channels=in_channels, eps=1e-6, affine=True)
        # As ldm (and Forge): proj_out of the linear variant is Linear(in_channels, inner_dim); both are equal.
        self.proj_in = nn.Linear(in_channels, inner_dim) if use_linear else nn.Conv2d(in_channels, inner_dim, 1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(inner_dim, n_heads, d_head, context_dim=context_dim) for _ in range(depth)])
        self.proj_out = nn.Linear(in_channels, inner_dim) if use_linear else nn.Conv2d(inner_dim, in_channels, 1)
        self.use_linear = use_linear

    def forward(self, x: Tensor, context: Any = None, transformer_options: dict | None = None) -> Tensor:
        transformer_options = {} if transformer_options is None else transformer_options
        if not isinstance(context, list):
            context = [context] * len(self.transformer_blocks)
        b, c, h, w = x.shape
        x_in = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        x = x.permute(0, 2, 3, 1).reshape(b, h * w, -1).contiguous()
        if self.use_linear:
            x = self.proj_in(x)
        for i, block in enumerate(self.transformer_blocks):
            transformer_options["block_index"] = i
            x = block(x, context=context[i], transformer_options=transformer_options)
        if self.use_linear:
            x = self.proj_out(x)
        x = x.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()
        if not self.use_linear:
            x = self.proj_out(x)
        return x + x_in


class Upsample(nn.Module):
    def __init__(self, channels: int, out_channels: int | None = None) -> None:
        super().__init__()
        self.channels = channels
        self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: Tensor, output_shape: Any = None) -> Tensor:
        size = [x.shape[2] * 2, x.shape[3] * 2] if output_shape is None else [output_shape[2], output_shape[3]]
        return self.conv(torch.nn.functional.interpolate(x, size=size, mode="nearest"))


class Downsample(nn.Module):
    def __init__(self, channels: int, out_channels: int | None = None) -> None:
        super().__init__()
        self.channels = channels
        self.op = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class ResBlock(TimestepBlock):
    def __init__(self, channels: int, emb_channels: int, out_channels: int | None = None) -> None:
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.in_layers = nn.Sequential(nn.GroupNorm(32, channels), nn.SiLU(),
                                       nn.Conv2d(channels, self.out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, self.out_channels))
        self.out_layers = nn.Sequential(nn.GroupNorm(32, self.out_channels), nn.SiLU(), nn.Dropout(0.0),
                                        nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1))
        self.skip_connection = (nn.Identity() if self.out_channels == channels
                                else nn.Conv2d(channels, self.out_channels, 1))

    def forward(self, x: Tensor, emb: Tensor, transformer_options: dict | None = None) -> Tensor:
        h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)
        h = self.out_layers(h + emb_out[..., None, None])
        return self.skip_connection(x) + h


class IntegratedUNet2DConditionModel(nn.Module):
    """`transformer_depth` (per input res block), `transformer_depth_output` (per output block, popped from the
    end), `transformer_depth_middle`: the lists Forge's huggingface_guess config gives."""

    def __init__(self, in_channels: int, model_channels: int, out_channels: int, num_res_blocks: int,
                 channel_mult: tuple = (1, 2, 4, 8), num_classes: Any = None, num_heads: int = -1,
                 num_head_channels: int = -1, transformer_depth: list | None = None, context_dim: int | None = None,
                 use_linear_in_transformer: bool = False, adm_in_channels: int | None = None,
                 transformer_depth_middle: int = 1, transformer_depth_output: list | None = None,
                 **_ignored: Any) -> None:
        super().__init__()
        self.config = dict(in_channels=in_channels, model_channels=model_channels, out_channels=out_channels,
                           num_res_blocks=num_res_blocks, channel_mult=list(channel_mult), num_classes=num_classes,
                           context_dim=context_dim, adm_in_channels=adm_in_channels)
        self.in_channels, self.model_channels, self.out_channels = in_channels, model_channels, out_channels
        self.num_res_blocks = [num_res_blocks] * len(channel_mult)
        self.num_classes = num_classes
        depth_in, depth_out = list(transformer_depth), list(transformer_depth_output)
        emb_dim = model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if num_classes == "sequential":
            self.label_emb = nn.Sequential(nn.Sequential(nn.Linear(adm_in_channels, emb_dim), nn.SiLU(),
                                                         nn.Linear(emb_dim, emb_dim)))
        elif num_classes is not None:
            raise ValueError(f"num_classes {num_classes!r} is not supported by the stand-in")

        def transformer(ch: int, depth: int) -> SpatialTransformer:
            heads = ch // num_head_channels if num_head_channels != -1 else num_heads
            return SpatialTransformer(ch, heads, ch // heads, depth=depth, context_dim=context_dim,
                                      use_linear=use_linear_in_transformer)

        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels, model_channels, 3,
                                                                             padding=1))])
        chans, ch = [model_channels], model_channels
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb_dim, mult * model_channels)]
                ch = mult * model_channels
                depth = depth_in.pop(0)
                if depth > 0:
                    layers.append(transformer(ch, depth))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                chans.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                chans.append(ch)
        middle: list[nn.Module] = [ResBlock(ch, emb_dim)]
        if transformer_depth_middle >= 0:
            middle += [transformer(ch, transformer_depth_middle), ResBlock(ch, emb_dim)]
        self.middle_block = TimestepEmbedSequential(*middle)
        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                layers = [ResBlock(ch + chans.pop(), emb_dim, model_channels * mult)]
                ch = model_channels * mult
                depth = depth_out.pop()
                if depth > 0:
                    layers.append(transformer(ch, depth))
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(nn.GroupNorm(32, ch), nn.SiLU(), nn.Conv2d(model_channels, out_channels, 3,
                                                                            padding=1))

    def forward(self, x: Tensor, timesteps: Tensor | None = None, context: Tensor | None = None,
                y: Tensor | None = None, control: Any = None, transformer_options: dict | None = None,
                **kwargs: Any) -> Tensor:
        transformer_options = {} if transformer_options is None else transformer_options
        transformer_options["original_shape"] = list(x.shape)
        transformer_options["transformer_index"] = 0
        assert (y is not None) == (self.num_classes is not None)
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(x.dtype))
        if self.num_classes is not None:
            emb = emb + self.label_emb(y)
        hs, h = [], x
        for i, module in enumerate(self.input_blocks):
            transformer_options["block"] = ("input", i)
            h = apply_control(module(h, emb, context, transformer_options), control, "input")
            hs.append(h)
        transformer_options["block"] = ("middle", 0)
        h = apply_control(self.middle_block(h, emb, context, transformer_options), control, "middle")
        for i, module in enumerate(self.output_blocks):
            transformer_options["block"] = ("output", i)
            h = torch.cat([h, apply_control(hs.pop(), control, "output")], dim=1)
            h = module(h, emb, context, transformer_options, hs[-1].shape if hs else None)
        transformer_options["block"] = ("last", 0)
        return self.out(h).type(x.dtype)
