"""A standalone text-to-image run with T-SAM: real k-diffusion samplers, CFG, and the same session the extension
uses, for SD1, SD2 and SDXL models. It serves the demo (`python -m standalone`), the tests and the benchmark; A1111
never imports it.

One sampling path for every family: what differs (which encoder gives T, the layout level, the form of the cond)
is the family's spec in `lib_align.families`, the one the web UI uses; `StandaloneFamily` only finds the model's
parts, and T is computed by the same functions the extension uses on A1111 (`lib_align.encoders`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from lib_align.config import AlignConfig
from lib_align.encoders import encoder_targets, is_encoder, is_openclip
from lib_align.families import SPECS, FamilySpec, spec_of
from lib_align.session import AlignSession
from lib_align.text import ChunkTarget, tokenize_chunks

from .models import import_k_diffusion
from .samplers import SAMPLERS

Cond = Tensor | dict[str, Tensor]  # SD1/SD2: the context [1, 77n, dim]; SDXL: {"crossattn", "vector"}



@dataclass
class Generation:
    image: Image.Image
    latent: Tensor
    targets: list[ChunkTarget]
    session: AlignSession | None
    losses: list[dict[str, Any]] = field(default_factory=list)


class StandaloneFamily:
    """A demo model bound to its family's spec (lib_align.families): the same decisions as in the web UI — which
    encoder gives T, the layout level, the cond's form — read from the one spec; the demo models hold their parts
    under the hosts' attribute names (`cond_stage_model`, or `conditioner.embedders` for SDXL; ldm/sgm's encoder
    classes), so T is found as A1111 finds it, with A1111's default options: "Clip skip" applies to a CLIP encoder
    without a configured layer (SD1), an encoder's configured layer is used otherwise (SD2, SDXL's CLIP-L)."""

    def __init__(self, sd: Any, spec: FamilySpec | None = None) -> None:
        spec = spec or spec_of(sd)
        if spec is None:
            raise ValueError(f"{type(sd).__name__} carries none of the family flags "
                             f"({', '.join(s.flag for s in SPECS)})")
        self.sd, self.spec = sd, spec
        self.name, self.layout_level = spec.name, spec.layout_level
        embedders = getattr(getattr(sd, "conditioner", None), "embedders", None)
        found = [e for e in embedders if is_encoder(e)] if embedders is not None else [sd.cond_stage_model]
        self.encoder = found[spec.t_encoder]  # the T encoder

    def tokenize(self, prompt: str) -> tuple[Tensor, list[list[str]]]:
        """Token chunks [n, 77] of one prompt and each chunk's BPE pieces (BREAK and 75-token chunks as A1111)."""
        if is_openclip(self.encoder):
            from .sd2 import openclip_tokenizer  # loads open_clip's modules: only when needed
            from .sd2 import tokenize_chunks as openclip_chunks

            return openclip_chunks(getattr(self.encoder, "tokenizer", None) or openclip_tokenizer(), prompt)
        return tokenize_chunks(self.encoder.tokenizer, prompt)

    def targets(self, chunks: Tensor, words: Sequence[Sequence[str]], power: float,
                clip_skip: int = 1) -> list[ChunkTarget]:
        """T per chunk from the encoder the spec names, at the layers that feed the cond."""
        configured = is_openclip(self.encoder) or getattr(self.encoder, "layer_idx", None) is not None
        return encoder_targets(self.encoder, chunks, power, None if configured else clip_skip, tokens=list(words))

    def encode(self, chunks: Tensor, clip_skip: int = 1, *, size: tuple[int, int] = (512, 512),
               empty: bool = False) -> Cond:
        """The cond of one prompt's chunks (`size` = (height, width) and `empty` matter to pooled families: SDXL's
        size embeddings, and an empty negative prompt as all-zero text, as A1111 encodes it)."""
        with torch.no_grad():
            if self.spec.pooled:
                crossattn, vector = self.sd.encode_chunks(chunks, size=size, zero_text=empty)
                return {"crossattn": crossattn, "vector": vector}
            return self.sd.cond_stage_model.encode_chunks(chunks, clip_skip)


def standalone_family(sd: Any) -> StandaloneFamily:
    """The family of a standalone model (StableDiffusion, StableDiffusion2 or StableDiffusionXL)."""
    return StandaloneFamily(sd)


def prompt_targets(sd: Any, prompt: str, power: float, clip_skip: int = 1) -> tuple[Tensor, list[ChunkTarget]]:
    """Token chunks [n, 77] and T per chunk of one prompt."""
    family = standalone_family(sd)
    chunks, words = family.tokenize(prompt)
    return chunks, family.targets(chunks, words, power, clip_skip)


def encode(sd: Any, chunks: Tensor, clip_skip: int = 1) -> Cond:
    return standalone_family(sd).encode(chunks, clip_skip)


def repeat_rows(cond: Cond, n: int) -> Cond:
    """A one-row cond as n rows (views, no copy), tensor or SDXL dict."""
    if isinstance(cond, dict):
        return {k: v.expand(n, *v.shape[1:]) for k, v in cond.items()}
    return cond.expand(n, *cond.shape[1:])


def catenate_conds(conds: Sequence[Cond]) -> Cond:
    """Rows of several conds, tensors or SDXL dicts (A1111's sd_samplers_cfg_denoiser.catenate_conds)."""
    if not isinstance(conds[0], dict):
        return torch.cat(list(conds))
    return {key: torch.cat([c[key] for c in conds]) for key in conds[0]}


