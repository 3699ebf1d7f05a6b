"""Stable Diffusion 1.x built from the real classes, for the demo, the tests and the benchmark (never the host).

The UNet is ldm's `UNetModel`, the text encoder transformers' `CLIPTextModel` with a real CLIP tokenizer made
from the BPE vocabulary that ships inside `open-clip-torch`, the image decoder ldm's `Decoder`. `tiny_sd()` is
randomly initialised and small enough for a CPU test; `full_size_sd()` has SD 1.x's shapes and can load a user's
checkpoint. Random weights exercise the mechanics only: their images are noise.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import sys
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lib_align.bpe import bytes_to_unicode

SCALE_FACTOR = 0.18215  # SD 1.x latent scaling


@dataclass
class SDConfig:
    unet: dict[str, Any]
    text: dict[str, Any]
    decoder: dict[str, Any]
    latent_channels: int = 4
    extra: dict[str, Any] = field(default_factory=dict)


def tiny_config(context_dim: int = 64) -> SDConfig:
    """SD1's layout (attention at ds 1, 2, 4; two res blocks; mult 1-2-4-4: five cross-attention layers at ds 4)
    with small widths."""
    return SDConfig(
        unet=dict(image_size=32, in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[4, 2, 1],
                  num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_heads=4, use_spatial_transformer=True,
                  transformer_depth=1, context_dim=context_dim, use_checkpoint=False, legacy=False),
        text=dict(vocab_size=49408, hidden_size=context_dim, intermediate_size=2 * context_dim, num_hidden_layers=4,
                  num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu"),
        decoder=dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2, 2, 2],
                     num_res_blocks=1, attn_resolutions=[], dropout=0.0),
    )


def full_size_config() -> SDConfig:
    """Stable Diffusion 1.x (v1-inference.yaml) shapes."""
    return SDConfig(
        unet=dict(image_size=32, in_channels=4, out_channels=4, model_channels=320, attention_resolutions=[4, 2, 1],
                  num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_heads=8, use_spatial_transformer=True,
                  transformer_depth=1, context_dim=768, use_checkpoint=False, legacy=False),
        text=dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                  num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu"),
        decoder=dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=[1, 2, 4, 4],
                     num_res_blocks=2, attn_resolutions=[], dropout=0.0),
    )


# ---------------------------------------------------------------------------------------------------------------
# tokenizer


def _package_dir(name: str) -> Path:
    """A package's folder without importing it (open_clip's __init__ pulls torchvision)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"package {name!r} is not installed")
    return Path(list(spec.submodule_search_locations)[0])


@lru_cache(maxsize=1)
def clip_tokenizer():
    """The real CLIP ViT-L/14 tokenizer (transformers CLIPTokenizer), built offline from open-clip's BPE file."""
    import tempfile

    from transformers import CLIPTokenizer

    bpe = _package_dir("open_clip") / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    base = list(bytes_to_unicode().values())
    vocab = base + [v + "</w>" for v in base] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder = Path(tempfile.mkdtemp(prefix="tsam-tokenizer-"))
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="<|endoftext|>")


# ---------------------------------------------------------------------------------------------------------------
# model


class _CatToSkipSize:
    """Resizes a decoder tensor to its skip connection before concatenation, as A1111 does for latent sizes not
    divisible by 8 (each stride-2 downsample rounds up, so x2 upsampling can overshoot by one)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    def cat(self, tensors: Any, *args: Any, **kwargs: Any) -> Tensor:
        if len(tensors) == 2 and tensors[0].shape[-2:] != tensors[1].shape[-2:]:
            tensors = [F.interpolate(tensors[0], tensors[1].shape[-2:], mode="nearest"), tensors[1]]
        return torch.cat(tensors, *args, **kwargs)


def allow_any_latent_size() -> None:
    """Install the concat fix into ldm's UNet module (standalone use only; A1111 installs its own)."""
    import ldm.modules.diffusionmodules.openaimodel as openaimodel

    if not isinstance(openaimodel.th, _CatToSkipSize):
        openaimodel.th = _CatToSkipSize()


