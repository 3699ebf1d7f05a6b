"""Settings, schedules, and the latent update on a real (tiny) UNet."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lib_align import AlignConfig, AlignSession, LatentOptimizer
from standalone.pipeline import encode, prompt_targets

PROMPT = "a black car and a white clock"


# --- settings ------------------------------------------------------------------------------------------------


def test_presets_hold_the_published_values():
    paper = AlignConfig.paper()
    assert (paper.loss_form, paper.power, paper.step_size, paper.step_decay, paper.steps_fraction, paper.refine) == (
        "paper", 4.0, 10.0, 1.0, 0.5, "off")
    official = AlignConfig.official()
    assert (official.loss_form, official.power, official.step_size, official.step_decay, official.steps_fraction,
            official.refine, official.refine_iters) == ("official", 3.0, 5.0, 0.5, 0.6, "official", 30)
    assert AlignConfig() == paper


def test_schedules_at_50_steps_match_the_method():
    paper, official = AlignConfig.paper(), AlignConfig.official()
    assert paper.optimised_steps(50) == 25
    assert {paper.step_size_at(i, 50) for i in range(25)} == {10.0}
    assert paper.refinement_steps(50) == set()
    assert official.optimised_steps(50) == 30
    # The released code (pipeline_stable_diffusion_x_2.py, lines 1374-1375): scale_factor * sqrt(linspace(1.0, 0.5,
    # len(scheduler.timesteps))), and PNDM's 50-step schedule has 51 timesteps (diffusers PNDMScheduler repeats one).
    released = 5 * np.sqrt(np.linspace(1.0, 0.5, 51))
    assert [official.step_size_at(i, 50) for i in range(30)] == pytest.approx(released[:30].tolist(), rel=1e-12)
    assert official.step_size_at(29, 50) == pytest.approx(4.2131, abs=1e-4)
    assert official.refinement_steps(50) == {0, 10, 20}
    assert official.refinement_steps(20) == {0, 4, 8}


def test_args_dict_and_infotext_round_trip():
    cfg = AlignConfig.official(step_size=7.5, refine_iters=12)
    assert AlignConfig.from_args(cfg.to_args()) == cfg
    assert AlignConfig.from_args({"preset": "Official code", "step_size": 7.5, "T-SAM refine iters": "12"}) == cfg
    text = {k: str(v) for k, v in cfg.infotext().items()}  # infotext values come back as strings
    assert AlignConfig.from_infotext(text) == cfg
    assert all(k.startswith("T-SAM") and k.replace(" ", "").replace("-", "").isalnum() for k in cfg.infotext())
    # Missing trailing positional values keep the preset's defaults (the API fills from the constructor defaults).
    assert AlignConfig.from_args(["Official code"]) == AlignConfig.official()


@pytest.mark.parametrize(("bad", "message"), [
    ({"step_size": -1}, "Strength"),
    ({"loss_form": "mse"}, "Loss"),
    ({"power": "lots"}, "unreadable"),
    ({"refine_at": [0.5, 2]}, "fractions"),
    ({"nonsense": 1}, "unknown setting"),
    ({"preset": "Fast"}, "unknown preset"),
])
def test_bad_settings_are_clear_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        AlignConfig.from_args(bad)


# --- the update on a real UNet ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def setup(tiny_model):
    torch.manual_seed(0)
    chunks, targets = prompt_targets(tiny_model, PROMPT, 4.0)
    cond = encode(tiny_model, chunks)
    z = torch.randn(1, 4, 16, 16)
    return targets, cond, z


def make_session(model, targets, config, steps=10):
    return AlignSession(model.unet, model.apply_model, [targets], config, steps, (16, 16))


@pytest.mark.slow
def test_one_step_lowers_the_loss_and_only_the_latent_gets_a_gradient(tiny_model, setup):
    targets, cond, z = setup
    for p in tiny_model.parameters():
        p.grad = None
    z0 = z.clone()
    session = make_session(tiny_model, targets, AlignConfig.paper())
    t = torch.tensor([600.0])
    z_new, report = session.update(z, t, cond, step=0, measure_after=True)
    assert torch.equal(z, z0), "the input latent must not be modified in place"
    assert not torch.equal(z_new, z)
    assert report.iterations == 1
    assert report.loss_after[0] < report.loss_before[0]
    assert all(p.grad is None for p in tiny_model.parameters())
    assert all(p.requires_grad for p in tiny_model.parameters())  # as A1111 leaves them
    assert session.first_maps.shape == (1, 4, 4, 77)


def test_steps_outside_the_schedule_do_nothing(tiny_model, setup):
    targets, cond, z = setup
    session = make_session(tiny_model, targets, AlignConfig.paper(), steps=10)
    assert [session.is_active(i) for i in range(10)] == [True] * 5 + [False] * 5
    z_new, report = session.update(z, torch.tensor([300.0]), cond, step=5)
    assert report is None and z_new is z


@pytest.mark.slow
def test_nan_in_the_maps_leaves_that_latent_unchanged(tiny_model, setup):
    targets, cond, z = setup
    session = AlignSession(tiny_model.unet, tiny_model.apply_model, [targets, targets], AlignConfig.paper(), 10,
                           (16, 16))
    clean_losses = session.losses

    def poisoned(maps):
        maps = maps.clone()
        maps[0] = maps[0] * float("nan")  # image 0's maps are NaN, image 1's are fine
        return clean_losses(maps)

    session.losses = poisoned
    batch = torch.cat([z, z])
    z_new, report = session.update(batch, torch.tensor([600.0, 600.0]), torch.cat([cond, cond]), step=0)
    assert torch.equal(z_new[0], batch[0])
    assert not torch.equal(z_new[1], batch[1])
    assert torch.isfinite(z_new).all()
    assert report.skipped_rows == [0]


@pytest.mark.slow
def test_each_image_of_a_batch_uses_its_own_target(tiny_model, setup):
    targets, cond, z = setup
    _, other = prompt_targets(tiny_model, "a green apple on a wooden table", 4.0)
    t = torch.tensor([600.0])
    alone = [make_session(tiny_model, tg, AlignConfig.paper()).update(z, t, cond, 0)[0] for tg in (targets, other)]
    batch = AlignSession(tiny_model.unet, tiny_model.apply_model, [targets, other], AlignConfig.paper(), 10, (16, 16))
    together, _ = batch.update(torch.cat([z, z]), t.repeat(2), torch.cat([cond, cond]), 0)
    torch.testing.assert_close(together[0:1], alone[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(together[1:2], alone[1], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(together[0], together[1])


@pytest.mark.slow
def test_while_above_refinement_iterates_until_the_threshold_or_the_cap(tiny_model, setup):
    targets, cond, z = setup
    t = torch.tensor([600.0])
    seen = []
    rule = dict(refine="while above", refine_iters=3)
    capped = make_session(tiny_model, targets, AlignConfig.official(refine_threshold=0.0, **rule))
    _, report = capped.update(z, t, cond, 0, on_iteration=lambda i, n: seen.append((i, n)))
    assert report.iterations == 3 + 1  # three refinement iterations, then the regular update
    assert seen[-1] == (4, 4)
    met = make_session(tiny_model, targets, AlignConfig.official(refine_threshold=1.0, **rule))
    _, report = met.update(z, t, cond, 0)
    assert report.iterations == 1  # the loss is already below 1.0 * (L-1): only the regular update


def test_refinement_rule_is_a_setting_and_old_infotexts_keep_their_meaning():
    assert AlignConfig.from_args({"refine": "while above"}).refine == "while above"
    # Images made before the rule had a name carry "T-SAM refine: True", which then meant "while above".
    assert AlignConfig.from_infotext({"T-SAM preset": "Official code", "T-SAM refine": "True"}).refine == "while above"
    assert AlignConfig.from_infotext({"T-SAM refine": "False"}).refine == "off"
    with pytest.raises(ValueError, match="Iterative refinement must be one of off, official, while above"):
        AlignConfig.from_args({"refine": "sometimes"})


@pytest.mark.slow
def test_interrupt_from_the_progress_callback_propagates_and_leaves_no_hooks(tiny_model, setup):
    targets, cond, z = setup

    class Interrupted(BaseException):
        pass

    def stop(i, n):
        raise Interrupted

    before = sum(len(m._forward_hooks) for m in tiny_model.unet.modules())
    with pytest.raises(Interrupted):
        make_session(tiny_model, targets, AlignConfig.official()).update(z, torch.tensor([600.0]), cond, 0,
                                                                       on_iteration=stop)
    assert sum(len(m._forward_hooks) for m in tiny_model.unet.modules()) == before


def test_single_token_prompt_is_a_no_op_without_unet_calls(tiny_model, setup):
    _, cond, z = setup
    _, single = prompt_targets(tiny_model, "car", 4.0)
    session = make_session(tiny_model, single, AlignConfig.paper())
    calls = []
    session.apply_model = lambda *a: calls.append(1)
    z_new, report = session.update(z, torch.tensor([600.0]), cond, 0)
    assert z_new is z and report is None and calls == []


def test_optimizer_alone_with_a_synthetic_loss():
    opt = LatentOptimizer(AlignConfig.paper(step_size=0.5), total_steps=4)
    z = torch.tensor([[3.0, -2.0]])
    z_new, report = opt.step(z, 0, lambda v: (v**2).sum(dim=1))
    torch.testing.assert_close(z_new, z - 0.5 * 2 * z)  # z - alpha * grad
    assert report.loss_before == [13.0]
