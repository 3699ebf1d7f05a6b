"""T-SAM beside the extensions people run with it: never silent, never wrong.

ControlNet (sd-webui-controlnet) replaces the UNet's forward and runs its encoder without gradient
(`tests/host/controlnet_hook.py` mirrors scripts/hook.py). The rule (lib_align/own_blocks.py): the maps T-SAM reads
are those of the model that makes the image, residuals included, and the gradient runs through the UNet's own
blocks with the residuals constant. The gradient oracle below is written from hook.py's forward, not from our code:
the same forward with the encoder outside no_grad and the residuals detached.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "host"))

import standin  # noqa: E402
from controlnet_hook import ControlNetHook, ControlNetScript, Unit  # noqa: E402
from fixtures import *  # noqa: E402, F403 — pytest fixtures
from fixtures import assert_normal  # noqa: E402
from ldm.modules.diffusionmodules.util import timestep_embedding  # noqa: E402

from lib_align.capture import CrossAttentionCapture  # noqa: E402
from lib_align.own_blocks import replaced_forward, through_own_blocks  # noqa: E402

PROMPT = standin.DEFAULT_PROMPT
BASE = dict(steps=6, width=128, height=128, seed=1)
STRONG = {"step_size": 40.0}


def reference_forward(unet, control_model, weight, x, t, context):
    """hook.py's forward with the residuals as constants and the encoder differentiable: the oracle of the rule."""
    with torch.no_grad():
        control = [c * weight for c in control_model(x=x, hint=None, timesteps=t, context=context)]
    emb = unet.time_embed(timestep_embedding(t, unet.model_channels, repeat_only=False))
    hs, h = [], x
    for module in unet.input_blocks:
        h = module(h, emb, context)
        hs.append(h)
    h = unet.middle_block(h, emb, context) + control.pop()
    for module in unet.output_blocks:
        h = module(torch.cat([h, hs.pop() + control.pop()], dim=1), emb, context)
    return unet.out(h)


@pytest.fixture
def hooked(tiny_model):
    unet = tiny_model.unet
    hook = ControlNetHook([Unit(weight=1.0)])
    hook.hook(unet)
    try:
        yield unet, hook
    finally:
        hook.restore(unet)


def context_dim(unet) -> int:
    return next(m.to_k.in_features for n, m in unet.named_modules() if n.endswith("attn2"))


def maps_and_grad(unet, forward_of, z, t, ctx, own_blocks: bool):
    capture = CrossAttentionCapture(unet, (z.shape[-2], z.shape[-1]), 4, stop_early=True)
    z = z.detach().requires_grad_(True)
    with capture, torch.enable_grad():
        if own_blocks:
            maps = capture.run(lambda: through_own_blocks(unet, capture.layers[-1].module, lambda: forward_of(z),
                                                          capture.paused))
        else:
            maps = capture.run(lambda: forward_of(z))
        loss = maps[..., 1:8].pow(2).sum()
        grad = torch.autograd.grad(loss, [z], allow_unused=True)[0]
    return maps.detach(), grad


def test_through_controlnets_forward_the_gradient_is_the_constant_residual_one(hooked):
    unet, hook = hooked
    g = torch.Generator().manual_seed(0)
    z, t = torch.randn(2, 4, 16, 16, generator=g), torch.tensor([500, 500])
    ctx = torch.randn(2, 77, context_dim(unet), generator=g)
    assert replaced_forward(unet) is not None
    control_model = hook.control_models[id(unet)]
    # Through ControlNet's own forward: its no_grad encoder cuts most of the latent's gradient off.
    cn_maps, cn_grad = maps_and_grad(unet, lambda z_: unet(z_, t, context=ctx), z, t, ctx, own_blocks=False)
    ref_maps, ref_grad = maps_and_grad(unet, lambda z_: reference_forward(unet, control_model, 1.0, z_, t, ctx),
                                       z, t, ctx, own_blocks=False)
    ours_maps, ours_grad = maps_and_grad(unet, lambda z_: unet(z_, t, context=ctx), z, t, ctx, own_blocks=True)
    torch.testing.assert_close(ours_maps, cn_maps, rtol=0, atol=0)  # the maps of the model that makes the image
    torch.testing.assert_close(ours_maps, ref_maps, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ours_grad, ref_grad, rtol=1e-4, atol=1e-9)
    assert (cn_grad - ref_grad).abs().max() > 0.1 * ref_grad.abs().max()  # what it was before: another gradient
    assert replaced_forward(unet) is not None  # ControlNet's forward is back in place


