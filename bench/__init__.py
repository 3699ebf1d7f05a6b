"""Cost of T-SAM relative to plain Stable Diffusion: `python -m bench --quick` (minutes), `python -m bench` (the full
measurement), `python -m bench --smoke` (the tiny model, seconds: exercises the code path in CI)."""
