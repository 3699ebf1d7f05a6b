"""The cost cuts change nothing but the cost: early stop, the reused refinement evaluation and the memory mode give
the same losses, gradients and latents as the straightforward pass; the benchmark's code path runs (timings are
measured by `python -m bench`, never asserted here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch

from lib_align.capture import CrossAttentionCapture, attention_probs, checkpointed_blocks
from lib_align.config import AlignConfig
from lib_align.optimizer import LatentOptimizer, StepReport, loss_and_grad
from lib_align.session import AlignSession
from lib_align.text import tokenize_chunks
from standalone.models import import_k_diffusion
from standalone.pipeline import encode, generate, prompt_targets, standalone_family

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "a black car and a white clock"
HW = (16, 16)


@pytest.fixture(scope="module")
def setting(tiny_model):
    """The prompt's targets, its cond and a noisy latent at the first of 10 steps."""
    chunks, targets = prompt_targets(tiny_model, PROMPT, AlignConfig.official().power)
    cond = encode(tiny_model, chunks)
    kd = import_k_diffusion()
    denoiser = kd.external.CompVisDenoiser(tiny_model)
    sigma = denoiser.get_sigmas(10)[:1]
    x = torch.randn((1, 4, *HW), generator=torch.Generator().manual_seed(1)) * sigma
    return dict(targets=targets, cond=cond, denoiser=denoiser, sigma=sigma, x=x)


def session(model, setting, config=None, stop_early=True, steps=10):
    config = config or AlignConfig.official()
    return AlignSession(model.unet, model.apply_model, [setting["targets"]], config, steps, HW, stop_early=stop_early)


def loss_grad(model, setting, stop_early=True, low_memory=False):
    """Loss and gradient at the setting's latent, through the session's own loss (one image)."""
    s = session(model, setting, AlignConfig.official(low_memory=low_memory), stop_early)
    c_in = 1 / (setting["sigma"] ** 2 + 1).sqrt()
    t = setting["denoiser"].sigma_to_t(setting["sigma"])
    with CrossAttentionCapture(model.unet, HW, stop_early=stop_early) as capture:
        modes = checkpointed_blocks(model.unet, capture) if low_memory else _nothing()
        with modes as wrapped:
            if low_memory:
                assert wrapped > 0

            def loss_fn(z):
                return s.losses(capture.run(lambda: model.apply_model(z, t, setting["cond"])))

            return loss_and_grad(setting["x"] * c_in, loss_fn)


class _nothing:
    def __enter__(self):
        return 0

    def __exit__(self, *exc):
        return None


def hooks_and_forwards(unet):
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in unet.modules())
    own_forwards = sum("forward" in m.__dict__ for m in unet.modules())
    return hooks, own_forwards


# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_early_stop_gives_the_loss_and_gradient_of_the_full_forward(tiny_model, setting):
    full_loss, full_grad = loss_grad(tiny_model, setting, stop_early=False)
    early_loss, early_grad = loss_grad(tiny_model, setting, stop_early=True)
    assert full_grad is not None and float(full_grad.abs().max()) > 0
    torch.testing.assert_close(early_loss, full_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(early_grad, full_grad, rtol=1e-4, atol=1e-7)


@pytest.mark.slow
def test_optimised_session_gives_the_latent_of_the_unoptimised_one(tiny_model, setting):
    """Early stop and frozen weights (the defaults) vs the full forward with the weights requiring grad."""
    out = {}
    for optimised in (True, False):
        s = session(tiny_model, setting, AlignConfig.paper(), stop_early=optimised)
        s.freeze_weights = optimised
        with torch.no_grad():
            out[optimised], _ = s.update_sigma_space(setting["x"], setting["sigma"], setting["cond"], 0,
                                                     setting["denoiser"].sigma_to_t)
    assert not torch.equal(out[True], setting["x"])
    torch.testing.assert_close(out[True], out[False], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_weights_require_grad_again_after_the_pass_even_when_it_fails(tiny_model, setting):
    params = list(tiny_model.unet.parameters())
    assert all(p.requires_grad for p in params)
    s = session(tiny_model, setting, AlignConfig.paper())
    seen = []

    def failing(maps):
        seen.append(any(p.requires_grad for p in params))
        raise RuntimeError("boom")

    s.losses = failing
    with pytest.raises(RuntimeError, match="boom"), torch.no_grad():
        s.update_sigma_space(setting["x"], setting["sigma"], setting["cond"], 0, setting["denoiser"].sigma_to_t)
    assert seen == [False]  # frozen during the pass
    assert all(p.requires_grad for p in params)


@pytest.mark.slow
def test_memory_mode_gives_the_same_gradient_and_restores_the_unet(tiny_model, setting):
    before = hooks_and_forwards(tiny_model.unet)
    loss, grad = loss_grad(tiny_model, setting, low_memory=False)
    ck_loss, ck_grad = loss_grad(tiny_model, setting, low_memory=True)
    assert hooks_and_forwards(tiny_model.unet) == before
    torch.testing.assert_close(ck_loss, loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ck_grad, grad, rtol=1e-4, atol=1e-7)


@pytest.mark.slow
def test_memory_mode_session_gives_the_same_latent_with_and_without_early_stop(tiny_model, setting):
    out = {}
    before = hooks_and_forwards(tiny_model.unet)
    for low_memory, stop_early in ((False, True), (True, True), (True, False)):
        s = session(tiny_model, setting, AlignConfig.paper(low_memory=low_memory), stop_early)
        with torch.no_grad():
            out[low_memory, stop_early], _ = s.update_sigma_space(
                setting["x"], setting["sigma"], setting["cond"], 0, setting["denoiser"].sigma_to_t)
    assert hooks_and_forwards(tiny_model.unet) == before
    torch.testing.assert_close(out[True, True], out[False, True], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[True, False], out[False, True], rtol=1e-5, atol=1e-6)


def test_memory_mode_restores_the_unet_when_the_pass_fails(tiny_model, setting):
    before = hooks_and_forwards(tiny_model.unet)
    with pytest.raises(RuntimeError, match="boom"):
        with CrossAttentionCapture(tiny_model.unet, HW) as capture, checkpointed_blocks(tiny_model.unet, capture):
            raise RuntimeError("boom")
    assert hooks_and_forwards(tiny_model.unet) == before


# -- the refinement no longer evaluates the converged latent twice -----------------------------------------------


class PreviousOptimizer(LatentOptimizer):
    """LatentOptimizer.step as it was before: the regular update re-evaluates z after every refinement loop."""

    def step(self, z, step, loss_fn, threshold=None, on_iteration=None, measure_after=False):
        cfg = self.config
        alpha = cfg.step_size_at(step, self.total_steps)
        report = StepReport(step=step, step_size=alpha)
        z = z.detach()
        if step in self.refine_steps:
            for _ in range(cfg.refine_iters):
                losses, grad = loss_and_grad(z, loss_fn)
                if not report.loss_before:
                    report.loss_before = losses.tolist()
                if grad is None:
                    break
                pending = torch.ones_like(losses, dtype=torch.bool)
                if threshold is not None:
                    pending = losses > threshold.to(losses.device)
                if not bool(pending.any()):
                    break
                z = self._update(z, grad, losses, alpha, report, mask=pending)
                report.iterations += 1
        losses, grad = loss_and_grad(z, loss_fn)
        if not report.loss_before:
            report.loss_before = losses.tolist()
        if grad is not None:
            z = self._update(z, grad, losses, alpha, report)
            report.iterations += 1
        return z, report


def counted(loss_fn, calls):
    def fn(z):
        calls.append(1)
        return loss_fn(z)

    return fn


def test_refinement_that_converges_reuses_its_last_evaluation_with_the_same_result():
    """A quadratic loss falling by a known factor per update: the loop converges after exactly 3 updates."""
    config = AlignConfig.official(refine="while above", refine_iters=10, step_size=0.25, step_decay=1.0)
    z0 = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(0))

    def loss_fn(z):
        return (z**2).flatten(1).sum(1)

    start = loss_fn(z0)
    threshold = start * 0.5**6 * 1.01  # each update halves z (alpha 0.25, grad 2z): losses fall by 4x per update
    results = {}
    for name, cls in (("new", LatentOptimizer), ("previous", PreviousOptimizer)):
        calls: list[int] = []
        z, report = cls(config, 10).step(z0, 0, counted(loss_fn, calls), threshold)
        results[name] = (z, report, len(calls))
    (z_new, rep_new, calls_new), (z_old, rep_old, calls_old) = results["new"], results["previous"]
    torch.testing.assert_close(z_new, z_old, rtol=0, atol=0)
    assert rep_new.iterations == rep_old.iterations == 4  # 3 refinement updates + the regular one
    assert rep_new.loss_before == rep_old.loss_before
    assert (calls_new, calls_old) == (4, 5)


def test_refinement_without_convergence_still_evaluates_the_refined_latent():
    config = AlignConfig.official(refine="while above", refine_iters=3, step_size=0.25)
    z0 = torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(2))
    calls_new: list[int] = []
    calls_old: list[int] = []

    def loss_fn(z):
        return (z**2).flatten(1).sum(1)

    z_new, _ = LatentOptimizer(config, 10).step(z0, 0, counted(loss_fn, calls_new), torch.tensor([-1.0]))
    z_old, _ = PreviousOptimizer(config, 10).step(z0, 0, counted(loss_fn, calls_old), torch.tensor([-1.0]))
    torch.testing.assert_close(z_new, z_old, rtol=0, atol=0)
    assert len(calls_new) == len(calls_old) == 4  # capped: the regular update needs the refined z's gradient


