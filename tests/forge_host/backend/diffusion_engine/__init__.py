"""Stand-in of Forge's backend/diffusion_engine/ (see the package docstring)."""
