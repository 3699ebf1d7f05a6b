"""`python -m evaluation`: plain SD vs T-SAM (Paper and Official-code presets) on the Attend-and-Excite prompt sets,
scored with CLIP as the paper scores them, with the paper's numbers beside ours.

    python -m evaluation --ckpt sd15.safetensors --clip clip-vit-b16 --out eval-out

Exit status: 0 when T-SAM is nowhere worse than plain SD beyond the rule of `evaluation/stats.py`, 3 when it is
(unless --no-fail), 1 for a setup problem (missing checkpoint or CLIP, no GPU, ...).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .metrics import DEFAULT_CLIP, ClipScorer, SetupError, load_clip
from .prompt_sets import SET_NAMES, PromptSet, load_set
from .report import (
    ScoredImage,
    image_grid,
    markdown_table,
    table_rows,
    verdict_lines,
    write_prompts_csv,
    write_report,
    write_scores_csv,
)
from .runner import (
    METHOD_LABELS,
    METHODS,
    GenerationSettings,
    Job,
    check_run_record,
    image_path,
    plan,
    prepare_model,
    run_jobs,
)
from .stats import Score, compare, failures, summarize

EXIT_WORSE = 3
RANDOM_WEIGHTS_WARNING = ("WARNING: RANDOM WEIGHTS (--tiny). The images are noise and the scores measure nothing "
                          "about T-SAM; this run only checks that the pipeline works. Pass --ckpt for a real result.")


@dataclass
class EvalOptions:
    """The command line, parsed and checked."""

    out: Path
    clip: str
    ckpt: Path | None
    tiny: bool
    sets: list[str]
    seeds: list[int]
    limit: int | None
    generation: GenerationSettings
    device: torch.device
    prompt_dir: Path | None = None
    grid_prompts: int = 4
    fail: bool = True
    fail_sigma: float = 1.0
    progress: bool = True


def parse_seeds(text: str) -> list[int]:
    """"64" -> seeds 0..63; "0-3,10" -> 0, 1, 2, 3, 10; "7," -> seed 7 alone."""
    text = text.strip()
    if text.isdigit():
        return list(range(int(text)))
    seeds: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise SetupError(f"--seeds {text!r}: write a count (64), a range (0-63) or a list (1,5,9)")
        seeds.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    if not seeds:
        raise SetupError(f"--seeds {text!r}: no seeds")
    return list(dict.fromkeys(seeds))


def seed_text(seeds: Sequence[int]) -> str:
    """"0-63" for a run of seeds, else the list (shortened)."""
    if list(seeds) == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}" if len(seeds) > 1 else str(seeds[0])
    shown = ", ".join(map(str, seeds[:8]))
    return shown + (", ..." if len(seeds) > 8 else "")


def parse_size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        width = int(parts[0])
        height = int(parts[1]) if len(parts) > 1 else width
    except ValueError:
        raise SetupError(f"--size {text}: write WIDTH or WIDTHxHEIGHT") from None
    if width % 8 or height % 8 or width < 8 or height < 8:
        raise SetupError(f"--size {text}: width and height must be positive multiples of 8")
    return width, height


def resolve_device(name: str, dtype: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SetupError(f"--device {name}: this torch sees no CUDA GPU (torch {torch.__version__}); "
                         f"use --device cpu (slow) or a CUDA build of torch")
    if dtype == "fp16" and device.type != "cuda":
        raise SetupError("--dtype fp16 needs a CUDA GPU; use --dtype fp32 on the CPU")
    return device


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m evaluation", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", help="Stable Diffusion 1.x checkpoint (.safetensors or .ckpt)")
    ap.add_argument("--tiny", action="store_true", help="a tiny random model instead (a smoke test: measures nothing)")
    ap.add_argument("--clip", default=DEFAULT_CLIP,
                    help="CLIP for the scores: a local transformers folder, a Hugging Face id already in the local "
                         "cache, or open_clip:MODEL/PRETRAINED (needs torchvision). Default: %(default)s, OpenAI's "
                         "ViT-B/16, the model Attend-and-Excite scores with")
    ap.add_argument("--out", required=True, help="output folder (resumes if it exists)")
    ap.add_argument("--sets", default=",".join(SET_NAMES), help="comma-separated; default: %(default)s")
    ap.add_argument("--limit", type=int, default=None, help="only the first N prompts of each set")
    ap.add_argument("--seeds", default="64",
                    help="a count (64: seeds 0-63, the paper's number of seeds), a range 0-63 or a list 1,5,9")
    ap.add_argument("--prompt-dir", default=None,
                    help="read <set>.txt from this folder instead of the shipped lists (e.g. the T-SAM authors' files)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--cfg-scale", type=float, default=7.5)
    ap.add_argument("--sampler", default="euler", help="euler, euler_a, dpmpp_2m, heun or lms")
    ap.add_argument("--size", default="512", help="WIDTH or WIDTHxHEIGHT in pixels (multiples of 8)")
    ap.add_argument("--device", default="auto", help="cuda, cuda:1, cpu or auto (cuda if there is one)")
    ap.add_argument("--dtype", default="fp32", choices=("fp32", "fp16"), help="fp16 needs a GPU")
    ap.add_argument("--grid-prompts", type=int, default=4, help="prompts per set in the image grid (0: no grid)")
    ap.add_argument("--no-fail", action="store_true", help="report a T-SAM regression but exit 0")
    ap.add_argument("--fail-sigma", type=float, default=1.0,
                    help="T-SAM fails when its mean difference from plain SD is below -k standard errors; this is k")
    ap.add_argument("--cpu-threads", type=int, default=None)
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap


def parse_options(argv: Sequence[str] | None = None) -> EvalOptions:
    args = build_parser().parse_args(argv)
    if args.cpu_threads:
        torch.set_num_threads(args.cpu_threads)
    if bool(args.ckpt) == bool(args.tiny):
        raise SetupError("pass --ckpt your-sd15.safetensors (or --tiny for a smoke test on random weights)")
    if args.ckpt and not Path(args.ckpt).is_file():
        raise SetupError(f"--ckpt {args.ckpt}: no such file")
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    unknown = [s for s in sets if s not in SET_NAMES]
    if unknown or not sets:
        raise SetupError(f"--sets {args.sets}: choose from {', '.join(SET_NAMES)}")
    if args.limit is not None and args.limit < 1:
        raise SetupError("--limit must be at least 1")
    width, height = parse_size(args.size)
    generation = GenerationSettings(model=str(args.ckpt) if args.ckpt else "tiny-random", steps=args.steps,
                                    cfg_scale=args.cfg_scale, sampler=args.sampler, width=width, height=height,
                                    dtype=args.dtype)
    return EvalOptions(out=Path(args.out), clip=args.clip, ckpt=Path(args.ckpt) if args.ckpt else None,
                       tiny=args.tiny, sets=sets, seeds=parse_seeds(args.seeds), limit=args.limit,
                       generation=generation, device=resolve_device(args.device, args.dtype),
                       prompt_dir=Path(args.prompt_dir) if args.prompt_dir else None,
                       grid_prompts=args.grid_prompts, fail=not args.no_fail, fail_sigma=args.fail_sigma,
                       progress=not args.no_progress)


def load_sd(opts: EvalOptions):
    from standalone.models import full_size_sd, tiny_sd

    if opts.tiny:
        sd = tiny_sd(seed=0)
    else:
        sd = full_size_sd()
        missing = sd.load_checkpoint(opts.ckpt)
        if missing:
            print(f"warning: {len(missing)} weights missing from {opts.ckpt}, e.g. {missing[:3]}")
    return prepare_model(sd, opts.device, opts.generation.dtype)


def score_images(jobs: Sequence[Job], out: Path, scorer: ClipScorer, batch: int = 64) -> list[ScoredImage]:
    """Score every planned image from the files on disk (a resumed run recomputes the same numbers)."""
    from PIL import Image

    rows: list[ScoredImage] = []
    by_prompt: dict[tuple[str, int], list[Job]] = {}
    for job in jobs:
        by_prompt.setdefault((job.set_name, job.index), []).append(job)
    for group in by_prompt.values():
        for start in range(0, len(group), batch):
            part = group[start : start + batch]
            paths = [image_path(out, j.set_name, j.index, j.seed, j.method.key) for j in part]
            images = []
            for p in paths:
                with Image.open(p) as im:
                    images.append(im.convert("RGB"))
            for job, path, s in zip(part, paths, scorer.score(images, part[0].prompt), strict=True):
                score = Score(job.set_name, job.index, job.seed, job.method.key, s.full, s.min_object)
                rows.append(ScoredImage(score, job.prompt, tuple(s.objects), tuple(s.object_similarities),
                                        str(path.relative_to(out))))
    return rows


def write_grids(jobs: Sequence[Job], out: Path, per_set: int, cell: int) -> list[str]:
    """One grid per set: `per_set` prompts spread over the set, first seed, methods side by side."""
    files = []
    if per_set <= 0:
        return files
    first_seed = jobs[0].seed if jobs else 0
    for set_name in dict.fromkeys(j.set_name for j in jobs):
        prompts = {j.index: j.prompt for j in jobs if j.set_name == set_name}
        indices = sorted(prompts)
        step = max(1, len(indices) // per_set)
        chosen = indices[::step][:per_set]
        rows = [(f"#{i} {prompts[i]}", [image_path(out, set_name, i, first_seed, m.key) for m in METHODS])
                for i in chosen]
        name = f"grid_{set_name}.png"
        image_grid(rows, [m.label for m in METHODS], cell=cell).save(out / name)
        files.append(name)
    return files


def run(opts: EvalOptions) -> int:
    out = opts.out
    out.mkdir(parents=True, exist_ok=True)
    if opts.tiny:
        print(RANDOM_WEIGHTS_WARNING)
    sets: list[PromptSet] = [load_set(name, opts.prompt_dir) for name in opts.sets]
    check_run_record(out, opts.generation, sets)
    scorer = load_clip(opts.clip, opts.device)  # before sampling: a missing CLIP must not cost hours first
    jobs = plan(sets, opts.seeds, METHODS, opts.limit)
    g = opts.generation
    print(f"{len(sets)} set(s), {len(jobs) // (len(opts.seeds) * len(METHODS))} prompts x {len(opts.seeds)} seeds x "
          f"{len(METHODS)} methods; {g.sampler}, {g.steps} steps, CFG {g.cfg_scale}, {g.width}x{g.height}, "
          f"{g.dtype} on {opts.device}")
    counts = run_jobs(jobs, out, g, lambda: load_sd(opts), opts.device, progress=opts.progress)
    if counts.generated:
        print(f"generated {counts.generated} images in {counts.seconds:.1f} s "
              f"({counts.seconds / counts.generated:.2f} s per image, the three methods together)")

    rows = score_images(jobs, out, scorer)
    write_scores_csv(rows, out / "scores.csv")
    write_prompts_csv(rows, out / "prompts.csv")
    scores = [r.score for r in rows]
    summaries = summarize(scores)
    comparisons = compare(scores, sigma=opts.fail_sigma)
    header, table = table_rows(summaries, comparisons, [m.key for m in METHODS], METHOD_LABELS)
    grids = write_grids(jobs, out, opts.grid_prompts, cell=max(128, min(256, g.width)))  # labels need >= 128 px
    notes = [f"Model: {g.model}; CLIP: {scorer.name}",
             f"Sampler {g.sampler}, {g.steps} steps, CFG {g.cfg_scale}, {g.width}x{g.height}, {g.dtype}; "
             f"seeds {seed_text(opts.seeds)} ({len(opts.seeds)})",
             "Prompts: " + ", ".join(f"{s.name} ({min(len(s), opts.limit or len(s))} of {len(s)}, {s.source})"
                                     for s in sets)]
    if opts.tiny:
        notes.insert(0, RANDOM_WEIGHTS_WARNING)
    write_report(out, header, table, comparisons, notes, grids, opts.fail_sigma, METHOD_LABELS)

    print(markdown_table(header, table))
    verdict = verdict_lines(comparisons, opts.fail_sigma, METHOD_LABELS)
    print("\n".join(verdict))
    print(f"wrote {out / 'report.md'}, report.html, scores.csv, prompts.csv" + (", " + ", ".join(grids) if grids
                                                                                else ""))
    worse = failures(comparisons)
    if worse:
        print(f"FAIL: T-SAM is worse than plain SD in {len(worse)} comparison(s) (see above)"
              + ("" if opts.fail else "; exiting 0 because of --no-fail"), file=sys.stderr)
        return EXIT_WORSE if opts.fail else 0
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(parse_options(argv))
    except (SetupError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
