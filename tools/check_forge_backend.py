"""T-SAM's gradient pass against the REAL Forge backend code (the tests use a stand-in; this uses Forge's own files).

Run it with a Python that can import a Forge checkout's `backend` (a Forge install's venv), from this repository:

    /path/to/forge/venv/bin/python tools/check_forge_backend.py --forge /path/to/stable-diffusion-webui-forge

Forge's own flags choose its attention function; pass them after `--` (e.g. `-- --attention-split`).
It builds small SD1- and SDXL-shaped UNets with Forge's classes (backend/nn/unet.py, backend/operations.py)
inside torch.inference_mode, as backend/loader.py builds every model, in float64, then inside an outer inference
mode, as in Forge's CFG-denoiser callback:
1. a plain autograd pass fails (the weights are inference tensors), and so does one with the weights made usable
   (the transformer blocks add in place);
2. inside `lib_align.autograd.gradient_pass`, the gradient through lib_align's Forge family of a float64 function of
   the cross-attention maps T-SAM captures (a random weighting of them: the loss on top is lib_align's own code,
   checked by the unit tests, and rounds to fp32) agrees with central finite differences along random directions
   (calculus is the oracle); T-SAM's loss and its gradient are taken once too;
3. afterwards the UNet's weights are Forge's own inference tensors again;
4. T through Forge's own text engine (backend/text_processing/classic_engine.py over backend/nn/clip.py, clip skip
   2, a BREAK) equals T of the same transformers CLIP model fed the very ids the engine feeds it for its cond.
Exit status 0 when all three hold. Not part of CI: CI has no Forge checkout.
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Small UNets in Forge's configuration form (what huggingface_guess derives from a checkpoint): SD1's layout
# (attention at ds 1, 2, 4) and SDXL's (none at ds 1, depth 1 then 2 where SDXL has 2 and 10, linear projections,
# a pooled-text/size vector `y`).
UNETS = {
    "SD1": dict(in_channels=4, out_channels=4, model_channels=32, num_res_blocks=2, channel_mult=[1, 2, 4, 4],
                num_heads=4, num_head_channels=-1, use_spatial_transformer=True, context_dim=64,
                transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
                transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], transformer_depth_middle=1),
    "SDXL": dict(in_channels=4, out_channels=4, model_channels=32, num_res_blocks=2, channel_mult=[1, 2, 4],
                 num_heads=-1, num_head_channels=8, use_spatial_transformer=True, context_dim=64,
                 use_linear_in_transformer=True, num_classes="sequential", adm_in_channels=16,
                 transformer_depth=[0, 0, 1, 1, 2, 2], transformer_depth_output=[0, 0, 0, 1, 1, 1, 2, 2, 2],
                 transformer_depth_middle=2),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--forge", required=True, help="a stable-diffusion-webui-forge checkout")
    parser.add_argument("--directions", type=int, default=3, help="random directions for the finite differences")
    args, forge_flags = parser.parse_known_args()
    sys.argv = [sys.argv[0], "--always-cpu", *[f for f in forge_flags if f != "--"]]  # backend/args.py reads these
    forge = Path(args.forge).resolve()
    # Forge's modules/paths.py puts its root and packages_3rdparty (its own gguf) on the path at startup.
    sys.path[:0] = [str(forge), str(forge / "packages_3rdparty"), str(ROOT)]

    import torch
    from backend import attention

    print(f"Forge attention function: {attention.attention_function.__name__}")
    ok = True
    for name in UNETS:
        print(f"{name}-shaped UNet:")
        ok &= check_unet(torch, name, args.directions)
    ok &= check_text_engine(torch)
    return 0 if ok else 1


def check_unet(torch: types.ModuleType, name: str, directions: int) -> bool:
    from backend import operations
    from backend.nn.unet import IntegratedUNet2DConditionModel

    from lib_align.autograd import autograd_usable, gradient_pass
    from lib_align.capture import CrossAttentionCapture
    from lib_align.families import SD1, SDXL, ModelFamily
    from lib_align.families.forge import ForgeReach
    from lib_align.loss import prompt_loss
    from lib_align.optimizer import loss_and_grad
    from lib_align.text import ChunkTarget

    config = UNETS[name]
    torch.manual_seed(0)
    # The checkpoint: random weights with the keys and shapes of this UNet (built once with plain torch layers;
    # Forge's own layers have no weights until a state dict is loaded into them).
    shapes = {k: v.shape for k, v in IntegratedUNet2DConditionModel(**config).state_dict().items()}
    with torch.inference_mode():  # backend/loader.py: forge_loader is decorated @torch.inference_mode()
        state = {k: torch.randn(shape, dtype=torch.float64) * 0.2 for k, shape in shapes.items()}
        with operations.using_forge_operations(device=torch.device("cpu"), dtype=torch.float64,
                                               manual_cast_enabled=False):
            unet = IntegratedUNet2DConditionModel(**config)
        unet.load_state_dict(state)
        unet = unet.to(torch.float64).eval()
        x = torch.randn(1, 4, 16, 16, dtype=torch.float64)
        t = torch.tensor([600.0], dtype=torch.float64)
        cond = {"c_crossattn": torch.randn(1, 77, 64, dtype=torch.float64)}
        if name == "SDXL":
            cond["y"] = torch.randn(1, 16, dtype=torch.float64)
    weights = dict(unet.named_parameters())
    ok = all(w.is_inference() for w in weights.values())
    print(f"[{'ok' if ok else 'FAIL'}] the UNet's {len(weights)} weights are inference tensors")

    engine = types.SimpleNamespace(forge_objects=types.SimpleNamespace(unet=types.SimpleNamespace(
        model=types.SimpleNamespace(diffusion_model=unet, computation_dtype=torch.float64))))
    family = ModelFamily(SDXL if name == "SDXL" else SD1, ForgeReach(), engine, torch.device("cpu"))
    n = 6
    rows = torch.rand(n, n, dtype=torch.float64).tril() + torch.eye(n, dtype=torch.float64)
    targets = [ChunkTarget(0, rows / rows.sum(-1, keepdim=True), [f"w{i}" for i in range(n)])]
    # Maps in float64 like the UNet here, so that finite differences resolve the derivative (T-SAM's own are fp32).
    capture = CrossAttentionCapture(family.unet, (16, 16), family.layout_level, stop_early=True,
                                    precision=torch.float64)
    weighting = torch.randn(1, 4, 4, 77, dtype=torch.float64)  # the maps at latent/4: 4x4 here

    def loss_fn(z: torch.Tensor) -> torch.Tensor:
        maps = capture.run(lambda: family.apply_model(z, t, cond))
        return torch.stack([prompt_loss(maps[0], targets, "paper", True)])

    def probe(z: torch.Tensor) -> torch.Tensor:
        maps = capture.run(lambda: family.apply_model(z, t, cond))
        return (maps * weighting.expand_as(maps)).sum()[None]

    with torch.inference_mode():  # Forge's callback runs inside process_images' inference mode
        try:
            with torch.inference_mode(False), torch.enable_grad(), capture:
                loss_and_grad(x, loss_fn)
            print("[FAIL] a plain autograd pass worked: this Forge differs from the one T-SAM was built against")
            ok = False
        except RuntimeError as error:
            print(f"[ok] a plain autograd pass fails: {str(error)[:80]}...")
        try:
            with torch.inference_mode(False), torch.enable_grad(), autograd_usable(family.unet), capture:
                loss_and_grad(x, loss_fn)
            print("[FAIL] usable weights alone were enough: this Forge's blocks no longer add in place")
            ok = False
        except RuntimeError as error:
            print(f"[ok] with usable weights alone it still fails, on the in-place adds: {str(error)[:60]}...")
        with gradient_pass(family.unet), capture:
            loss, loss_grad = loss_and_grad(x, loss_fn)
            _, grad = loss_and_grad(x, probe)
            worst = 0.0
            for _ in range(directions):
                v = torch.randn_like(grad)
                eps = 1e-5
                with torch.no_grad():
                    numeric = (probe(x + eps * v) - probe(x - eps * v)).item() / (2 * eps)
                analytic = float((grad * v).sum())
                worst = max(worst, abs(numeric - analytic) / max(abs(numeric), 1e-12))
                print(f"    directional derivative: autograd {analytic:.8e}, finite differences {numeric:.8e}")
        agree = worst < 1e-5
        ok &= agree
        print(f"[{'ok' if agree else 'FAIL'}] the gradient through Forge's UNet ({capture.layer_count} maps) agrees "
              f"with finite differences: worst relative difference {worst:.2e}")
        finite = loss_grad is not None and bool(torch.isfinite(loss_grad).all()) and float(loss_grad.abs().max()) > 0
        ok &= finite
        print(f"[{'ok' if finite else 'FAIL'}] T-SAM's loss {loss.item():.6f} has a finite, non-zero gradient "
              f"(max |dL/dz| {float(loss_grad.abs().max()):.3e})")
    back = all(dict(unet.named_parameters())[k] is w and w.is_inference() for k, w in weights.items())
    ok &= back
    print(f"[{'ok' if back else 'FAIL'}] Forge's own inference-tensor weights are back in the UNet")
    return ok


def check_text_engine(torch: types.ModuleType) -> bool:
    """T through Forge's ClassicTextProcessingEngine vs T of the ids the engine itself feeds its encoder."""
    if "modules.shared" not in sys.modules:  # outside a running Forge: the one setting the engine reads
        sys.modules.setdefault("modules", types.ModuleType("modules"))
        shared = types.ModuleType("modules.shared")
        shared.opts = types.SimpleNamespace(emphasis="Original")
        sys.modules["modules.shared"] = sys.modules["modules"].shared = shared
    from backend.nn.clip import IntegratedCLIP
    from backend.text_processing.classic_engine import ClassicTextProcessingEngine
    from transformers import CLIPTextConfig, CLIPTextModel

    from lib_align.families import SD1, ModelFamily
    from lib_align.families.forge import ForgeReach
    from lib_align.text import chunk_targets
    from standalone.models import clip_tokenizer

    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=49408, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                            num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu")
    with torch.inference_mode():
        clip = IntegratedCLIP(CLIPTextModel, config).eval()
    engine = ClassicTextProcessingEngine(text_encoder=clip, tokenizer=clip_tokenizer(), embedding_key="clip_l",
                                         embedding_expected_shape=64, minimal_clip_skip=1, clip_skip=2)
    fed: list = []
    handle = clip.transformer.register_forward_pre_hook(
        lambda _m, args, kwargs: fed.append((args[0] if args else kwargs["input_ids"]).clone()), with_kwargs=True)
    prompt = "a black car, a white clock BREAK a small red cat"
    with torch.inference_mode():
        engine([prompt])  # what Forge does for the cond (one encoder pass per chunk)
    handle.remove()
    engine_model = types.SimpleNamespace(is_sd1=True, text_processing_engine=engine)
    family = ModelFamily(SD1, ForgeReach(), engine_model, torch.device("cpu"))
    with torch.inference_mode():
        got = family.prompt_targets(prompt, 2.0, None)
        ids = torch.cat(fed)
        expected = chunk_targets(clip.transformer, ids, 2.0, clip_skip=2)
    same = len(got) == len(expected) == 2 and all(
        torch.allclose(a.target, b.target, atol=1e-6) and a.offset == b.offset
        for a, b in zip(got, expected, strict=True))
    print(f"[{'ok' if same else 'FAIL'}] T through Forge's text engine ({len(got)} chunks, clip skip 2) is T of the "
          f"ids it feeds its encoder; labels {got[0].tokens[:4]}")
    return same


if __name__ == "__main__":
    sys.exit(main())
