"""Stable Diffusion XL for the demo, the tests and the benchmark (never the host), built from real classes.

What it mirrors (Stability-AI/generative-models, the `sgm` package A1111 1.10 loads SDXL with; it is not on PyPI):
- the UNet: `sgm/modules/diffusionmodules/openaimodel.py` `UNetModel` as configured by
  `configs/inference/sd_xl_base.yaml` (adm_in_channels 2816, num_classes "sequential", model_channels 320,
  channel_mult [1, 2, 4], attention_resolutions [4, 2], num_res_blocks 2, num_head_channels 64,
  use_linear_in_transformer, transformer_depth [1, 2, 10], context_dim 2048). It is ldm's own `UNetModel` (the
  same blocks, module names and state-dict keys) with two sgm features ldm's constructor lacks added afterwards:
  a transformer depth per level (sgm takes a list; ldm one int) and the "sequential" `label_emb` for the `vector`
  input. One ldm difference is fixed by a subclass: ldm's `SpatialTransformer` indexes its context list per block,
  so a stack of more than one block fails with one context; sgm reuses the single context (`SpatialTransformerXL`).
  Not mirrored: gradient checkpointing (A1111 turns it off for inference), sgm's attention backends (ldm's
  `CrossAttention` runs, the class every A1111 optimisation patches).
- `sgm/modules/diffusionmodules/wrappers.py` `OpenAIWrapper`: `DiffusionWrapperXL` (cond dict -> context=crossattn,
  y=vector; a "concat" entry is catenated to x, A1111's "c_concat" is not read).
- `sgm/modules/encoders/modules.py`: `GeneralConditioner` (`Conditioner`, without the training-time ucg dropout),
  `FrozenCLIPEmbedder` with layer "hidden", layer_idx 11 (`CLIPEmbedder`: transformers' CLIPTextModel, the
  penultimate hidden state, NO final layer norm), `FrozenOpenCLIPEmbedder2` with legacy False, layer
  "penultimate", always_return_pooled (`OpenCLIPEmbedder2`: open_clip's real TextTransformer from
  standalone.openclip; the penultimate block's output without ln_final, and the pooled vector ln_final(last)[EOS]
  @ text_projection), and `ConcatTimestepEmbedderND` with outdim 256 (`SizeEmbedder`).
- `sgm/models/diffusion.py` DiffusionEngine: scale_factor 0.13025, LegacyDDPMDiscretization (the "scaled linear"
  0.00085-0.012 schedule of SD 1.x), eps parameterization; the VAE decoder is the SD 1.x one (same ddconfig).

`tiny_sdxl()` is randomly initialised and small enough for a CPU test; `full_size_sdxl_unet()` has SDXL's shapes
(on the meta device it costs no memory). Random weights exercise the mechanics only: their images are noise.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor, nn

from .models import FirstStage, LatentDiffusionBase, allow_any_latent_size, clip_tokenizer, widen_random_init

SCALE_FACTOR_XL = 0.13025  # sd_xl_base.yaml model.params.scale_factor
PAD_ID_OPENCLIP = 0  # A1111's open_clip wrappers pad after EOS with 0 (CLIP-L pads with EOS)
EOS_ID = 49407


@dataclass
class SDXLConfig:
    unet: dict[str, Any]
    clip_l: dict[str, Any]  # transformers CLIPTextConfig arguments
    clip_g: str  # a standalone.openclip.TEXT_TOWERS preset
    decoder: dict[str, Any]
    clip_l_layer_idx: int = 11  # sd_xl_base.yaml: FrozenCLIPEmbedder layer "hidden", layer_idx 11
    size_embed_dim: int = 256  # sd_xl_base.yaml: ConcatTimestepEmbedderND outdim 256 (per number: 2 per tuple)
    latent_channels: int = 4


def full_size_config() -> SDXLConfig:
    """SDXL base 1.0 shapes (generative-models configs/inference/sd_xl_base.yaml)."""
    return SDXLConfig(
        unet=dict(adm_in_channels=2816, num_classes="sequential", in_channels=4, out_channels=4, model_channels=320,
                  attention_resolutions=[4, 2], num_res_blocks=2, channel_mult=[1, 2, 4], num_head_channels=64,
                  use_linear_in_transformer=True, transformer_depth=[1, 2, 10], context_dim=2048, legacy=False),
        clip_l=dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                    num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu"),
        clip_g="ViT-bigG-14",
        decoder=dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=[1, 2, 4, 4],
                     num_res_blocks=2, attn_resolutions=[], dropout=0.0),
    )


def tiny_config() -> SDXLConfig:
    """SDXL's layout (no attention at ds 1, transformer stacks of depth 1 at ds 2 and 2 at ds 4 and in the middle:
    17 cross-attention layers) with small widths. Context = 32 (CLIP-L) + 80 (tiny bigG); vector = 80 + 3*2*16."""
    size_dim = 16
    return SDXLConfig(
        unet=dict(adm_in_channels=80 + 6 * size_dim, num_classes="sequential", in_channels=4, out_channels=4,
                  model_channels=32, attention_resolutions=[4, 2], num_res_blocks=2, channel_mult=[1, 2, 4],
                  num_head_channels=16, use_linear_in_transformer=True, transformer_depth=[0, 1, 2],
                  context_dim=32 + 80, legacy=False),
        clip_l=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                    num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
                    initializer_factor=4.0),
        clip_g="tiny-bigG",
        decoder=dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2, 2, 2],
                     num_res_blocks=1, attn_resolutions=[], dropout=0.0),
        clip_l_layer_idx=3,  # the penultimate of 4 layers, as 11 is of CLIP-L's 12
        size_embed_dim=size_dim,
    )


# ---------------------------------------------------------------------------------------------------------------
# UNet


def _spatial_transformer_xl() -> type:
    from ldm.modules.attention import SpatialTransformer

    class SpatialTransformerXL(SpatialTransformer):
        """ldm's SpatialTransformer fed one context for every block of its stack, as sgm's does.

        ldm wraps a tensor context in a one-element list and indexes it per block (a stack deeper than one fails);
        sgm reuses element 0. Module names and parameters are ldm's (and sgm's).
        """

        def __init__(self, in_channels: int, n_heads: int, d_head: int, depth: int, context_dim: int,
                     use_linear: bool) -> None:
            super().__init__(in_channels, n_heads, d_head, depth=depth, context_dim=[context_dim] * depth,
                             use_linear=use_linear, use_checkpoint=False)

        def forward(self, x: Tensor, context: Tensor | list[Tensor] | None = None) -> Tensor:
            if not isinstance(context, list):
                context = [context] * len(self.transformer_blocks)
            return super().forward(x, context)

    return SpatialTransformerXL


@lru_cache(maxsize=1)
def spatial_transformer_xl_class() -> type:
    """The SpatialTransformerXL class (made on first use: ldm is imported lazily, as in standalone.models)."""
    return _spatial_transformer_xl()


def _restack(old: nn.Module, depth: int) -> nn.Module:
    """A SpatialTransformerXL with `old`'s widths and `depth` blocks."""
    block = old.transformer_blocks[0]
    heads = block.attn2.heads
    return spatial_transformer_xl_class()(
        old.in_channels, heads, block.attn2.to_q.out_features // heads, depth, block.attn2.to_k.in_features,
        old.use_linear)


