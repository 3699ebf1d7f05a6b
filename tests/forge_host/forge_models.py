"""Stand-in only: builds Forge engines from the shared tiny test models. It replaces backend/loader.py
(`forge_loader`, decorated `@torch.inference_mode()`, which constructs every component and the engine itself inside
inference mode: every UNet, text-encoder and VAE weight and buffer is an INFERENCE TENSOR).

`forge_sd15(sd)`: Forge's SD1 engine with the weights of `standalone.models.tiny_sd` (UNet, CLIP text model, VAE
decoder copied by state dict; the same noise schedule), so its images are comparable with the A1111 stand-in's.
`forge_sdxl(sdxl)`: Forge's SDXL engine from `standalone.sdxl.tiny_sdxl`, whose open_clip bigG tower is converted to
a transformers CLIPTextModel with text_projection (Forge loads bigG that way).
`forge_sd2(sd2)`: Forge's SD2 engine from `standalone.sd2.tiny_sd2`: its OpenCLIP-H tower converted as Forge converts
it (huggingface_guess model_list.SD20.process_clip_state_dict) into a CLIPTextModel of one block fewer (Forge's SD2
text_encoder config has 23 of OpenCLIP-H's 24 layers: the last block is dropped on load), the v_prediction scheduler
when the model is v (backend/loader.py takes it from the checkpoint's `.yaml`).
`forge_flux(sd)`: the Flux stand-in (clip_l from `sd`, a tiny transformer and a 16-channel decoder, random).
`mark_quantised(engine, "nf4")`: sets the UNet's `storage_dtype` as backend/loader.py does for quantised
checkpoints (torch.float8_e4m3fn / torch.float8_e5m2 / "nf4" / "fp4" / "gguf"); the weights stay float32.
"""

from __future__ import annotations

import copy
import types
from typing import Any

import torch
from backend import memory_management
from backend.diffusion_engine.flux import Flux, TinyFluxTransformer
from backend.diffusion_engine.sd15 import StableDiffusion
from backend.diffusion_engine.sd20 import StableDiffusion2
from backend.diffusion_engine.sdxl import StableDiffusionXL
from backend.nn.clip import IntegratedCLIP
from backend.nn.unet import IntegratedUNet2DConditionModel
from backend.nn.vae import IntegratedAutoencoderKL
from torch import nn

from standalone.models import clip_tokenizer, tiny_sd

# diffusers' scheduler config for SD1 / SDXL (scheduler/scheduler_config.json in Forge's huggingface folders).
SCHEDULER = types.SimpleNamespace(config=types.SimpleNamespace(
    prediction_type="epsilon", beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
    num_train_timesteps=1000))


class EstimatedConfig:
    """huggingface_guess's model config on what the engines read."""

    def __init__(self, huggingface_repo: str, unet_config: dict[str, Any], inpaint: bool = False) -> None:
        self.huggingface_repo = huggingface_repo
        self.unet_config = unet_config
        self.ztsnr = False
        self._inpaint = inpaint

    def inpaint_model(self) -> bool:
        return self._inpaint


def unet_config(ldm: dict[str, Any]) -> dict[str, Any]:
    """ldm/sgm UNetModel parameters -> Forge's per-block transformer depths (as huggingface_guess derives them)."""
    levels = len(ldm["channel_mult"])
    depth = ldm.get("transformer_depth", 1)
    depth = list(depth) if isinstance(depth, (list, tuple)) else [depth] * levels
    per_level = [depth[i] if 2 ** i in ldm["attention_resolutions"] else 0 for i in range(levels)]
    blocks = ldm["num_res_blocks"]
    return dict(in_channels=ldm["in_channels"], out_channels=ldm["out_channels"],
                model_channels=ldm["model_channels"], num_res_blocks=blocks, channel_mult=list(ldm["channel_mult"]),
                num_heads=ldm.get("num_heads", -1), num_head_channels=ldm.get("num_head_channels", -1),
                context_dim=ldm["context_dim"], use_linear_in_transformer=ldm.get("use_linear_in_transformer", False),
                num_classes=ldm.get("num_classes"), adm_in_channels=ldm.get("adm_in_channels"),
                transformer_depth=[d for d in per_level for _ in range(blocks)],
                transformer_depth_output=[d for d in per_level for _ in range(blocks + 1)],
                transformer_depth_middle=depth[-1] if isinstance(ldm.get("transformer_depth"), list) else depth[0])


def _unet(ldm_params: dict[str, Any], state: dict[str, torch.Tensor]) -> IntegratedUNet2DConditionModel:
    config = unet_config(ldm_params)
    model = IntegratedUNet2DConditionModel(**config)
    model.load_state_dict(state)
    # backend/loader.py: attributes set on the UNet after loading.
    model.storage_dtype = memory_management.unet_dtype()
    model.computation_dtype = memory_management.get_computation_dtype()
    model.load_device = memory_management.get_torch_device()
    model.initial_device = memory_management.unet_inital_load_device()
    model.offload_device = memory_management.unet_offload_device()
    return model.eval()


