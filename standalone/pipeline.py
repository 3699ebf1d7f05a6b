"""A standalone text-to-image run with T-SAM: real k-diffusion samplers, CFG, and the same session the extension
uses. It serves the demo (`python -m standalone`), the tests and the benchmark; A1111 never imports it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from lib_align.config import AlignConfig
from lib_align.session import AlignSession
from lib_align.text import ChunkTarget, chunk_targets, tokenize_chunks

from .models import StableDiffusion, import_k_diffusion

SAMPLERS = {
    "euler": "sample_euler",
    "euler_a": "sample_euler_ancestral",
    "dpmpp_2m": "sample_dpmpp_2m",
    "heun": "sample_heun",
    "lms": "sample_lms",
}


@dataclass
class Generation:
    image: Image.Image
    latent: Tensor
    targets: list[ChunkTarget]
    session: AlignSession | None
    losses: list[dict[str, Any]] = field(default_factory=list)


def prompt_targets(
    sd: StableDiffusion, prompt: str, power: float, clip_skip: int = 1
) -> tuple[Tensor, list[ChunkTarget]]:
    """Token chunks [n, 77] and T per chunk of one prompt."""
    chunks, words = tokenize_chunks(sd.cond_stage_model.tokenizer, prompt)
    targets = chunk_targets(sd.cond_stage_model.transformer, chunks, power, clip_skip, tokens=words)
    return chunks, targets


def encode(sd: StableDiffusion, chunks: Tensor, clip_skip: int = 1) -> Tensor:
    with torch.no_grad():
        return sd.cond_stage_model.encode_chunks(chunks, clip_skip)


class GuidedDenoiser(nn.Module):
    """CFG around a k-diffusion denoiser; with a session, T-SAM updates the sampler's own x in place first.

    The update is applied once per sampler step: on the first model call whose sigma is that step's sigma
    (second-order samplers call the model again at intermediate sigmas, which are left alone).
    """

    def __init__(self, denoiser: nn.Module, cond: Tensor, uncond: Tensor, scale: float, sigmas: Tensor,
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
        cond_in = torch.cat([self.cond.expand(x.shape[0], -1, -1), self.uncond.expand(x.shape[0], -1, -1)])
        out = self.denoiser(x_in, sigma_in, cond=cond_in)
        c, u = out.chunk(2)
        return u + (c - u) * self.scale


def to_image(sd: StableDiffusion, latent: Tensor) -> Image.Image:
    pixels = sd.decode_first_stage(latent.float())[0]
    array = ((pixels.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(array))


def generate(
    sd: StableDiffusion,
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
) -> Generation:
    """Sample one image; `config=None` runs plain Stable Diffusion."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    kd = import_k_diffusion()
    denoiser = kd.external.CompVisDenoiser(sd)
    power = config.power if config is not None else AlignConfig().power
    chunks, targets = prompt_targets(sd, prompt, power, clip_skip)
    neg_chunks, _ = tokenize_chunks(sd.cond_stage_model.tokenizer, negative)
    # The shorter side is padded with empty chunks so cond and uncond have the same context length, as in A1111.
    n = max(len(chunks), len(neg_chunks))
    empty, _ = tokenize_chunks(sd.cond_stage_model.tokenizer, "")
    chunks_p = torch.cat([chunks] + [empty] * (n - len(chunks)))
    neg_p = torch.cat([neg_chunks] + [empty] * (n - len(neg_chunks)))
    cond, uncond = encode(sd, chunks_p, clip_skip), encode(sd, neg_p, clip_skip)

    latent_hw = (height // 8, width // 8)
    session = None
    if config is not None:
        session = AlignSession(sd.unet, sd.apply_model, [targets], config, steps, latent_hw, stop_early=stop_early)
    sigmas = denoiser.get_sigmas(steps)
    losses: list[dict[str, Any]] = []

    def on_report(report: Any) -> None:
        entry = {"step": report.step, "loss_before": report.loss_before[0], "iterations": report.iterations}
        if report.loss_after is not None:
            entry["loss_after"] = report.loss_after[0]
        losses.append(entry)

    model = GuidedDenoiser(denoiser, cond, uncond, cfg_scale, sigmas, session, measure_after, on_report)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((1, sd.config.latent_channels, *latent_hw), generator=generator) * sigmas[0]
    sample_fn = getattr(kd.sampling, SAMPLERS[sampler])
    torch.manual_seed(seed)  # ancestral samplers draw their noise from the global generator
    with torch.no_grad():  # as in A1111: sampling runs without grad; T-SAM enables it for its own pass only
        latent = sample_fn(model, x, sigmas, disable=True)
    image = to_image(sd, latent) if decode else Image.new("RGB", (width, height))
    return Generation(image=image, latent=latent, targets=targets, session=session, losses=losses)