def sdxl_unet(params: dict[str, Any]) -> nn.Module:
    """sgm's SDXL UNetModel from ldm's UNetModel (see the module docstring for what is added and why).

    params: sgm's network_config params (transformer_depth a list per level, num_classes "sequential" with
    adm_in_channels). Builds on the current default device (use `with torch.device("meta")` for shapes only).
    """
    from ldm.modules.attention import SpatialTransformer
    from ldm.modules.diffusionmodules.openaimodel import UNetModel
    from ldm.modules.diffusionmodules.util import linear

    p = dict(params)
    depths = p.pop("transformer_depth")
    depths = [depths] * len(p["channel_mult"]) if isinstance(depths, int) else list(depths)
    num_classes = p.pop("num_classes", None)
    adm_in_channels = p.pop("adm_in_channels", None)
    # ldm builds depth-1 stacks (one int for all levels), replaced below; no checkpointing (A1111 turns it off).
    unet = UNetModel(image_size=32, use_spatial_transformer=True, transformer_depth=1, use_checkpoint=False, **p)

    # ds doubles after each input block with a Downsample and halves after each output block with an Upsample
    # (as in sgm's constructor); the level of ds is log2(ds), whose depth sgm's transformer_depth[level] gives.
    def restack_level(block: nn.Module, ds: int) -> None:
        for i, layer in enumerate(block):
            if isinstance(layer, SpatialTransformer):
                block[i] = _restack(layer, depths[ds.bit_length() - 1])

    ds = 1
    for block in unet.input_blocks:
        restack_level(block, ds)
        if any(type(m).__name__ == "Downsample" for m in block):
            ds *= 2
    unet.middle_block[1] = _restack(unet.middle_block[1], depths[-1])  # sgm: transformer_depth_middle = depth[-1]
    for block in unet.output_blocks:
        restack_level(block, ds)
        if any(type(m).__name__ == "Upsample" for m in block):
            ds //= 2

    if num_classes == "sequential":
        # sgm's label_emb for the `vector` input: Sequential(Sequential(linear, SiLU, linear)) (keys label_emb.0.0/.0.2)
        time_embed_dim = unet.model_channels * 4
        unet.num_classes = "sequential"
        unet.label_emb = nn.Sequential(nn.Sequential(
            linear(adm_in_channels, time_embed_dim), nn.SiLU(), linear(time_embed_dim, time_embed_dim)))
    elif num_classes is not None:
        raise ValueError(f"num_classes {num_classes!r} is not an SDXL setting")
    return unet


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(saved)