class GuidedDenoiser(nn.Module):
    """CFG around a k-diffusion denoiser; with a session, T-SAM updates the sampler's own x in place first.

    The update is applied once per sampler step: on the first model call whose sigma is that step's sigma
    (second-order samplers call the model again at intermediate sigmas, which are left alone).
    """

    def __init__(self, denoiser: nn.Module, cond: Cond, uncond: Cond, scale: float, sigmas: Tensor,
                 session: AlignSession | None = None, measure_after: bool = False,
                 on_report: Callable[[Any], None] | None = None) -> None:
        super().__init__()
        self.denoiser, self.cond, self.uncond, self.scale = denoiser, cond, uncond, scale
        self.sigmas = sigmas
        self.session = session
        self.measure_after = measure_after
        self.on_report = on_report
        self.done: set[int] = set()

    def step_of(self, sigma: Tensor) -> int | None:
        hits = (self.sigmas[:-1] - sigma.flatten()[0]).abs() <= 1e-6 * self.sigmas[0]
        idx = hits.nonzero().flatten()
        return int(idx[0]) if len(idx) else None

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        step = self.step_of(sigma)
        if self.session is not None and step is not None and step not in self.done:
            self.done.add(step)
            x_new, report = self.session.update_sigma_space(
                x, sigma, self.cond, step, self.denoiser.sigma_to_t, measure_after=self.measure_after)
            if report is not None:
                x.copy_(x_new)  # the sampler's own tensor: the update persists into its next step
                if self.on_report:
                    self.on_report(report)
        x_in = torch.cat([x, x])
        sigma_in = torch.cat([sigma, sigma])
        cond_in = catenate_conds([repeat_rows(self.cond, x.shape[0]), repeat_rows(self.uncond, x.shape[0])])
        out = self.denoiser(x_in, sigma_in, cond=cond_in)
        c, u = out.chunk(2)
        return u + (c - u) * self.scale


def to_image(sd: Any, latent: Tensor) -> Image.Image:
    pixels = sd.decode_first_stage(latent.float())[0]
    array = ((pixels.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(array))


def generate(
    sd: Any,
    prompt: str,
    config: AlignConfig | None = None,
    *,
    negative: str = "",
    steps: int = 20,
    width: int = 256,
    height: int = 256,
    seed: int = 0,
    cfg_scale: float = 7.5,
    sampler: str = "euler",
    clip_skip: int = 1,
    measure_after: bool = True,
    stop_early: bool = True,
    decode: bool = True,
    quantize: bool = False,
    device: torch.device | None = None,
    fp16: bool = False,
) -> Generation:
    """Sample one image with any standalone model (SD1, SD2, SDXL); `config=None` runs plain Stable Diffusion.
    `quantize`: the UNet sees the nearest integer timestep of each sigma (A1111's "enable_quantization"; Forge's
    predictor always does this), else the interpolated one (A1111's default). `device`: where the model is (the
    initial noise is always drawn on the CPU, so a seed is the same image on any device, as with the web UI's "CPU"
    random number source); `fp16`: under fp16 autocast, as the web UI on a GPU."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    device = device or torch.device("cpu")
    with torch.autocast(device.type, dtype=torch.float16) if fp16 else contextlib.nullcontext():
        kd = import_k_diffusion()
        denoiser = kd.external.CompVisDenoiser(sd, quantize=quantize)
        family = standalone_family(sd)
        power = config.power if config is not None else AlignConfig().power
        chunks, words = family.tokenize(prompt)
        chunks = chunks.to(device)
        targets = family.targets(chunks, words, power, clip_skip)
        neg_chunks, _ = family.tokenize(negative)
        # The shorter side is padded with empty chunks so cond and uncond have the same context length, as in A1111.
        n = max(len(chunks), len(neg_chunks))
        empty, _ = family.tokenize("")
        chunks_p = torch.cat([chunks] + [empty.to(device)] * (n - len(chunks)))
        neg_p = torch.cat([neg_chunks] + [empty] * (n - len(neg_chunks))).to(device)
        cond = family.encode(chunks_p, clip_skip, size=(height, width))
        uncond = family.encode(neg_p, clip_skip, size=(height, width), empty=negative == "")

        latent_hw = (height // 8, width // 8)
        session = None
        if config is not None:
            session = AlignSession(sd.unet, sd.apply_model, [targets], config, steps, latent_hw,
                                   level=family.layout_level, stop_early=stop_early)
        sigmas = denoiser.get_sigmas(steps)
        losses: list[dict[str, Any]] = []

        def on_report(report: Any) -> None:
            entry = {"step": report.step, "loss_before": report.loss_before[0], "iterations": report.iterations}
            if report.loss_after is not None:
                entry["loss_after"] = report.loss_after[0]
            losses.append(entry)

        model = GuidedDenoiser(denoiser, cond, uncond, cfg_scale, sigmas, session, measure_after, on_report)
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn((1, sd.config.latent_channels, *latent_hw), generator=generator).to(device) * sigmas[0]
        sample_fn = getattr(kd.sampling, SAMPLERS[sampler])
        torch.manual_seed(seed)  # ancestral samplers draw their noise from the global generator
        with torch.no_grad():  # as in A1111: sampling runs without grad; T-SAM enables it for its own pass only
            latent = sample_fn(model, x, sigmas, disable=True)
        image = to_image(sd, latent) if decode else Image.new("RGB", (width, height))
        return Generation(image=image, latent=latent, targets=targets, session=session, losses=losses)