def test_weight_zero_gives_exactly_the_plain_unets_maps_and_gradient(tiny_model):
    unet = tiny_model.unet
    g = torch.Generator().manual_seed(0)
    z, t = torch.randn(1, 4, 16, 16, generator=g), torch.tensor([700])
    ctx = torch.randn(1, 77, context_dim(unet), generator=g)
    plain = maps_and_grad(unet, lambda z_: unet(z_, t, context=ctx), z, t, ctx, own_blocks=False)
    hook = ControlNetHook([Unit(weight=0.0)])
    hook.hook(unet)
    try:
        cut = maps_and_grad(unet, lambda z_: unet(z_, t, context=ctx), z, t, ctx, own_blocks=False)
        ours = maps_and_grad(unet, lambda z_: unet(z_, t, context=ctx), z, t, ctx, own_blocks=True)
    finally:
        hook.restore(unet)
    assert cut[1] is None or not bool(cut[1].any())  # the measurement: gradient 0.0 through ControlNet
    assert torch.equal(ours[0], plain[0]) and torch.equal(ours[1], plain[1])


# -- in the host ---------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def installed(host, script, where: str = "alwayson_scripts"):
    """Another extension's script in the host's runner for the duration (no arguments of its own)."""
    script.args_from = script.args_to = len(host.runner.inputs)
    getattr(host.runner, where).append(script)
    try:
        yield script
    finally:
        getattr(host.runner, where).remove(script)


@pytest.fixture
def controlnet(host, tiny_model):
    with installed(host, ControlNetScript(tiny_model.unet)) as script:
        yield script
    assert replaced_forward(tiny_model.unet) is None


def test_controlnet_weight_zero_gives_the_same_tsam_image_as_no_unit(host, jobs, controlnet):
    without, _ = host.txt2img(PROMPT, tsam=STRONG, **BASE)
    controlnet.units = [Unit(weight=0.0)]
    with_unit, _ = host.txt2img(PROMPT, tsam=STRONG, **BASE)
    controlnet.units = [Unit(weight=0.0)]
    off, _ = host.txt2img(PROMPT, **BASE)
    assert torch.equal(with_unit.samples, without.samples)
    assert not torch.equal(with_unit.samples, off.samples)  # T-SAM did act
    assert with_unit.infotexts[0] == without.infotexts[0] and "T-SAM note" not in with_unit.infotexts[0]
    assert [r.loss_before for r in jobs[1].reports] == [r.loss_before for r in jobs[0].reports]


def test_controlnet_at_weight_one_every_step_gets_a_gradient_through_the_unet(host, jobs, controlnet):
    controlnet.units = [Unit(weight=1.0)]
    res, _ = host.txt2img(PROMPT, tsam=STRONG, **BASE)
    assert_normal(res, 1, 128, 128)
    reports = jobs[-1].reports
    assert len(reports) == 3 and all(r.iterations == 1 and not r.no_gradient for r in reports)
    assert "T-SAM preset: Paper" in res.infotexts[0] and "T-SAM note" not in res.infotexts[0]


