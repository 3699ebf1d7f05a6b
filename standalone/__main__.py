"""Demo: `python -m standalone --prompt "a black car and a white clock" --out out/demo`.

Runs T-SAM end to end outside the web UI on an SD1-architecture model and writes the image, T, S before/after and
the loss per optimised step. Without --ckpt the model is small and randomly initialised: the image is noise, and
the run shows the mechanics (the loss falls), not image quality.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from lib_align.config import PRESETS, AlignConfig
from lib_align.loss import similarity_matrix

DEFAULT_PROMPT = "a black car and a white clock"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m standalone", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt", default=DEFAULT_PROMPT)
    ap.add_argument("--negative", default="")
    ap.add_argument("--out", default="out/demo", help="output folder")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", default="256", help="WIDTH or WIDTHxHEIGHT in pixels (multiples of 8)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cfg-scale", type=float, default=7.5)
    ap.add_argument("--sampler", default="euler", help="euler, euler_a, dpmpp_2m, heun or lms")
    ap.add_argument("--preset", default=PRESETS[0], choices=PRESETS)
    ap.add_argument("--strength", type=float, default=None, help="override the preset's step size")
    ap.add_argument("--cpu-threads", type=int, default=None)
    ap.add_argument("--ckpt", default=None, help="an SD 1.x .safetensors/.ckpt to load instead of random weights")
    ap.add_argument("--cache-dir", default=None, help="keep the random tiny model here and reuse it")
    ap.add_argument("--show-attention", action="store_true", help="also write per-token attention overlays")
    return ap.parse_args(argv)


def parse_size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    width = int(parts[0])
    height = int(parts[1]) if len(parts) > 1 else width
    if width % 8 or height % 8 or width < 8 or height < 8:
        raise SystemExit(f"--size {text}: width and height must be positive multiples of 8")
    return width, height


def load_model(args: argparse.Namespace):
    from .models import full_size_sd, load_sd_state_dict, tiny_sd

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


def _ldm_state(sd) -> dict[str, torch.Tensor]:
    return {k: v for k, v in sd.state_dict().items() if not k.endswith("position_ids")}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cpu_threads:
        torch.set_num_threads(args.cpu_threads)
    width, height = parse_size(args.size)
    overrides = {} if args.strength is None else {"step_size": args.strength}
    config = AlignConfig.from_preset(args.preset, **overrides)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from lib_align.pictures import session_pictures, words
    from lib_align.visualize import render_matrix

    from .pipeline import generate

    sd, random_weights = load_model(args)
    if random_weights:
        print("NOTE: random weights (no checkpoint given): the image is noise. This run shows the mechanics of "
              "T-SAM (the loss falls), not image quality.")
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

    print(f"prompt: {args.prompt!r}  preset: {config.preset}  steps: {args.steps}  size: {width}x{height}  "
          f"time: {elapsed:.1f}s")
    for e in losses:
        print(f"  step {e['step']:3d}: loss {e['loss_before']:.4f} -> {e['loss_after']:.4f}")
    if losses:
        first, last = losses[0], losses[-1]
        print(f"loss at the first optimised step {first['loss_before']:.4f}, after the last update "
              f"{last['loss_after']:.4f}")
    extra = ", S_before_after.png, token_maps.png" if args.show_attention else ""
    print(f"wrote {out}/image.png, T.png, S_before.png, S_after.png, loss.json{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
