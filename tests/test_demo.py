"""The demo command, end to end, as a user runs it (small size, few steps)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


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