def full_size_sdxl_unet(device: torch.device | str = "meta", dtype: torch.dtype = torch.float32) -> nn.Module:
    """SDXL base's UNet. On "meta" (the default) only shapes and names exist: no memory, no init cost.

    Built directly in `dtype` (fp16 on CPU needs about 5 GB instead of 10); `dtype` is also the UNet's `dtype`
    attribute, which its forward casts the input to (A1111's sd_models_xl.extend_sdxl sets it the same way). A
    half-precision forward needs CUDA autocast, as in the host (ldm's GroupNorm32 and float timestep embedding do
    not mix dtypes on the CPU); for CPU runs keep float32.
    """
    with torch.device(device), _default_dtype(dtype):
        unet = sdxl_unet(full_size_config().unet)
    unet.dtype = dtype
    return unet


class DiffusionWrapperXL(nn.Module):
    """sgm's OpenAIWrapper: the cond dict's "crossattn" is the context, "vector" the label input y."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.diffusion_model = unet

    def forward(self, x: Tensor, t: Tensor, c: dict[str, Any], **kwargs: Any) -> Tensor:
        if c.get("concat") is not None:  # sgm catenates c["concat"] (empty for SDXL base); "c_concat" is not read
            x = torch.cat((x, c["concat"]), dim=1)
        return self.diffusion_model(x, timesteps=t, context=c.get("crossattn"), y=c.get("vector"), **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# conditioner


class CLIPEmbedder(nn.Module):
    """sgm's FrozenCLIPEmbedder (layer "hidden"): `.transformer`, `.tokenizer`, `.layer`, `.layer_idx` as A1111's
    FrozenCLIPEmbedderForSDXLWithCustomWords reads them. forward takes token ids [B, 77] (sgm's takes text)."""

    def __init__(self, transformer: nn.Module, tokenizer: Any, layer: str = "hidden", layer_idx: int = 11) -> None:
        super().__init__()
        self.transformer = transformer
        self.tokenizer = tokenizer
        self.layer = layer
        self.layer_idx = layer_idx
        self.return_pooled = False
        self.input_key = "txt"

    def forward(self, tokens: Tensor, hidden_index: int | None = None) -> Tensor:
        """[B, 77] -> [B, 77, width]: hidden_states[layer_idx] (or [hidden_index]), no final layer norm."""
        outputs = self.transformer(input_ids=tokens, output_hidden_states=self.layer == "hidden")
        if hidden_index is not None:
            return outputs.hidden_states[hidden_index]
        if self.layer == "last":
            return outputs.last_hidden_state
        return outputs.hidden_states[self.layer_idx]


class OpenCLIPEmbedder2(nn.Module):
    """sgm's FrozenOpenCLIPEmbedder2 with legacy=False, layer "penultimate", always_return_pooled=True.

    `.model` is open_clip's TextTransformer (token_embedding, positional_embedding, transformer.resblocks, ln_final,
    attn_mask, text_projection), read exactly as sgm's encode_with_transformer does. forward takes token ids.
    """

    def __init__(self, model: nn.Module, layer: str = "penultimate") -> None:
        super().__init__()
        self.model = model
        self.layer = layer
        self.layer_idx = {"last": 0, "penultimate": 1}[layer]
        self.legacy = False
        self.return_pooled = True
        self.input_key = "txt"

    def encode_with_transformer(self, text: Tensor) -> dict[str, Tensor]:
        """{"penultimate": [B, 77, w] (no ln_final), "last": [B, 77, w], "pooled": [B, output_dim]}."""
        x = self.model.token_embedding(text) + self.model.positional_embedding
        x = x.permute(1, 0, 2)  # open_clip 2.20 blocks are sequence-first
        outputs = self.text_transformer_forward(x, attn_mask=self.model.attn_mask)
        last = self.model.ln_final(outputs["last"])
        outputs["pooled"] = self.pool(last, text)
        return outputs

    def text_transformer_forward(self, x: Tensor, attn_mask: Tensor | None = None) -> dict[str, Tensor]:
        outputs = {}
        blocks = self.model.transformer.resblocks
        for i, block in enumerate(blocks):
            if i == len(blocks) - 1:
                outputs["penultimate"] = x.permute(1, 0, 2)
            x = block(x, attn_mask=attn_mask)
        outputs["last"] = x.permute(1, 0, 2)
        return outputs

    def pool(self, x: Tensor, text: Tensor) -> Tensor:
        # The EOS token has the highest id, so argmax finds it (sgm's rule).
        return x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ self.model.text_projection

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        out = self.encode_with_transformer(tokens)
        return out[self.layer], out["pooled"]


class SizeEmbedder(nn.Module):
    """sgm's ConcatTimestepEmbedderND: each number of a [B, d] input gets a sinusoidal embedding of `outdim`,
    concatenated to [B, d * outdim] (ldm's timestep_embedding is the same function as sgm's)."""

    def __init__(self, outdim: int, input_key: str) -> None:
        super().__init__()
        self.outdim = outdim
        self.input_key = input_key

    def forward(self, x: Tensor) -> Tensor:
        from ldm.modules.diffusionmodules.util import timestep_embedding

        if x.ndim == 1:
            x = x[:, None]
        b, d = x.shape
        return timestep_embedding(x.reshape(b * d), self.outdim).reshape(b, d * self.outdim)


SIZE_KEYS = ("original_size_as_tuple", "crop_coords_top_left", "target_size_as_tuple")  # sd_xl_base.yaml order


class Conditioner(nn.Module):
    """sgm's GeneralConditioner.forward: each embedder reads batch[embedder.input_key]; 3-D outputs are catenated
    on the channel axis into "crossattn", 2-D ones into "vector", in embedder order; embedders whose input_key is
    in force_zero_embeddings give zeros. Not mirrored: ucg (training-time dropout; A1111 sets it to 0)."""

    OUTPUT_DIM2KEYS = {2: "vector", 3: "crossattn", 4: "concat", 5: "concat"}
    KEY2CATDIM = {"vector": 1, "crossattn": 2, "concat": 1}

    def __init__(self, embedders: Sequence[nn.Module]) -> None:
        super().__init__()
        self.embedders = nn.ModuleList(embedders)

    def forward(self, batch: dict[str, Any], force_zero_embeddings: Sequence[str] | None = None) -> dict[str, Tensor]:
        force_zero_embeddings = force_zero_embeddings or []
        output: dict[str, Tensor] = {}
        for embedder in self.embedders:
            with torch.no_grad():  # sgm: frozen embedders (is_trainable False, as in sd_xl_base.yaml) run without grad
                emb_out = embedder(batch[embedder.input_key])
            for emb in emb_out if isinstance(emb_out, (list, tuple)) else [emb_out]:
                key = self.OUTPUT_DIM2KEYS[emb.dim()]
                if embedder.input_key in force_zero_embeddings:
                    emb = torch.zeros_like(emb)
                output[key] = torch.cat((output[key], emb), self.KEY2CATDIM[key]) if key in output else emb
        return output

    # -- the standalone's view: CLIP-L is the tokenizer and `transformer` (count_calls, T from CLIP-L) --------------
    @property
    def clip_l(self) -> CLIPEmbedder:
        return self.embedders[0]

    @property
    def clip_g(self) -> OpenCLIPEmbedder2:
        return self.embedders[1]

    @property
    def tokenizer(self) -> Any:
        return self.clip_l.tokenizer

    @property
    def transformer(self) -> nn.Module:
        return self.clip_l.transformer

    @torch.no_grad()
    def encode_chunks(
        self,
        chunks: Tensor,
        clip_skip: int = 1,
        *,
        clip_l_skip: bool = False,
        size: tuple[int, int] = (1024, 1024),
        crop: tuple[int, int] = (0, 0),
        zero_text: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """[n, 77] CLIP token chunks of one prompt -> (crossattn [1, 77*n, ctx], vector [1, adm]) as A1111 builds them.

        Per chunk: CLIP-L's hidden_states[layer_idx] next to bigG's penultimate output (2048 at full size); the
        pooled bigG vector comes from the FIRST chunk only (A1111: `zs[0].pooled`). Clip skip: A1111 applies
        `CLIP_stop_at_last_layers` to CLIP-L only with the "sdxl_clip_l_skip" option on (then hidden_states[-clip_skip],
        so clip_skip 1 is the LAST layer's output there); bigG is always penultimate. size = (height, width) gives
        original_size and target_size as A1111 does; crop = (top, left). zero_text: A1111's empty negative prompt
        (force_zero_embeddings=['txt']): both text parts zero, the size embeddings kept.
        """
        tokens_g = openclip_tokens(chunks)
        batch = {"txt": chunks, "original_size_as_tuple": torch.tensor([list(size)], dtype=torch.float32),
                 "crop_coords_top_left": torch.tensor([list(crop)], dtype=torch.float32),
                 "target_size_as_tuple": torch.tensor([list(size)], dtype=torch.float32)}
        l_out = self.clip_l(chunks, hidden_index=-clip_skip if clip_l_skip else None)
        g_out, pooled = self.clip_g(tokens_g)
        crossattn = torch.cat([l_out, g_out], dim=2).reshape(1, -1, l_out.shape[-1] + g_out.shape[-1])
        pooled = pooled[:1]
        if zero_text:
            crossattn, pooled = torch.zeros_like(crossattn), torch.zeros_like(pooled)
        sizes = [e(batch[e.input_key]) for e in self.embedders[2:]]
        return crossattn, torch.cat([pooled, *sizes], dim=1)


def openclip_tokens(chunks: Tensor) -> Tensor:
    """CLIP-padded chunks (EOS to the end) as A1111's open_clip wrappers send them: 0 after the first EOS."""
    out = chunks.clone()
    for row in out:
        eos = (row[1:] == EOS_ID).nonzero()
        if len(eos):
            row[int(eos[0]) + 2:] = PAD_ID_OPENCLIP
    return out


# ---------------------------------------------------------------------------------------------------------------
# model


class StableDiffusionXL(LatentDiffusionBase):
    """The attributes of sgm's DiffusionEngine (after A1111's sd_models_xl patches) that k-diffusion and we use."""

    is_sdxl = True
    scale_factor = SCALE_FACTOR_XL

    def __init__(self, config: SDXLConfig, seed: int = 0) -> None:
        super().__init__()
        from transformers import CLIPTextConfig, CLIPTextModel

        from .openclip import openclip_text_preset

        allow_any_latent_size()
        self.config = config
        self.model = DiffusionWrapperXL(sdxl_unet(config.unet))
        clip_l = CLIPEmbedder(CLIPTextModel(CLIPTextConfig(**config.clip_l)), clip_tokenizer(),
                              layer="hidden", layer_idx=config.clip_l_layer_idx)
        clip_g = OpenCLIPEmbedder2(openclip_text_preset(config.clip_g, seed=seed))
        self.conditioner = Conditioner([clip_l, clip_g, *(SizeEmbedder(config.size_embed_dim, k) for k in SIZE_KEYS)])
        self.first_stage_model = FirstStage(config.decoder, config.latent_channels)
        self.finish()

    @property
    def cond_stage_model(self) -> Conditioner:
        """A1111's sd_hijack sets cond_stage_model to the conditioner when a model has two text encoders."""
        return self.conditioner

    def apply_model(self, x: Tensor, t: Tensor, cond: dict[str, Any]) -> Tensor:
        """sd_models_xl.apply_model: the sgm cond dict ({"crossattn", "vector"}, A1111 adds "c_concat")."""
        if not isinstance(cond, dict) or "crossattn" not in cond:
            raise TypeError("SDXL's apply_model takes a dict with 'crossattn' and 'vector'")
        return self.model(x, t, cond)

    def encode_chunks(self, chunks: Tensor, clip_skip: int = 1, **kwargs: Any) -> tuple[Tensor, Tensor]:
        """See Conditioner.encode_chunks."""
        return self.conditioner.encode_chunks(chunks, clip_skip, **kwargs)


def tiny_sdxl(seed: int = 0) -> StableDiffusionXL:
    """A small randomly initialised SDXL-architecture model (seconds to build on a CPU), attention widened like
    standalone.models.tiny_sd so the maps are informative."""
    torch.manual_seed(seed)
    model = StableDiffusionXL(tiny_config(), seed=seed).eval()
    widen_random_init(model)
    return model