class DiffusionWrapper(nn.Module):
    """ldm's DiffusionWrapper for conditioning_key 'crossattn': holds `diffusion_model`, concatenates contexts."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.diffusion_model = unet

    def forward(self, x: Tensor, t: Tensor, c_concat: list | None = None, c_crossattn: list | None = None) -> Tensor:
        return self.diffusion_model(x, t, context=torch.cat(c_crossattn, 1))


class TextEncoder(nn.Module):
    """The slice of ldm's FrozenCLIPEmbedder the host and we use: `.transformer` and `.tokenizer`."""

    def __init__(self, transformer: nn.Module, tokenizer: Any) -> None:
        super().__init__()
        self.transformer = transformer
        self.tokenizer = tokenizer

    def encode_chunks(self, chunks: Tensor, clip_skip: int = 1) -> Tensor:
        """[n, 77] token chunks -> context [1, 77*n, dim], chunks concatenated as A1111 does for long prompts."""
        out = self.transformer(input_ids=chunks, output_hidden_states=clip_skip > 1)
        if clip_skip > 1:
            hidden = self.transformer.text_model.final_layer_norm(out.hidden_states[-clip_skip])
        else:
            hidden = out.last_hidden_state
        return hidden.reshape(1, -1, hidden.shape[-1])


class FirstStage(nn.Module):
    """The decoding half of ldm's AutoencoderKL (`post_quant_conv` + `decoder`; key names match checkpoints)."""

    def __init__(self, ddconfig: dict[str, Any], latent_channels: int) -> None:
        super().__init__()
        from ldm.modules.diffusionmodules.model import Decoder

        self.decoder = Decoder(**ddconfig)
        self.post_quant_conv = nn.Conv2d(latent_channels, ddconfig["z_channels"], 1)

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(self.post_quant_conv(z))