def _clip(config_kwargs: dict[str, Any], state: dict[str, torch.Tensor]) -> IntegratedCLIP:
    from transformers import CLIPTextConfig, CLIPTextModel

    clip = IntegratedCLIP(CLIPTextModel, CLIPTextConfig(**config_kwargs), add_text_projection=True)
    if "transformer.text_projection.weight" not in state:
        nn.init.zeros_(clip.transformer.text_projection.weight)  # Forge leaves CLIP-L's unused projection unloaded
    missing, unexpected = clip.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith(("position_ids", "text_projection.weight", "logit_scale"))
                                  for k in missing), (missing, unexpected)
    return clip.eval()


def _vae(ddconfig: dict[str, Any], first_stage: nn.Module, scaling_factor: float) -> IntegratedAutoencoderKL:
    vae = IntegratedAutoencoderKL(ddconfig, latent_channels=4, scaling_factor=scaling_factor)
    vae.load_state_dict(first_stage.state_dict())
    return vae.eval()


def _prefixed(module: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": v for k, v in module.state_dict().items()}


def _finish(engine: Any, name: str) -> Any:
    """What modules/sd_models.py sets on a loaded engine."""
    engine.sd_checkpoint_info = types.SimpleNamespace(name_for_extra=name, title=name, short_title=name)
    engine.sd_model_hash = None
    engine.filename = f"{name}.safetensors"
    engine.extra_generation_params, engine.comments = {}, []
    return engine


@torch.inference_mode()
def forge_sd15(sd: Any = None, name: str = "tiny") -> StableDiffusion:
    """`sd`: a standalone.models.StableDiffusion (default: tiny_sd(seed=0), the tests' shared tiny model)."""
    sd = tiny_sd(seed=0) if sd is None else sd
    components = {
        "unet": _unet(sd.config.unet, sd.unet.state_dict()),
        "text_encoder": _clip(sd.config.text, _prefixed(sd.cond_stage_model.transformer, "transformer.")),
        "tokenizer": clip_tokenizer(),
        "vae": _vae(sd.config.decoder, sd.first_stage_model, sd.scale_factor),
        "scheduler": SCHEDULER,
    }
    return _finish(StableDiffusion(EstimatedConfig("runwayml/stable-diffusion-v1-5", components["unet"].config),
                                   components), name)


def openclip_to_transformers(tower: nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """open_clip TextTransformer -> (CLIPTextConfig kwargs, IntegratedCLIP state dict), the conversion Forge
    applies to bigG checkpoints (q/k/v split from in_proj, text_projection transposed into a Linear)."""
    src = tower.state_dict()
    width = src["token_embedding.weight"].shape[1]
    blocks = tower.transformer.resblocks
    out = {"transformer.text_model.embeddings.token_embedding.weight": src["token_embedding.weight"],
           "transformer.text_model.embeddings.position_embedding.weight": src["positional_embedding"],
           "transformer.text_model.final_layer_norm.weight": src["ln_final.weight"],
           "transformer.text_model.final_layer_norm.bias": src["ln_final.bias"],
           "transformer.text_projection.weight": src["text_projection"].t().contiguous()}
    names = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
             "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
    for i in range(len(blocks)):
        a, b = f"transformer.resblocks.{i}.", f"transformer.text_model.encoder.layers.{i}."
        for old, new in names.items():
            for kind in ("weight", "bias"):
                out[f"{b}{new}.{kind}"] = src[f"{a}{old}.{kind}"]
        for kind in ("weight", "bias"):
            for part, chunk in zip(("q", "k", "v"), src[f"{a}attn.in_proj_{kind}"].chunk(3), strict=True):
                out[f"{b}self_attn.{part}_proj.{kind}"] = chunk
    config = dict(vocab_size=src["token_embedding.weight"].shape[0], hidden_size=width,
                  intermediate_size=blocks[0].mlp.c_fc.out_features, num_hidden_layers=len(blocks),
                  num_attention_heads=blocks[0].attn.num_heads, max_position_embeddings=src["positional_embedding"]
                  .shape[0], hidden_act="gelu", projection_dim=src["text_projection"].shape[1])
    return config, out


def bigg_tokenizer() -> Any:
    """SDXL's tokenizer_2: CLIP's BPE with "!" (id 0) as the pad token."""
    tokenizer = copy.deepcopy(clip_tokenizer())
    tokenizer.pad_token = "!"
    return tokenizer


@torch.inference_mode()
def forge_sdxl(sdxl: Any = None, name: str = "tiny-sdxl") -> StableDiffusionXL:
    """`sdxl`: a standalone.sdxl.StableDiffusionXL (default: tiny_sdxl(seed=0))."""
    if sdxl is None:
        from standalone.sdxl import tiny_sdxl

        sdxl = tiny_sdxl(seed=0)
    config_g, state_g = openclip_to_transformers(sdxl.conditioner.clip_g.model)
    components = {
        "unet": _unet(sdxl.config.unet, sdxl.unet.state_dict()),
        "text_encoder": _clip(sdxl.config.clip_l, _prefixed(sdxl.conditioner.clip_l.transformer, "transformer.")),
        "text_encoder_2": _clip(config_g, state_g),
        "tokenizer": clip_tokenizer(),
        "tokenizer_2": bigg_tokenizer(),
        "vae": _vae(sdxl.config.decoder, sdxl.first_stage_model, sdxl.scale_factor),
        "scheduler": SCHEDULER,
    }
    return _finish(StableDiffusionXL(EstimatedConfig("stabilityai/stable-diffusion-xl-base-1.0",
                                                     components["unet"].config), components), name)


def drop_last_block(config: dict[str, Any], state: dict[str, torch.Tensor]) -> tuple[dict[str, Any], dict]:
    """backend/loader.py builds SD2's text encoder from backend/huggingface/stabilityai/stable-diffusion-2-1/
    text_encoder/config.json (num_hidden_layers 23; diffusers' SD2 text encoder ends at ldm's penultimate block) and
    loads the checkpoint's 24 blocks into it: the last one is reported Unexpected and left out."""
    last = config["num_hidden_layers"] - 1
    dropped = f"transformer.text_model.encoder.layers.{last}."
    return {**config, "num_hidden_layers": last}, {k: v for k, v in state.items() if not k.startswith(dropped)}


@torch.inference_mode()
def forge_sd2(sd2: Any = None, name: str = "tiny-sd2") -> StableDiffusion2:
    """`sd2`: a standalone.sd2.StableDiffusion2 (default: tiny_sd2(seed=0, v=True), a 768-v model)."""
    if sd2 is None:
        from standalone.sd2 import tiny_sd2

        sd2 = tiny_sd2(seed=0, v=True)
    config_h, state_h = drop_last_block(*openclip_to_transformers(sd2.cond_stage_model.model))
    state_h.pop("transformer.text_projection.weight")  # SD2's engine has no text_projection (as Forge: unloaded)
    v = getattr(sd2, "parameterization", "eps") == "v"
    scheduler = types.SimpleNamespace(config=types.SimpleNamespace(
        **{**vars(SCHEDULER.config), "prediction_type": "v_prediction" if v else "epsilon"}))
    components = {
        "unet": _unet(sd2.config.unet, sd2.unet.state_dict()),
        "text_encoder": _clip(config_h, state_h),
        "tokenizer": bigg_tokenizer(),  # SD2's tokenizer pads with "!" (id 0) as SDXL's tokenizer_2 does
        "vae": _vae(sd2.config.decoder, sd2.first_stage_model, sd2.scale_factor),
        "scheduler": scheduler,
    }
    return _finish(StableDiffusion2(EstimatedConfig("stabilityai/stable-diffusion-2-1", components["unet"].config),
                                    components), name)


@torch.inference_mode()
def forge_flux(sd: Any = None, name: str = "tiny-flux", seed: int = 0) -> Flux:
    """clip_l from `sd` (default: tiny_sd(seed=0)); the transformer and the 16-channel decoder random (`seed`)."""
    sd = tiny_sd(seed=0) if sd is None else sd
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = TinyFluxTransformer(16, sd.config.text["hidden_size"], sd.config.text["hidden_size"]).eval()
        vae = IntegratedAutoencoderKL(sd.config.decoder, latent_channels=16, scaling_factor=0.3611,
                                      shift_factor=0.1159).eval()
    transformer.storage_dtype = memory_management.unet_dtype()
    transformer.computation_dtype = memory_management.get_computation_dtype()
    transformer.load_device = transformer.initial_device = transformer.offload_device = memory_management.cpu
    components = {
        "transformer": transformer,
        "text_encoder": _clip(sd.config.text, _prefixed(sd.cond_stage_model.transformer, "transformer.")),
        "tokenizer": clip_tokenizer(),
        "vae": vae,
    }
    return _finish(Flux(EstimatedConfig("black-forest-labs/FLUX.1-schnell", {}), components), name)


def mark_quantised(engine: Any, storage_dtype: Any = "nf4") -> Any:
    """The UNet as backend/loader.py leaves a quantised checkpoint: `storage_dtype` on the model (and the KModel)."""
    kmodel = engine.forge_objects.unet.model
    kmodel.diffusion_model.storage_dtype = storage_dtype
    kmodel.storage_dtype = storage_dtype
    return engine
