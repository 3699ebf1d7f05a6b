"""Mirrors modules/sd_hijack.py (A1111 1.10): only `current_optimizer`, the cross-attention optimization that
`apply_optimizations` applied (a modules/sd_hijack_optimizations.py SdOptimization with a `name`), or None."""

from types import SimpleNamespace

# A1111 on a CUDA machine without flags applies "Doggettx" (highest priority among the available ones); tests set it.
current_optimizer = SimpleNamespace(name="Doggettx")