def test_controlnet_with_the_low_memory_mode_gives_the_same_updates(host, jobs, controlnet):
    """Checkpointed blocks recompute their forward in the backward: the blocks' substituted inputs must be what they
    recompute from (the loss and the image as without the mode, within float tolerance)."""
    controlnet.units = [Unit(weight=1.0)]
    normal, _ = host.txt2img(PROMPT, tsam=STRONG, **BASE)
    low, _ = host.txt2img(PROMPT, tsam={**STRONG, "low_memory": True}, **BASE)
    for a, b in zip(jobs[0].reports, jobs[1].reports, strict=True):
        assert b.iterations == a.iterations == 1
        torch.testing.assert_close(torch.tensor(b.loss_before), torch.tensor(a.loss_before), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(low.samples, normal.samples, rtol=1e-4, atol=1e-4)


def test_controlnet_guidance_start_half_leaves_no_step_without_gradient(host, jobs, controlnet):
    controlnet.units = [Unit(weight=1.0, guidance_start=0.5)]
    res, _ = host.txt2img(PROMPT, tsam={**STRONG, "steps_fraction": 1.0}, **BASE)
    reports = jobs[-1].reports
    assert len(reports) == 6 and not any(r.no_gradient for r in reports)
    assert "no gradient" not in res.infotexts[0]


def test_a_forward_without_any_gradient_is_reported_not_claimed(host, jobs, tiny_model, monkeypatch):
    """An extension whose UNet call keeps no graph at all (not one T-SAM can go around): the infotext says so."""
    original = type(tiny_model).apply_model

    def no_grad_apply(self, *args, **kwargs):
        with torch.no_grad():
            return original(self, *args, **kwargs)

    monkeypatch.setattr(type(tiny_model), "apply_model", no_grad_apply)
    res, _ = host.txt2img(PROMPT, tsam=STRONG, **BASE)
    assert_normal(res, 1, 128, 128)
    assert "T-SAM preset" not in res.infotexts[0]
    assert "skipped (the latent's gradient did not reach T-SAM's attention maps" in res.infotexts[0]
    assert "the latent's gradient did not reach T-SAM's attention maps" in res.comments
    assert all(r.no_gradient and r.iterations == 0 for r in jobs[-1].reports)


def test_some_steps_without_gradient_are_noted_beside_the_settings(host, jobs, tiny_model, monkeypatch):
    original = type(tiny_model).apply_model
    calls = []

    def second_step_without_grad(self, x, t, cond):
        if torch.is_grad_enabled():
            calls.append(1)
            if len(calls) == 2:
                with torch.no_grad():
                    return original(self, x, t, cond)
        return original(self, x, t, cond)

    monkeypatch.setattr(type(tiny_model), "apply_model", second_step_without_grad)
    res, _ = host.txt2img(PROMPT, tsam=STRONG, **BASE)
    assert "T-SAM preset: Paper" in res.infotexts[0]
    assert "T-SAM note: step 2 unchanged (no gradient)" in res.infotexts[0], res.infotexts[0]


# -- Regional Prompter (Attention mode) ------------------------------------------------------------------------------


@pytest.fixture
def regional(host, tiny_model):
    from regional_prompter import RegionalPrompterScript

    script = RegionalPrompterScript(tiny_model.unet)
    try:
        with installed(host, script):
            yield script
    finally:
        script.unhook()


def test_regional_prompter_attention_mode_is_refused_in_one_line(host, jobs, regional):
    """As found in the real A1111: `a black car BREAK a white clock` in Attention mode aligned the first chunk's T
    with the second region's maps. Now: detected (a second key set in one attention call), one line, a normal image,
    the infotext says T-SAM was skipped — and the image is the one Regional Prompter makes without T-SAM."""
    regional.active = True
    prompt = "a black car BREAK a white clock"
    plain, _ = host.txt2img(prompt, **BASE)
    res, _ = host.txt2img(prompt, tsam=STRONG, **BASE)
    assert_normal(res, 1, 128, 128)
    assert torch.equal(res.samples, plain.samples)
    assert "T-SAM preset" not in res.infotexts[0]
    assert "skipped (another extension computes the cross-attention in several parts" in res.infotexts[0]
    lines = [c for c in res.comments.splitlines() if "several parts" in c]
    assert len(lines) == 1


def test_regional_prompter_installed_but_off_changes_nothing(host, jobs, regional):
    res, _ = host.txt2img("a black car BREAK a white clock", tsam=STRONG, **BASE)
    assert "T-SAM preset: Paper" in res.infotexts[0] and jobs[-1].reports


def test_maps_narrower_than_the_prompts_chunks_are_an_error_not_an_empty_slice():
    from lib_align.capture import NotAlignable
    from lib_align.loss import token_maps

    with pytest.raises(NotAlignable, match="sees 77 context tokens, fewer than the prompt's 81"):
        token_maps(torch.rand(4, 4, 77), 3, offset=77)


# -- Show attention beside a selectable script -----------------------------------------------------------------------


@pytest.fixture
def prompt_matrix(host):
    from prompt_matrix import PromptMatrixScript

    with installed(host, PromptMatrixScript(), "selectable_scripts") as script:
        yield script


def test_prompt_matrix_with_show_attention_makes_its_grid_and_says_why_no_pictures(host, jobs, prompt_matrix):
    """As found in the real A1111: Prompt matrix (two prompts) + Show attention was an AssertionError (HTTP 500) in the
    script's grid, because the pictures were appended to the images it counts."""
    args = host.args({**STRONG, "show_attention": True})
    args[0] = 1  # the selectable script's index + 1, as the host's dropdown sets it
    res, _ = host.txt2img("a black car|a white clock", script_args=args, **BASE)
    assert res.index_of_first_image == 1 and len(res.images) == 1 + 2  # the grid, then its two images
    assert "Show attention adds no pictures while a script" in res.comments
    assert all(job.show is False for job in jobs) and jobs and all(job.reports for job in jobs)
    assert "T-SAM preset: Paper" in res.infotexts[1]


def test_without_a_script_show_attention_still_adds_its_pictures(host, jobs, prompt_matrix):
    res, _ = host.txt2img(PROMPT, tsam={**STRONG, "show_attention": True}, **BASE)
    assert len(res.images) == 1 + 3 and "adds no pictures" not in res.comments


def test_xyz_cells_with_show_attention_say_why_no_pictures(host, jobs):
    args = host.args({**STRONG, "show_attention": True})
    args[0] = 1  # X/Y/Z selected: its cells are copies of p with the same script args
    p = host.make_p(script_args=args, **BASE)
    cells = host.xyz.run_cells(p, "T-SAM strength", ["20"])
    (_, res), = cells
    assert len(res.images) == 1 and "Show attention adds no pictures while a script" in res.comments
