"""Generating the images: every prompt x seed x method, resumable, on the extension's own method code.

Images are named by set / prompt index / seed / method, so a run that stops (or is stopped) picks up where it was:
an image already on disk is never generated again. `run.json` in the output folder records the settings that shape
the images; resuming with different ones is refused rather than mixing two experiments in one table.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from lib_align.config import AlignConfig
from standalone.models import StableDiffusion
from standalone.pipeline import SAMPLERS, generate

from .metrics import SetupError
from .prompt_sets import PromptSet


@dataclass(frozen=True)
class Method:
    key: str  # in file names and CSVs
    label: str  # in the report
    config: AlignConfig | None  # None: plain Stable Diffusion


METHODS = (
    Method("plain", "Plain SD", None),
    Method("paper", "T-SAM Paper", AlignConfig.paper()),
    Method("official", "T-SAM Official code", AlignConfig.official()),
)
METHOD_LABELS = {m.key: m.label for m in METHODS}


@dataclass(frozen=True)
class GenerationSettings:
    """Everything that changes an image besides prompt, seed and method (recorded in run.json)."""

    model: str  # checkpoint path, or "tiny-random"
    steps: int = 50
    cfg_scale: float = 7.5
    sampler: str = "euler"
    width: int = 512
    height: int = 512
    dtype: str = "fp32"


@dataclass(frozen=True)
class Job:
    set_name: str
    index: int  # 0-based line of the prompt in its set
    prompt: str
    seed: int
    method: Method


@dataclass
class RunCounts:
    generated: int = 0
    skipped: int = 0
    seconds: float = 0.0


def image_path(out: Path, set_name: str, index: int, seed: int, method: str) -> Path:
    return Path(out) / "images" / set_name / f"{index:03d}" / f"seed{seed:05d}-{method}.png"


def plan(sets: Sequence[PromptSet], seeds: Sequence[int], methods: Sequence[Method] = METHODS,
         limit: int | None = None) -> list[Job]:
    """All jobs, prompt by prompt and seed by seed with the methods side by side, so that a partial run already
    holds complete plain | Paper | Official triples."""
    jobs = []
    for prompt_set in sets:
        prompts = prompt_set.prompts[:limit] if limit else prompt_set.prompts
        for index, prompt in enumerate(prompts):
            for seed in seeds:
                for method in methods:
                    jobs.append(Job(prompt_set.name, index, prompt, seed, method))
    return jobs


# ---------------------------------------------------------------------------------------------------------------
# the run record


def check_run_record(out: Path, settings: GenerationSettings, sets: Sequence[PromptSet]) -> None:
    """Refuse to resume into a folder made with other generation settings or other prompts; then record ours."""
    path = Path(out) / "run.json"
    record: dict[str, Any] = {"generation": asdict(settings), "prompt_sets": {}}
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("generation") != record["generation"]:
            changed = sorted(k for k in record["generation"] if old.get("generation", {}).get(k) !=
                             record["generation"][k])
            raise SetupError(f"{out} holds images made with other settings ({', '.join(changed)} differ, see "
                             f"{path}); use another --out, or the same settings to resume")
        record["prompt_sets"] = dict(old.get("prompt_sets", {}))
    for s in sets:
        known = record["prompt_sets"].get(s.name)
        if known is not None and known != s.digest:
            raise SetupError(f"{out} holds images of another '{s.name}' prompt list (its prompts changed since); "
                             f"use another --out")
        record["prompt_sets"][s.name] = s.digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------------------------------------------
# sampling


def prepare_model(sd: StableDiffusion, device: torch.device, dtype: str) -> StableDiffusion:
    """Move the model to the device; fp16 halves the UNet, text encoder and decoder as the web UI does, but keeps
    the noise schedule (alphas_cumprod) in fp32, where the sampler's sigmas come from."""
    sd = sd.to(device)
    if dtype == "fp16":
        for part in (sd.model, sd.cond_stage_model, sd.first_stage_model):
            part.half()
    return sd


def sample(sd: StableDiffusion, prompt: str, config: AlignConfig | None, settings: GenerationSettings, seed: int,
           device: torch.device) -> Image.Image:
    """One image, as `standalone.pipeline.generate` makes it, on `device` and in fp16 if asked (A&E's prompts: no
    negative prompt)."""
    if settings.sampler not in SAMPLERS:
        raise SetupError(f"unknown sampler {settings.sampler!r}; choose one of {', '.join(SAMPLERS)}")
    return generate(sd, prompt, config, steps=settings.steps, width=settings.width, height=settings.height, seed=seed,
                    cfg_scale=settings.cfg_scale, sampler=settings.sampler, measure_after=False, device=device,
                    fp16=settings.dtype == "fp16").image


def _save(image: Image.Image, path: Path) -> None:
    """Write via a temporary name and rename: a run killed mid-write leaves no half image that counts as done."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)


def run_jobs(jobs: Sequence[Job], out: Path, settings: GenerationSettings, load_model: Callable[[], StableDiffusion],
             device: torch.device, progress: bool = True) -> RunCounts:
    """Generate every job whose image is not on disk yet. `load_model()` is called only if there is work."""
    from tqdm import tqdm

    todo = [j for j in jobs if not image_path(out, j.set_name, j.index, j.seed, j.method.key).exists()]
    counts = RunCounts(skipped=len(jobs) - len(todo))
    print(f"{len(jobs)} images planned: {counts.skipped} already on disk (skipped), {len(todo)} to generate")
    if not todo:
        return counts
    sd = load_model()
    started = time.perf_counter()
    bar = tqdm(todo, desc="generating", unit="img", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    for job in bar:
        bar.set_postfix_str(f"{job.set_name} #{job.index} seed {job.seed} {job.method.key}", refresh=False)
        image = sample(sd, job.prompt, job.method.config, settings, job.seed, device)
        _save(image, image_path(out, job.set_name, job.index, job.seed, job.method.key))
        counts.generated += 1
    counts.seconds = time.perf_counter() - started
    return counts