@pytest.mark.slow
def test_refinement_on_the_unet_gives_the_previous_latent_with_one_pass_less(tiny_model, setting):
    """On the tiny UNet, with the threshold set where the loop converges after a few updates."""
    probe = session(tiny_model, setting, AlignConfig.official(refine="while above", refine_iters=4))
    probe.thresholds = torch.tensor([-1.0])  # never converges: record the loss at each evaluation
    seen: list[float] = []
    sigma_to_t = setting["denoiser"].sigma_to_t
    losses = probe.losses

    def recording(maps):
        value = losses(maps)
        seen.append(float(value[0].detach()))
        return value

    probe.losses = recording
    with torch.no_grad():
        probe.update_sigma_space(setting["x"], setting["sigma"], setting["cond"], 0, sigma_to_t)
    threshold = min(seen[:4])  # the loop stops at the first evaluation reaching this loss
    out = {}
    for name, cls in (("new", LatentOptimizer), ("previous", PreviousOptimizer)):
        s = session(tiny_model, setting, AlignConfig.official(refine="while above", refine_iters=4))
        s.optimizer = cls(s.config, 10)
        s.thresholds = torch.tensor([threshold])
        calls: list[int] = []
        s.losses = counted(s.losses, calls)
        with torch.no_grad():
            z, report = s.update_sigma_space(setting["x"], setting["sigma"], setting["cond"], 0, sigma_to_t)
        out[name] = (z, report, len(calls))
    torch.testing.assert_close(out["new"][0], out["previous"][0], rtol=1e-6, atol=1e-6)
    assert out["new"][1].iterations == out["previous"][1].iterations
    assert out["new"][1].iterations >= 2  # the loop moved z before converging: the reused evaluation is a new z
    assert out["new"][2] == out["previous"][2] - 1


# -- the memory mode's setting -------------------------------------------------------------------------------------


def test_memory_mode_is_the_last_setting_so_older_argument_vectors_still_read():
    fields = AlignConfig.settings()
    assert fields[-1].name == "low_memory" and fields[-1].default == "auto"
    older = AlignConfig.official().to_args()[:-1]  # an API call or saved args from before the setting existed
    assert AlignConfig.from_args(older) == AlignConfig.official()
    assert AlignConfig.from_args([*older, True]).low_memory == "on"  # the checkbox it was: True = checkpointing
    assert AlignConfig.from_args([*older, False]).low_memory == "off"
    assert AlignConfig.from_infotext(AlignConfig.paper(low_memory=True).infotext()).low_memory == "on"


@pytest.mark.parametrize(("params", "mode"), [
    ({"T-SAM low memory": "True"}, "on"), ({"T-SAM low memory": "False"}, "off"),
    ({"T-SAM memory": "auto → low"}, "auto"), ({"T-SAM memory": "on"}, "on"), ({}, "auto")])
def test_old_and_new_infotexts_of_the_memory_mode_paste(params, mode):
    """Before the modes the setting was a checkbox written as `T-SAM low memory: True/False`; now `T-SAM memory`
    holds the mode and, for auto, what ran after an arrow."""
    assert AlignConfig.from_infotext({"T-SAM preset": "Paper", **params}).low_memory == mode


# -- precision -----------------------------------------------------------------------------------------------------


def test_maps_and_loss_stay_fp32_under_the_hosts_autocast(tiny_model, setting):
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(1, 16, 64, generator=g), torch.randn(1, 77, 64, generator=g)
    reference = attention_probs(q, k, 4, 0.25)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        probs = attention_probs(q, k, 4, 0.25)
    assert probs.dtype == torch.float32
    torch.testing.assert_close(probs, reference)
    s = session(tiny_model, setting)
    maps = reference.reshape(1, 4, 4, 77)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = s.losses(maps)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, s.losses(maps))


# -- the benchmark -------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_bench_sampling_is_the_pipelines(tiny_model):
    from bench.workload import Workload

    work = Workload(tiny_model, size=(128, 128), device=torch.device("cpu"), dtype=torch.float32, prompt=PROMPT)
    for config in (None, AlignConfig.paper()):
        ours = work.sample(config, 3).latent
        theirs = generate(tiny_model, PROMPT, config, steps=3, width=128, height=128, seed=0, measure_after=False,
                          decode=False).latent
        torch.testing.assert_close(ours, theirs)
    plain = work.sample(AlignConfig.official(), 3).latent
    reference = work.sample(AlignConfig.official(), 3, reference=True).latent
    torch.testing.assert_close(reference, plain, rtol=1e-4, atol=1e-5)
    chunks, _ = tokenize_chunks(tiny_model.cond_stage_model.tokenizer, PROMPT)
    assert chunks.shape == (1, 77)


