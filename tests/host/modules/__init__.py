"""A small stand-in of AUTOMATIC1111 1.10's `modules` package, for tests only (no web UI in CI).

Each module names the host file it mirrors and says where it simplifies. It is faithful on the points T-SAM relies
on: the CFG denoiser builds `x_in` as a new tensor, calls `on_cfg_denoiser` and reads the params back; the sampler
keeps its own `x`; the hook order of one job; the tokenizer wrapper's chunks; infotext and paste conversions.
"""
