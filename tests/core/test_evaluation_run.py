"""`python -m evaluation` end to end on the tiny random SD and a tiny random CLIP: 2 prompts x 2 seeds x 3 methods.

Checks the files and their structure, that a resumed run skips what is on disk and gives the same CSV, that the
sampling equals the standalone pipeline's, and that T-SAM doing worse (injected scores) fails the command.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation import cli
from evaluation.report import ScoredImage
from evaluation.stats import Score

pytestmark = pytest.mark.slow  # the command end to end, as a user runs it

ROOT = Path(__file__).resolve().parents[2]
METHOD_KEYS = ("plain", "paper", "official")
# One thread: the tiny model's ops are too small to gain from two, and on a busy machine two threads of tiny ops
# run ten times slower than one (measured here: 5.6 s against 0.5 s for three images).
RUN_ARGS = ("--tiny", "--sets", "animals", "--limit", "2", "--seeds", "2", "--steps", "2", "--size", "64",
            "--device", "cpu", "--cpu-threads", "1")


@pytest.fixture(autouse=True)
def restore_threads():
    """In-process runs set torch's thread count (--cpu-threads); later tests get theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    """A small random transformers CLIP with the real CLIP tokenizer, saved as a local folder like a user's."""
    from transformers import CLIPConfig, CLIPModel

    from standalone.models import clip_tokenizer

    folder = tmp_path_factory.mktemp("tiny-clip")
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2),
        projection_dim=16)
    CLIPModel(config).save_pretrained(folder)
    clip_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def first_run(tiny_clip, tmp_path_factory):
    """The whole command as a user types it (a subprocess), once for the module."""
    out = tmp_path_factory.mktemp("eval") / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "evaluation", "--clip", str(tiny_clip), "--out", str(out), *RUN_ARGS, "--no-fail"]
    # (with the progress bar: the user's default)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return out, proc


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_the_command_writes_images_csvs_and_the_report(first_run):
    out, proc = first_run
    assert "RANDOM WEIGHTS" in proc.stdout and "measure nothing" in proc.stdout
    assert "12 images planned: 0 already on disk (skipped), 12 to generate" in proc.stdout
    assert re.search(r"generating: 100%.*12/12 \[\d\d:\d\d<00:00", proc.stderr), proc.stderr[-500:]  # bar + ETA
    images = sorted(p.relative_to(out).as_posix() for p in (out / "images").rglob("*.png"))
    assert images == sorted(f"images/animals/{i:03d}/seed{s:05d}-{m}.png"
                            for i in range(2) for s in range(2) for m in METHOD_KEYS)
    assert Image.open(out / images[0]).size == (64, 64)

    rows = read_csv(out / "scores.csv")
    assert len(rows) == 12
    assert {(r["index"], r["seed"], r["method"]) for r in rows} == {
        (str(i), str(s), m) for i in range(2) for s in range(2) for m in METHOD_KEYS}
    assert {r["prompt"] for r in rows} == {"a cat and a dog", "a cat and a bird"}
    for r in rows:
        sims = [float(r["object_1_similarity"]), float(r["object_2_similarity"])]
        assert r["object_1"] == "a cat" and r["object_2"] in ("a dog", "a bird")
        assert float(r["min_object"]) == min(sims)
        assert -1 <= float(r["full"]) <= 1
        assert (out / r["image"]).is_file()
    prompts = read_csv(out / "prompts.csv")
    assert len(prompts) == 6 and all(p["seeds"] == "2" for p in prompts)
    one = [float(r["full"]) for r in rows if r["index"] == "0" and r["method"] == "paper"]
    got = next(float(p["full"]) for p in prompts if p["index"] == "0" and p["method"] == "paper")
    assert got == pytest.approx(sum(one) / 2, abs=2e-6)

    report = (out / "report.md").read_text()
    assert "RANDOM WEIGHTS" in report
    for label in ("Plain SD (ours)", "T-SAM Paper (ours)", "T-SAM Official code (ours)", "Paper: SD 1.5",
                  "Paper: T-SAM", "T-SAM Paper − plain", "arXiv 2411.15236"):
        assert label in report, label
    table = [line for line in report.splitlines() if line.startswith("| animals |")]
    assert len(table) == 2 and "2 × 2" in table[0] and "Full-prompt" in table[0] and "Minimum-object" in table[1]
    assert "## Check" in report and "![grid_animals](grid_animals.png)" in report
    assert "<table>" in (out / "report.html").read_text()
    grid = Image.open(out / "grid_animals.png")
    assert grid.width == 4 + 3 * (128 + 4)  # three columns: plain | Paper | Official


def test_resume_skips_finished_images_and_gives_the_same_csv(first_run, tiny_clip, tmp_path, capsys):
    src, _ = first_run
    out = tmp_path / "out"
    shutil.copytree(src, out)
    before = {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")}
    csv_before = (out / "scores.csv").read_bytes()

    run_json = (out / "run.json").read_text()
    assert '"model": "tiny-random"' in run_json
    args = [*RUN_ARGS, "--no-progress", "--out", str(out), "--no-fail", "--clip", str(tiny_clip)]
    assert cli.main(args) == 0
    assert "12 images planned: 12 already on disk (skipped), 0 to generate" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")} == before
    assert (out / "scores.csv").read_bytes() == csv_before

    # An image lost (an interrupted run): only that one is made again, identically.
    lost = out / "images/animals/001/seed00001-official.png"
    original = np.asarray(Image.open(lost))
    lost.unlink()
    assert cli.main(args) == 0
    assert "12 images planned: 11 already on disk (skipped), 1 to generate" in capsys.readouterr().out
    assert np.array_equal(np.asarray(Image.open(lost)), original)
    assert (out / "scores.csv").read_bytes() == csv_before


def test_resuming_with_other_settings_is_refused(first_run, tiny_clip, tmp_path, capsys):
    src, _ = first_run
    out = tmp_path / "out"
    shutil.copytree(src, out)
    args = [*RUN_ARGS, "--no-progress", "--out", str(out), "--clip", str(tiny_clip), "--steps", "3"]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert "other settings" in err and "steps" in err


def test_t_sam_doing_worse_fails_the_command(first_run, tiny_clip, tmp_path, capsys, monkeypatch):
    """Injected scores: the Paper preset 0.02 below plain SD on both prompts (paired SE 0), the Official preset
    0.01 above: exit 3 naming the Paper preset only; --no-fail reports it and exits 0."""
    src, _ = first_run
    out = tmp_path / "out"
    shutil.copytree(src, out)
    shift = {"plain": 0.0, "paper": -0.02, "official": 0.01}

    def injected(jobs, out_, scorer, batch=64):
        rows = []
        for j in jobs:
            v = 0.30 + 0.01 * j.index + 0.001 * j.seed + shift[j.method.key]
            rows.append(ScoredImage(Score(j.set_name, j.index, j.seed, j.method.key, v, v - 0.05), j.prompt,
                                    ("a x", "a y"), (v - 0.05, v), "img.png"))
        return rows

    monkeypatch.setattr(cli, "score_images", injected)
    args = [*RUN_ARGS, "--no-progress", "--out", str(out), "--clip", str(tiny_clip)]
    assert cli.main(args) == cli.EXIT_WORSE
    captured = capsys.readouterr()
    assert "FAIL: T-SAM is worse than plain SD in 2 comparison(s)" in captured.err
    worse = [line for line in captured.out.splitlines() if line.startswith("WORSE:")]
    assert len(worse) == 2 and all("T-SAM Paper on animals" in line for line in worse)
    report = (out / "report.md").read_text()
    assert report.count("**worse**") == 2 and "+0.0100" in report

    assert cli.main([*args, "--no-fail"]) == 0
    assert "exiting 0 because of --no-fail" in capsys.readouterr().err


def test_sampling_equals_the_standalone_pipeline(tiny_model):
    """The evaluation's settings (size, steps, sampler, CFG, the A&E setup's empty negative prompt) reach
    standalone.pipeline.generate as the demo's own call gives them: the same image."""
    torch.set_num_threads(1)
    from evaluation.runner import GenerationSettings, sample
    from lib_align.config import AlignConfig
    from standalone.pipeline import generate

    settings = GenerationSettings(model="tiny-random", steps=2, width=64, height=64)
    for config in (None, AlignConfig.official()):  # plain, and the preset that uses every part of the session
        ours = sample(tiny_model, "a cat and a dog", config, settings, seed=3, device=torch.device("cpu"))
        theirs = generate(tiny_model, "a cat and a dog", config, steps=2, width=64, height=64, seed=3).image
        assert np.array_equal(np.asarray(ours), np.asarray(theirs))
