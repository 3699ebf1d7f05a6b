"""The demo command, end to end, as a user runs it (small size, few steps)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.slow  # the command end to end, as a user runs it

ROOT = Path(__file__).resolve().parents[2]


def run_demo(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "standalone", "--out", str(tmp_path), "--steps", "6", "--size", "128x96",
           "--cpu-threads", "2", *extra]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_demo_writes_image_matrices_and_a_falling_loss(tmp_path):
    proc = run_demo(tmp_path, "--show-attention")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "random weights" in proc.stdout and "the image is noise" in proc.stdout
    for name in ("image.png", "T.png", "S_before.png", "S_after.png", "S_before_after.png", "token_maps.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert Image.open(tmp_path / "image.png").size == (128, 96)
    losses = json.loads((tmp_path / "loss.json").read_text())
    assert [e["step"] for e in losses] == [0, 1, 2]  # Paper preset: the first half of 6 steps
    for e in losses:
        assert e["loss_after"] < e["loss_before"], e
    # The summary judges each update at its own step, not step 0's loss against the last step's (other latents).
    assert "3 of 3 updates lowered the loss at their step (mean change -" in proc.stdout


def test_demo_official_preset_and_a_one_token_prompt(tmp_path):
    proc = run_demo(tmp_path / "official", "--preset", "Official code", "--steps", "5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = json.loads((tmp_path / "official" / "loss.json").read_text())
    assert [e["step"] for e in losses] == [0, 1, 2]  # 60 % of 5 steps
    proc = run_demo(tmp_path / "one", "--prompt", "car")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "nothing to optimise" in proc.stdout
    assert json.loads((tmp_path / "one" / "loss.json").read_text()) == []


def test_demo_rejects_a_bad_size(tmp_path):
    proc = run_demo(tmp_path, "--size", "100")
    assert proc.returncode != 0 and "multiples of 8" in proc.stderr


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_demo_runs_each_family_with_the_same_files_and_a_falling_loss(tmp_path, family):
    """SD2 (T from OpenCLIP's penultimate blocks) and SDXL (T from CLIP-L, dict cond) through the one pipeline."""
    proc = run_demo(tmp_path, "--family", family, "--steps", "4", "--show-attention")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"family: {family}" in proc.stdout
    assert "random weights" in proc.stdout and "the image is noise" in proc.stdout
    for name in ("image.png", "T.png", "S_before.png", "S_after.png", "S_before_after.png", "token_maps.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert Image.open(tmp_path / "image.png").size == (128, 96)
    losses = json.loads((tmp_path / "loss.json").read_text())
    assert [e["step"] for e in losses] == [0, 1]  # Paper preset: the first half of 4 steps
    for e in losses:
        assert e["loss_after"] < e["loss_before"], e


def test_demo_refuses_a_checkpoint_for_another_family(tmp_path):
    proc = run_demo(tmp_path, "--family", "sdxl", "--ckpt", "model.safetensors")
    assert proc.returncode != 0 and "--family sd1 only" in proc.stderr


@pytest.mark.parametrize(("args", "message"), [
    (("--ckpt", "missing.safetensors"), "--ckpt missing.safetensors: no such file"),
    (("--sampler", "ddim"), "argument --sampler: invalid choice: 'ddim'"),
    (("--strength", "500"), "Strength (step size) must be between 0.0 and 100.0, not 500.0"),
    (("--steps", "0"), "--steps 0: at least 1"),
])
def test_bad_arguments_answer_in_one_line_before_anything_is_built_or_written(tmp_path, args, message):
    """A missing checkpoint used to build the full-size model first (137 s, 4.4 GB) and a bad sampler to fail after
    the model was built, leaving an empty output folder."""
    out = tmp_path / "out"
    proc = run_demo(out, *args)
    assert proc.returncode != 0 and message in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()
    assert message in [line for line in proc.stderr.splitlines() if line.strip()][-1]  # the last line says it


def test_help_and_the_settings_import_no_torch():
    """`python -m standalone --help` answers without importing torch (it took 24 s on a loaded machine)."""
    code = ("import sys, contextlib, io\n"
            "import standalone.__main__ as demo\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "    demo.parse_args(['--help'])\n"
            "print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "False", proc.stderr[-2000:]