@pytest.mark.slow
def test_bench_smoke_prints_every_figure_as_json():
    """On a torch that cannot count on the meta device (the hosts' 2.1.2 and 2.3.1) the benchmark refuses up front:
    one line on stderr, nothing on stdout, exit status 2."""
    from refusals import expected_refusal

    from bench.memory import NEEDS as MEMORY_NEEDS
    from bench.needs import FLOP_FORMULAS

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "bench", "--smoke"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1800)  # a hang guard, not a target: 18 min on shared cores
    refusal = expected_refusal("bench", FLOP_FORMULAS, *MEMORY_NEEDS)
    if refusal:
        assert (done.returncode, done.stdout, done.stderr) == (2, "", refusal + "\n")
        return
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    required = {"iteration_vs_full", "iteration_vs_plain_step", "paper_total_vs_plain", "official_total_vs_plain",
                "reference_total_vs_plain", "off_overhead", "peak_mem_ratio",
                "sdxl_iteration_vs_plain_step", "sdxl_off_overhead", "sdxl_peak_mem_ratio",
                "sdxl_iteration_flops_vs_plain_step", "iteration_flops_vs_plain_step_sd1_512",
                "sdxl_1024_iteration_tflop", "sdxl_1024_plain_step_tflop"}
    assert required <= set(figures)
    assert all(isinstance(figures[k], float) and figures[k] > 0 for k in required)
    assert "torch_threads: " in done.stdout
    # The SDXL row ran the tiny SDXL (smoke) through the SDXL family's path: dict cond, stand-in HostModelSDXL.
    assert figures["sdxl_model"] == "tiny"
    assert "HostModelSDXL" in done.stdout
    # FLOPs at the native sizes are counted on the meta device in every mode: the full-size UNets' figures.
    assert figures["sd1_512_plain_step_tflop"] > 1.0  # the full-size UNet's (the tiny model's is ~1000x smaller)
    assert figures["sdxl_1024_plain_step_tflop"] > 5 * figures["sd1_512_plain_step_tflop"]
    for key in ("sdxl_iteration_vs_plain_step", "sdxl_off_overhead", "sdxl_peak_mem_ratio",
                "sdxl_iteration_flops_vs_plain_step"):
        assert any(line.lstrip().startswith(key) and "target <=" in line for line in done.stdout.splitlines()), key


@pytest.mark.slow
def test_flops_are_torchs_formulas_called_as_each_torch_calls_them(tiny_model):
    """bench/flops.py calls torch's FLOP formulas as the running torch's own FlopCounterMode does (their calling
    convention moved: 2.1 shapes and `out_shape=`, 2.2-2.3 `out=`, 2.4 on `out_val=`): the counts are the same under
    the hosts' torch and CI's, to the FLOP (observed under 2.1.2, 2.3.1 and 2.13). Full-size SD1 at 512² on the meta
    device (the pass without the memory mode, which needs checkpoint on the meta device, and the plain CFG step), and
    the tiny model's memory-mode pass on the CPU."""
    from bench.flops import count_flops
    from bench.memory import host_attention
    from bench.passes import NATIVE_SIDE, full_size_family, meta_autocast, pass_calls

    calls = full_size_family("SD1").calls(NATIVE_SIDE["SD1"])
    with meta_autocast(), host_attention("split"):
        assert count_flops(partial(calls.run_pass, False)) == 842_885_341_696
        assert count_flops(calls.plain_step) == 1_606_546_882_560
    family = standalone_family(tiny_model)
    unet = tiny_model.model.diffusion_model
    chunks, words = family.tokenize(PROMPT)
    tiny = pass_calls(unet, lambda z, t, c: unet(z, t, context=c), torch.randn(1, 77, 64),
                      family.targets(chunks, words, 1.0), family.layout_level, (32, 32))
    assert count_flops(partial(tiny.run_pass, True)) == 3_876_931_712


@pytest.mark.slow
def test_bench_sdxl_workload_is_the_pipelines_sdxl_path():
    """The SDXL row's plain step is the demo's CFG call and its iteration the session's update, on a dict cond."""
    from bench.workload import sdxl_workload

    work = sdxl_workload("tiny", (64, 64), torch.device("cpu"), torch.float32, prompt=PROMPT)
    assert set(work.cond) == {"crossattn", "vector"} and work.level == 4
    report = work.iteration()
    assert report.iterations == 1 and report.loss_before[0] > 0
    work.plain_step()