def read_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """The state dict of a .safetensors or .ckpt file (a .ckpt's "state_dict" entry when it has one)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    return state.get("state_dict", state)


class LatentDiffusionBase(nn.Module):
    """What ldm's LatentDiffusion (and sgm's DiffusionEngine after A1111's patches) expose that A1111, k-diffusion
    and we rely on, for every family: `model.diffusion_model`, `alphas_cumprod`, `parameterization`,
    `apply_model`, `decode_first_stage`, `load_checkpoint`. Subclasses build the parts and call `finish()`."""

    parameterization = "eps"
    scale_factor = SCALE_FACTOR

    def finish(self) -> None:
        # SD 1.x / 2.x / XL all use the "scaled linear" schedule: linear_start 0.00085, linear_end 0.012, betas
        # linear in sqrt (v1/v2-inference.yaml; sgm LegacyDDPMDiscretization).
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
        self.register_buffer("alphas_cumprod", torch.cumprod(1.0 - betas, dim=0).float(), persistent=False)
        self.requires_grad_(True)  # as in A1111: weights keep requires_grad; only the latent's grad is taken

    @property
    def unet(self) -> nn.Module:
        return self.model.diffusion_model

    def apply_model(self, x: Tensor, t: Tensor, cond: Any) -> Tensor:
        if not isinstance(cond, dict):
            cond = {"c_crossattn": [cond]}
        return self.model(x, t, c_crossattn=cond["c_crossattn"])

    @torch.no_grad()
    def decode_first_stage(self, z: Tensor) -> Tensor:
        return self.first_stage_model.decode(z / self.scale_factor)

    def load_checkpoint(self, path: str | Path) -> list[str]:
        """Load a checkpoint (.safetensors or .ckpt) of this family. Returns the missing keys."""
        return self.load_state(read_checkpoint(path))

    def load_state(self, state: dict[str, Tensor]) -> list[str]:
        raise NotImplementedError(f"{type(self).__name__} cannot load checkpoints")


class StableDiffusion(LatentDiffusionBase):
    """SD 1.x (v1-inference.yaml)."""

    is_sd1 = True  # the family flag A1111 and Forge set (lib_align.families: SD1.flag)

    def __init__(self, config: SDConfig) -> None:
        super().__init__()
        from ldm.modules.diffusionmodules.openaimodel import UNetModel
        from transformers import CLIPTextConfig, CLIPTextModel

        allow_any_latent_size()
        self.config = config
        self.model = DiffusionWrapper(UNetModel(**config.unet))
        self.cond_stage_model = TextEncoder(CLIPTextModel(CLIPTextConfig(**config.text)), clip_tokenizer())
        self.first_stage_model = FirstStage(config.decoder, config.latent_channels)
        self.finish()

    def load_state(self, state: dict[str, Tensor]) -> list[str]:
        return load_sd_state_dict(self, state)


def load_sd_state_dict(model: StableDiffusion, state: dict[str, Tensor]) -> list[str]:
    """Map an ldm-format state dict (model.diffusion_model.*, cond_stage_model.transformer.*,
    first_stage_model.*) onto the model; encoder weights of the VAE are not needed and are ignored."""
    wanted = {k: v for k, v in state.items()
              if k.startswith(("model.diffusion_model.", "cond_stage_model.transformer.",
                               "first_stage_model.decoder.", "first_stage_model.post_quant_conv."))}
    if not wanted:
        raise ValueError("this file holds no Stable Diffusion 1.x weights (no model.diffusion_model.* keys)")
    result = model.load_state_dict(wanted, strict=False)
    position_ids = [k for k in result.missing_keys if k.endswith("position_ids")]
    return [k for k in result.missing_keys if k not in position_ids]


def tiny_sd(seed: int = 0, context_dim: int = 64) -> StableDiffusion:
    """A small randomly initialised SD1-architecture model (seconds to build on a CPU)."""
    torch.manual_seed(seed)
    config = tiny_config(context_dim)
    config.text["initializer_factor"] = 4.0
    model = StableDiffusion(config).eval()
    widen_random_init(model)
    return model


@torch.no_grad()
def widen_random_init(model: StableDiffusion, attention_gain: float = 1.5, output_gain: float = 0.3) -> None:
    """Make a randomly initialised model's attention informative enough to test the method's mechanics.

    ldm zero-initialises each block's output projection and the UNet's last conv (an untrained UNet predicts
    eps = 0), and small q/k weights give nearly uniform attention maps whose similarity has almost no gradient.
    Here the zeroed layers get small random weights and the cross-attention q/k projections unit-gain ones
    (logits of order 1). Still random: images stay noise; only the mechanics are meaningful.
    """
    for name, module in model.unet.named_modules():
        if name.endswith(("attn2.to_q", "attn2.to_k")):
            nn.init.normal_(module.weight, 0.0, attention_gain / module.in_features**0.5)
        elif isinstance(module, (nn.Conv2d, nn.Linear)) and not module.weight.any():
            nn.init.normal_(module.weight, 0.0, output_gain / module.weight[0].numel() ** 0.5)


def full_size_sd(seed: int = 0) -> StableDiffusion:
    torch.manual_seed(seed)
    return StableDiffusion(full_size_config()).eval()


# ---------------------------------------------------------------------------------------------------------------
# k-diffusion without its package __init__ (which imports torchvision, clip and clean-fid)


def import_k_diffusion() -> types.SimpleNamespace:
    """`k_diffusion.sampling` and `.external`, importable without torchvision/clip/clean-fid installed.

    A1111 ships the full package; outside it we register an empty package object so that only the two modules we
    need (and `utils`, which they import) load. `utils` imports torchvision's functional transforms at the top
    but uses them only in image helpers we never call; when torchvision is missing, an empty stand-in is present
    in `sys.modules` during that one import only, so nothing else ever sees a fake torchvision.
    """
    if "k_diffusion" not in sys.modules:
        try:
            import k_diffusion  # noqa: F401 — the real package, if its dependencies are all present
        except ImportError:
            for name in [m for m in sys.modules if m == "k_diffusion" or m.startswith("k_diffusion.")]:
                del sys.modules[name]
            pkg = types.ModuleType("k_diffusion")
            pkg.__path__ = [str(_package_dir("k_diffusion"))]
            sys.modules["k_diffusion"] = pkg
    stubs: list[str] = []
    if importlib.util.find_spec("torchvision") is None:
        stubs = ["torchvision", "torchvision.transforms", "torchvision.transforms.functional"]
        for name in stubs:
            sys.modules[name] = types.ModuleType(name)
        sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
        sys.modules["torchvision.transforms"].functional = sys.modules["torchvision.transforms.functional"]
    try:
        import k_diffusion.external as external
        import k_diffusion.sampling as sampling
    finally:
        for name in stubs:
            sys.modules.pop(name, None)
    return types.SimpleNamespace(sampling=sampling, external=external)


@contextmanager
def count_calls(sd: StableDiffusion) -> Iterator[dict[str, int]]:
    """Inside the block, counts forwards of the UNet and of the text encoder ("unet_calls", "text_encoder_calls"):
    how the benchmark and the tests show what a run costs in model calls, independently of timings."""
    counts = {"unet_calls": 0, "text_encoder_calls": 0}

    def bump(key: str) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            counts[key] += 1

        return hook

    handles = [sd.unet.register_forward_pre_hook(bump("unet_calls")),
               sd.cond_stage_model.transformer.register_forward_pre_hook(bump("text_encoder_calls"))]
    try:
        yield counts
    finally:
        for h in handles:
            h.remove()
