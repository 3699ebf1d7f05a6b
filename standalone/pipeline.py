"""A standalone text-to-image run with T-SAM: real k-diffusion samplers, CFG, and the same session the extension
uses, for SD1, SD2 and SDXL models. It serves the demo (`python -m standalone`), the tests and the benchmark; A1111
never imports it.

One sampling path for every family: what differs between model classes (tokenizer, where T comes from, the form
of the cond) sits in a small `StandaloneFamily` per class, and T is computed by the same functions the extension's
`lib_align.families` use for that family.
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
from lib_align.families import SD1, SD2, SDXL
from lib_align.session import AlignSession
from lib_align.text import ChunkTarget, chunk_targets, tokenize_chunks

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
    """What differs between the standalone model classes; the sampling, the session and the loss do not.

    `layout_level` is the extension's family's (lib_align.families), so a standalone run takes its maps where the
    web UI would for that model."""

    name = "SD1"
    layout_level = SD1.layout_level

    def __init__(self, sd: Any) -> None:
        self.sd = sd

    def tokenize(self, prompt: str) -> tuple[Tensor, list[list[str]]]:
        """Token chunks [n, 77] of one prompt and each chunk's BPE pieces (BREAK and 75-token chunks as A1111)."""
        return tokenize_chunks(self.sd.cond_stage_model.tokenizer, prompt)

    def targets(self, chunks: Tensor, words: Sequence[Sequence[str]], power: float,
                clip_skip: int = 1) -> list[ChunkTarget]:
        """T per chunk from the encoder the extension takes it from for this family."""
        return chunk_targets(self.sd.cond_stage_model.transformer, chunks, power, clip_skip, tokens=words)

    def encode(self, chunks: Tensor, clip_skip: int = 1, *, size: tuple[int, int] = (512, 512),
               empty: bool = False) -> Cond:
        """The cond of one prompt's chunks (`size` = (height, width) and `empty` matter to SDXL only)."""
        with torch.no_grad():
            return self.sd.cond_stage_model.encode_chunks(chunks, clip_skip)


class StandaloneSD2(StandaloneFamily):
    """OpenCLIP ViT-H: open_clip's chunking (0-padded), T from the blocks that feed the cond ("penultimate"), as
    lib_align.families.SD2; "Clip skip" is ignored for SD2, as in A1111."""

    name = "SD2"
    layout_level = SD2.layout_level

    def tokenize(self, prompt: str) -> tuple[Tensor, list[list[str]]]:
        from .sd2 import tokenize_chunks as openclip_chunks

        return openclip_chunks(self.sd.cond_stage_model.tokenizer, prompt)

    def targets(self, chunks: Tensor, words: Sequence[Sequence[str]], power: float,
                clip_skip: int = 1) -> list[ChunkTarget]:
        from lib_align.families.sd2 import openclip_layers
        from lib_align.openclip_text import openclip_chunk_targets

        encoder = self.sd.cond_stage_model
        return openclip_chunk_targets(encoder.model, chunks, power, openclip_layers(encoder), tokens=words)


class StandaloneSDXL(StandaloneFamily):
    """CLIP-L + bigG: T from CLIP-L at its configured layer (lib_align.families.sdxl explains the choice; "Clip
    skip" off, A1111's default), the cond a dict with the size embeddings of the image being made; an empty
    negative prompt is all-zero text, as A1111 encodes it."""

    name = "SDXL"
    layout_level = SDXL.layout_level

    def tokenize(self, prompt: str) -> tuple[Tensor, list[list[str]]]:
        return tokenize_chunks(self.sd.conditioner.tokenizer, prompt)

    def targets(self, chunks: Tensor, words: Sequence[Sequence[str]], power: float,
                clip_skip: int = 1) -> list[ChunkTarget]:
        from lib_align.families.sdxl import configured_clip_skip

        clip_l = self.sd.conditioner.clip_l
        return chunk_targets(clip_l.transformer, chunks, power, configured_clip_skip(clip_l), tokens=words)

    def encode(self, chunks: Tensor, clip_skip: int = 1, *, size: tuple[int, int] = (1024, 1024),
               empty: bool = False) -> Cond:
        with torch.no_grad():
            crossattn, vector = self.sd.encode_chunks(chunks, size=size, zero_text=empty)
        return {"crossattn": crossattn, "vector": vector}


def standalone_family(sd: Any) -> StandaloneFamily:
    """The adapter of a standalone model (StableDiffusion, StableDiffusion2 or StableDiffusionXL)."""
    if getattr(sd, "is_sdxl", False):
        return StandaloneSDXL(sd)
    if type(sd).__name__ == "StableDiffusion2":  # no import: standalone.sd2 loads open_clip's modules
        return StandaloneSD2(sd)
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
