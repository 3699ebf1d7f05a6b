"""What the benchmark runs: the model, one plain CFG step, one T-SAM optimisation iteration in each variant, whole
samplings (plain, Paper, Official code, and the official pipeline's structure), and the stand-in host with T-SAM
installed but off. The same Workload serves SD1 and SDXL (text side through standalone.pipeline's family adapter)."""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lib_align.capture import CrossAttentionCapture
from lib_align.config import AlignConfig
from lib_align.optimizer import LatentOptimizer, LossFn, StepReport
from lib_align.session import AlignSession, frozen_weights
from lib_align.text import ChunkTarget
from standalone.models import (
    StableDiffusion,
    count_calls,
    full_size_config,
    import_k_diffusion,
    tiny_sd,
    widen_random_init,
)
from standalone.pipeline import Cond, GuidedDenoiser, standalone_family
from standalone.sdxl import DiffusionWrapperXL, StableDiffusionXL, full_size_sdxl_unet, tiny_sdxl
from standalone.sdxl import full_size_config as full_size_sdxl_config

PROMPT = "a black car and a white clock"  # the README's example: 7 prompt tokens, two objects, two attributes


def build_model(kind: str, device: torch.device, dtype: torch.dtype, seed: int = 0) -> StableDiffusion:
    """`full`: SD1.x at full size (ldm UNetModel, v1 config), random weights widened like the tiny model's so that
    attention is not uniform and the refinement's iteration counts are not trivially 0 or capped. `tiny`: the
    test model. In fp16 the UNet and text encoder are half, as in the host, and calls run under autocast."""
    if kind == "tiny":
        sd = tiny_sd(seed)
    else:
        # As `full_size_sd`, with the text encoder initialised like the tiny model's (initializer factor 4): at the
        # default factor a random CLIP attends almost uniformly, T is flat, the loss starts near 0 and the
        # refinement never iterates, which would hide the cost the Official preset is about.
        torch.manual_seed(seed)
        config = full_size_config()
        config.text["initializer_factor"] = 16.0
        sd = StableDiffusion(config).eval()
        widen_random_init(sd)
    sd = sd.to(device)
    if dtype != torch.float32:
        sd.model.to(dtype)
        sd.cond_stage_model.to(dtype)
        sd.unet.dtype = dtype  # ldm's UNet casts its input to this attribute
    return sd


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """The host samples under autocast on GPU (fp16 weights, fp32 latents); fp32 runs need none."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def text_targets(sd: Any, prompt: str, power: float, device: torch.device) -> list[ChunkTarget]:
    """T of every chunk of the prompt: the one text-encoder pass with attention output that T-SAM adds."""
    family = standalone_family(sd)
    chunks, words = family.tokenize(prompt)
    return family.targets(chunks.to(device), words, power)


def encode(sd: Any, prompt: str, device: torch.device, size: tuple[int, int] = (512, 512)) -> Cond:
    """The cond of a prompt in fp32 (an empty prompt is SDXL's all-zero negative, as A1111 encodes it)."""
    family = standalone_family(sd)
    chunks, _ = family.tokenize(prompt)
    cond = family.encode(chunks.to(device), size=size, empty=prompt == "")
    return {k: v.float() for k, v in cond.items()} if isinstance(cond, dict) else cond.float()


class OfficialStructure(LatentOptimizer):
    """The official code's control flow, for the reference run: after each refinement loop it runs the UNet once
    more (a forward with grad, its graph then used by the regular update) to recompute a loss that the loop's last
    forward had already produced. Paired with `stop_early=False` (the full UNet every time) this is the cost
    structure of the authors' pipeline. Our optimiser reuses that evaluation; here one more forward is paid at the
    same point, and its result is discarded, so latents stay identical to `LatentOptimizer`'s."""

    def step(self, z: Tensor, step: int, loss_fn: LossFn, threshold: Tensor | None = None,
             on_iteration: Any = None, measure_after: bool = False) -> tuple[Tensor, StepReport]:
        if step in self.refine_steps:
            with torch.enable_grad():
                loss_fn(z.detach().requires_grad_(True))
        return super().step(z, step, loss_fn, threshold, on_iteration, measure_after)


@dataclass
class Sampling:
    """One whole sampling run: the final latent and the optimiser's reports."""

    latent: Tensor
    reports: list[StepReport] = field(default_factory=list)

    @property
    def iterations(self) -> int:
        return sum(r.iterations for r in self.reports)


class Workload:
    """The model, prompt, latent size and the conditionings, fixed for one benchmark process."""

    def __init__(self, sd: Any, *, size: tuple[int, int], device: torch.device, dtype: torch.dtype,
                 prompt: str = PROMPT, cfg_scale: float = 7.5, seed: int = 0,
                 conds: tuple[Cond, Cond] | None = None,
                 targets: dict[float, list[ChunkTarget]] | None = None) -> None:
        """`sd`: a standalone model (SD1, SD2, SDXL) or anything with `unet`, `apply_model` and `alphas_cumprod`
        when `conds` (cond, uncond) and `targets` (T per power) are given: the unit costs and the memory never run
        the text side, so a full-size UNet can be measured without its text encoders."""
        self.sd, self.device, self.dtype = sd, device, dtype
        self.width, self.height = size
        self.latent_hw = (self.height // 8, self.width // 8)
        self.prompt, self.cfg_scale, self.seed = prompt, cfg_scale, seed
        self.level = standalone_family(sd).layout_level  # where the extension takes this family's maps
        self.kd = import_k_diffusion()
        self.denoiser = self.kd.external.CompVisDenoiser(sd)
        hw = (self.height, self.width)
        with self.autocast():
            self.cond, self.uncond = conds or (encode(sd, prompt, device, hw), encode(sd, "", device, hw))
            self.targets = targets or {p: text_targets(sd, prompt, p, device) for p in (AlignConfig.paper().power,
                                                                                        AlignConfig.official().power)}
        generator = torch.Generator().manual_seed(seed)
        sigmas = self.denoiser.get_sigmas(50)
        self.sigma = sigmas[:1]  # the first step's noise level: where T-SAM works hardest (refinement runs there)
        self.x = (torch.randn((1, self.latent_channels, *self.latent_hw), generator=generator).to(device)
                  * self.sigma[0])
        self._sessions: dict[tuple[bool, bool, bool], AlignSession] = {}

    @property
    def latent_channels(self) -> int:
        config = getattr(self.sd, "config", None)
        return config.latent_channels if config is not None else self.sd.unet.in_channels

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.dtype)

    # -- unit costs ----------------------------------------------------------------------------------------------
    def plain_step(self) -> None:
        """One sampler step's model call without T-SAM: CFG, cond and uncond rows in one UNet batch of 2."""
        guided = GuidedDenoiser(self.denoiser, self.cond, self.uncond, self.cfg_scale, self.denoiser.sigmas)
        with torch.no_grad(), self.autocast():
            guided(self.x, self.sigma)

    def session(self, optimised: bool = True, low_memory: bool = False, total_steps: int = 50) -> AlignSession:
        """A Paper-preset session (one iteration per optimised step), kept across calls as in a real run.

        optimised=False is the pass as the official pipeline structures it: the full UNet forward, and the weights
        left requiring grad (the backward is to the latent only in both)."""
        key = (optimised, low_memory)
        if key not in self._sessions:
            config = AlignConfig.paper(low_memory=low_memory)
            session = AlignSession(self.sd.unet, self.sd.apply_model, [self.targets[config.power]], config,
                                   total_steps, self.latent_hw, level=self.level, stop_early=optimised)
            session.freeze_weights = optimised
            self._sessions[key] = session
        return self._sessions[key]

    def iteration(self, optimised: bool = True, low_memory: bool = False) -> StepReport:
        """One optimisation iteration as the session runs it: forward of the conditional row with the capture,
        loss, gradient to the latent, update (step 0 of the Paper preset: exactly one iteration)."""
        session = self.session(optimised, low_memory)
        with torch.no_grad(), self.autocast():  # the host samples under no_grad; the session enables grad itself
            _, report = session.update_sigma_space(self.x, self.sigma, self.cond, 0, self.denoiser.sigma_to_t)
        session.history.clear()
        assert report is not None and report.iterations == 1, report
        return report

    def forward_with_grad(self, optimised: bool = False) -> None:
        """A forward with grad and the loss, no backward. Full (optimised=False): the official code's extra pass
        after refinement. Truncated: the forward half of an optimised iteration (what is left is its backward)."""
        session = self.session(optimised=optimised)
        c_in = 1.0 / (self.sigma**2 + 1.0).sqrt()
        z = (self.x * c_in).detach().requires_grad_(True)
        t = self.denoiser.sigma_to_t(self.sigma)
        capture = CrossAttentionCapture(self.sd.unet, self.latent_hw, self.level, stop_early=optimised)
        frozen = frozen_weights(self.sd.unet) if optimised else contextlib.nullcontext()
        with capture, frozen, torch.enable_grad(), self.autocast():
            maps = capture.run(lambda: self.sd.apply_model(z, t, self.cond))
            session.losses(maps)

    def unet_forward(self, capture: bool) -> None:
        """A no-grad batch-1 UNet forward with or without the capture's hooks (their per-layer overhead)."""
        t = self.denoiser.sigma_to_t(self.sigma)
        with torch.no_grad(), self.autocast():
            if capture:
                with CrossAttentionCapture(self.sd.unet, self.latent_hw, self.level) as cap:
                    cap.run(lambda: self.sd.apply_model(self.x, t, self.cond))
            else:
                self.sd.apply_model(self.x, t, self.cond)

    def text_target(self) -> None:
        """T for the prompt: paid once per prompt (the pipeline and the extension keep it for the whole job)."""
        with self.autocast():
            text_targets(self.sd, self.prompt, AlignConfig.paper().power, self.device)

    # -- whole samplings -----------------------------------------------------------------------------------------
    def sample(self, config: AlignConfig | None, steps: int, *, reference: bool = False,
               on_call: Callable[[], None] | None = None) -> Sampling:
        """A txt2img sampling (Euler, CFG, no decode) as `standalone.pipeline.generate` runs it, timed as a whole:
        text encoding, T (with T-SAM), every step. reference=True: our optimisations off and the official code's
        control flow (full UNet forward, weights requiring grad, the extra forward after refinement). `on_call`
        runs before every denoiser call (the stand-in for an `on_cfg_denoiser` callback that returns at once)."""
        sd = self.sd
        size = (self.height, self.width)
        with self.autocast():
            cond, uncond = encode(sd, self.prompt, self.device, size), encode(sd, "", self.device, size)
            session = None
            if config is not None:
                targets = text_targets(sd, self.prompt, config.power, self.device)
                session = AlignSession(sd.unet, sd.apply_model, [targets], config, steps, self.latent_hw,
                                       level=self.level, stop_early=not reference)
                if reference:
                    session.freeze_weights = False
                    session.optimizer = OfficialStructure(config, steps)
            sigmas = self.denoiser.get_sigmas(steps)
            model = GuidedDenoiser(self.denoiser, cond, uncond, self.cfg_scale, sigmas, session,
                                   measure_after=False)
            handle = model.register_forward_pre_hook(lambda *_: on_call()) if on_call is not None else None
            try:
                generator = torch.Generator().manual_seed(self.seed)
                x = torch.randn((1, self.latent_channels, *self.latent_hw), generator=generator).to(self.device)
                torch.manual_seed(self.seed)
                with torch.no_grad():
                    latent = self.kd.sampling.sample_euler(model, x * sigmas[0], sigmas, disable=True)
            finally:
                if handle is not None:
                    handle.remove()
        return Sampling(latent, list(session.history) if session is not None else [])


# ---------------------------------------------------------------------------------------------------------------
# installed but off


@dataclass
class OffRunner:
    """Plain txt2img jobs with T-SAM installed but its accordion closed, and with no extension at all.

    `kind` says what stands in for the host: "stand-in host" (tests/host: the real script and callback loaded by a
    mirror of A1111's processing) or "no-op pre-step hook" (when the stand-in is not importable, e.g. on a GPU)."""

    kind: str
    with_extension: Callable[[], Any]
    without_extension: Callable[[], Any]
    counts: Callable[[], tuple[dict[str, int], dict[str, int]]]
    close: Callable[[], None] = lambda: None  # drops what holds the model (the stand-in's shared.sd_model)


def off_runner(work: Workload, steps: int) -> OffRunner:
    if work.device.type == "cpu" and work.dtype == torch.float32:
        try:
            return _standin_runner(work, steps)
        except ImportError:
            pass

    def with_ext() -> Any:
        return work.sample(None, steps, on_call=lambda: None)

    def without_ext() -> Any:
        return work.sample(None, steps)

    def counts() -> tuple[dict[str, int], dict[str, int]]:
        return _count_both(work, with_ext, without_ext)

    return OffRunner("no-op pre-step hook", with_ext, without_ext, counts)


def _count_both(work: Workload, with_ext: Any, without_ext: Any) -> tuple[dict[str, int], dict[str, int]]:
    """Model calls made by a run with the extension and by one without it, to show the off path does no work."""
    with count_calls(work.sd) as a:
        with_ext()
    with count_calls(work.sd) as b:
        without_ext()
    return dict(a), dict(b)


def _standin_runner(work: Workload, steps: int) -> OffRunner:
    import sys
    from pathlib import Path

    host_dir = Path(__file__).resolve().parents[1] / "tests" / "host"
    if not (host_dir / "standin.py").exists():
        raise ImportError("no stand-in host")
    if str(host_dir) not in sys.path:
        sys.path.insert(0, str(host_dir))
    import standin  # noqa: PLC0415 — the stand-in puts its `modules` package first on sys.path when imported

    if getattr(work.sd, "is_sdxl", False):
        from sdxl_model import HostModelSDXL  # noqa: PLC0415 — importable once standin is

        model = HostModelSDXL(work.sd)
    else:
        model = standin.HostModel(work.sd)
    host = standin.Host(work.sd, model=model)
    job = dict(steps=steps, width=work.width, height=work.height, seed=work.seed, cfg_scale=work.cfg_scale)

    # Each run sets its own model: a later runner (SDXL after SD1) builds its own Host and model in this process.
    def with_ext() -> Any:
        standin.reset_host_state()
        standin.shared.sd_model = model
        return host.txt2img(work.prompt, tsam=None, **job)

    def without_ext() -> Any:
        standin.reset_host_state()
        standin.shared.sd_model = model
        return host.txt2img_without_extension(work.prompt, **job)

    def counts() -> tuple[dict[str, int], dict[str, int]]:
        return _count_both(work, with_ext, without_ext)

    def close() -> None:
        standin.reset_host_state()  # also drops the samplers, which hold the model
        standin.shared.sd_model = None

    return OffRunner(f"stand-in host (tests/host, {type(model).__name__}) with scripts/t_sam.py loaded and off, "
                     "vs no extension", with_ext, without_ext, counts, close)


# ---------------------------------------------------------------------------------------------------------------
# SDXL


class UNetOnlyXL(nn.Module):
    """standalone.sdxl.StableDiffusionXL's UNet side (`unet`, `apply_model`, `alphas_cumprod`) around a full-size
    UNet, without the text encoders (about 1.4 GB for CLIP-L and bigG) and the VAE, which neither a plain step nor
    an iteration calls."""

    is_sdxl = True
    parameterization = "eps"
    unet = StableDiffusionXL.unet
    apply_model = StableDiffusionXL.apply_model

    def __init__(self, unet: nn.Module, alphas_cumprod: Tensor) -> None:
        super().__init__()
        self.model = DiffusionWrapperXL(unet)
        self.register_buffer("alphas_cumprod", alphas_cumprod.clone(), persistent=False)


def sdxl_workload(kind: str, size: tuple[int, int], device: torch.device, dtype: torch.dtype,
                  prompt: str = PROMPT, seed: int = 0) -> Workload:
    """The SDXL row's workload. `tiny`: the tiny SDXL test model, text side included. `full`: SDXL base's UNet
    (standalone.sdxl.full_size_sdxl_unet) with random weights widened as the SD1 model's, fed a random context
    [1, 77, 2048] and vector [1, 2816] (what the two encoders would give; their cost is not in these figures) and
    T from the tiny model's CLIP-L for the same prompt (T is computed once per prompt; the loss's cost depends on
    the token count, not on T's values)."""
    tiny = tiny_sdxl(seed)
    if kind == "tiny":
        sd = tiny.to(device)
        if dtype != torch.float32:
            sd.model.to(dtype)
            sd.conditioner.to(dtype)
            sd.unet.dtype = dtype
        return Workload(sd, size=size, device=device, dtype=dtype, prompt=prompt, cfg_scale=5.0, seed=seed)
    family = standalone_family(tiny)
    chunks, words = family.tokenize(prompt)
    targets = {p: family.targets(chunks, words, p) for p in (AlignConfig.paper().power, AlignConfig.official().power)}
    torch.manual_seed(seed)
    unet = full_size_sdxl_unet(device, dtype)
    widen_random_init(types.SimpleNamespace(unet=unet))  # type: ignore[arg-type] — reads only .unet
    params = full_size_sdxl_config().unet
    generator = torch.Generator().manual_seed(seed)

    def random_cond() -> dict[str, Tensor]:
        context = torch.randn((1, 77 * chunks.shape[0], params["context_dim"]), generator=generator)
        vector = torch.randn((1, params["adm_in_channels"]), generator=generator)
        return {"crossattn": context.to(device), "vector": vector.to(device)}

    sd = UNetOnlyXL(unet, tiny.alphas_cumprod).to(device)
    return Workload(sd, size=size, device=device, dtype=dtype, prompt=prompt, cfg_scale=5.0, seed=seed,
                    conds=(random_cond(), random_cond()), targets=targets)
