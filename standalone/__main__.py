"""Demo: `python -m standalone --prompt "a black car and a white clock" --out out/demo [--family sd1|sd2|sdxl]`.

Runs T-SAM end to end outside the web UI on a model of the chosen family (SD1 by default; SD2: OpenCLIP ViT-H text,
T from its penultimate blocks; SDXL: CLIP-L + bigG, T from CLIP-L) and writes the image, T, S before/after and the
loss per optimised step. The method code is the same for every family. Without --ckpt (SD1 only) the model is small
and randomly initialised: the image is noise, and the run shows the mechanics (each update lowers the loss at its own
step), not image quality.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from lib_align.config import PRESETS, AlignConfig

from .samplers import SAMPLERS

DEFAULT_PROMPT = "a black car and a white clock"
FAMILIES = ("sd1", "sd2", "sdxl")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m standalone", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default="sd1", choices=FAMILIES,
                    help="model family of the tiny random model (default sd1)")
    ap.add_argument("--prompt", default=DEFAULT_PROMPT)
    ap.add_argument("--negative", default="")
    ap.add_argument("--out", default="out/demo", help="output folder")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", default="256", help="WIDTH or WIDTHxHEIGHT in pixels (multiples of 8)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cfg-scale", type=float, default=7.5)
    ap.add_argument("--sampler", default="euler", choices=list(SAMPLERS))
    ap.add_argument("--preset", default=PRESETS[0], choices=PRESETS)
    ap.add_argument("--strength", type=float, default=None, help="override the preset's step size")
    ap.add_argument("--cpu-threads", type=int, default=None)
    ap.add_argument("--ckpt", default=None,
                    help="an SD 1.x .safetensors/.ckpt to load instead of random weights (--family sd1 only)")
    ap.add_argument("--cache-dir", default=None, help="keep the random tiny SD1 model here and reuse it (sd1 only)")
    ap.add_argument("--show-attention", action="store_true", help="also write per-token attention overlays")
    return ap.parse_args(argv)


def parse_size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    width = int(parts[0])
    height = int(parts[1]) if len(parts) > 1 else width
    if width % 8 or height % 8 or width < 8 or height < 8:
        raise SystemExit(f"--size {text}: width and height must be positive multiples of 8")
    return width, height


def check_args(args: argparse.Namespace) -> tuple[int, int]:
    """Every argument checked before anything is built or written (one line each); returns (width, height)."""
    size = parse_size(args.size)
    if args.family != "sd1" and (args.ckpt or args.cache_dir):
        # Checkpoints stay SD1-only: SD2 would need eps/v chosen by the user and SDXL a full loader of the sgm
        # layout (two text encoders); the tiny random models build in seconds, so there is nothing to cache.
        raise SystemExit(f"--ckpt and --cache-dir work with --family sd1 only (not {args.family})")
    if args.ckpt and not Path(args.ckpt).is_file():
        raise SystemExit(f"--ckpt {args.ckpt}: no such file")
    if args.steps < 1:
        raise SystemExit(f"--steps {args.steps}: at least 1")
    return size


def load_model(args: argparse.Namespace) -> tuple[Any, bool]:
    """(model, random weights?) for the chosen family (arguments already checked)."""
    from .models import full_size_sd, load_sd_state_dict, tiny_sd

    if args.family != "sd1":
        if args.family == "sd2":
            from .sd2 import tiny_sd2

            return tiny_sd2(), True
        from .sdxl import tiny_sdxl

        return tiny_sdxl(), True
    if args.ckpt:
        sd = full_size_sd()
        missing = sd.load_checkpoint(args.ckpt)
        if missing:
            print(f"warning: {len(missing)} weights missing from {args.ckpt}, e.g. {missing[:3]}")
        return sd, False
    if args.cache_dir:
        from safetensors.torch import load_file, save_file

        cached = Path(args.cache_dir) / "tiny-sd1-random.safetensors"
        sd = tiny_sd()
        if cached.exists():
            load_sd_state_dict(sd, load_file(str(cached)))
        else:
            cached.parent.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in _ldm_state(sd).items()}, str(cached))
        return sd, True
    return tiny_sd(), True


def _ldm_state(sd: Any) -> dict[str, Any]:
    return {k: v for k, v in sd.state_dict().items() if not k.endswith("position_ids")}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    width, height = check_args(args)
    overrides = {} if args.strength is None else {"step_size": args.strength}
    try:
        config = AlignConfig.from_preset(args.preset, **overrides)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    import torch  # after the checks: `--help` and a bad argument answer at once

    if args.cpu_threads:
        torch.set_num_threads(args.cpu_threads)

    from lib_align.loss import similarity_matrix
    from lib_align.pictures import session_pictures, words
    from lib_align.visualize import render_matrix

    from .pipeline import generate

    sd, random_weights = load_model(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if random_weights:
        print("NOTE: random weights (no checkpoint given): the image is noise. This run shows the mechanics of "
              "T-SAM (each update lowers the loss at its own step), not image quality.")
    started = time.perf_counter()
    result = generate(sd, args.prompt, config, negative=args.negative, steps=args.steps, width=width,
                      height=height, seed=args.seed, cfg_scale=args.cfg_scale, sampler=args.sampler)
    elapsed = time.perf_counter() - started
    result.image.save(out / "image.png")

    pictures = session_pictures(result.session, 0, result.targets, result.image, config.power)
    pictures.target.save(out / "T.png")
    session = result.session
    if session is not None and session.first_maps is not None:
        chunk = result.targets[0]
        for maps, name, title in ((session.first_maps, "S_before", "S before optimisation"),
                                  (session.last_maps, "S_after", "S after optimisation")):
            s_matrix = similarity_matrix(maps[0], chunk.length, chunk.offset, config.smooth)
            render_matrix(s_matrix, words(chunk), title).save(out / f"{name}.png")
        if args.show_attention:
            pictures.similarity.save(out / "S_before_after.png")
            pictures.token_maps.save(out / "token_maps.png")
    else:
        print("nothing to optimise: the prompt has fewer than two tokens")
    losses = [{"step": e["step"], "loss_before": e["loss_before"], "loss_after": e.get("loss_after")}
              for e in result.losses]
    (out / "loss.json").write_text(json.dumps(losses, indent=1))

    print(f"family: {args.family}  prompt: {args.prompt!r}  preset: {config.preset}  steps: {args.steps}  "
          f"size: {width}x{height}  time: {elapsed:.1f}s")
    for e in losses:
        print(f"  step {e['step']:3d}: loss {e['loss_before']:.4f} -> {e['loss_after']:.4f} after its update")
    if losses:
        # Each update is judged at its own step (the same latent before and after it); the losses of different steps
        # are of different latents and noise levels, not a trend to compare.
        lowered = sum(e["loss_after"] < e["loss_before"] for e in losses)
        change = sum((e["loss_after"] - e["loss_before"]) / e["loss_before"] for e in losses) / len(losses)
        print(f"{lowered} of {len(losses)} updates lowered the loss at their step (mean change {100 * change:+.2f} %)")
    extra = ", S_before_after.png, token_maps.png" if args.show_attention else ""
    print(f"wrote {out}/image.png, T.png, S_before.png, S_after.png, loss.json{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
