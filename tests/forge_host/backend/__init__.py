"""Stand-in of Forge's `backend/` package (its 2024 rewrite: diffusion engines, patchers, k-model, text engines,
sampling function), for tests only. Each module names the Forge file it mirrors and says where it simplifies.

The fact the stand-in exists for: Forge builds every weight inside `torch.inference_mode()` (backend/loader.py
`forge_loader`) and samples inside it (modules/processing.py), so weights, conds and latents are inference tensors.
Here the models are built the same way (`forge_models.py`), so torch itself enforces what real Forge enforces.
"""
