"""Reproduces the T-SAM paper's Attend-and-Excite evaluation outside the web UI: plain SD vs the Paper and
Official-code presets on the same prompts and seeds, scored with CLIP (`python -m evaluation`).

Modules: `prompt_sets` (the three prompt lists), `runner` (generation, resume), `metrics` (CLIP scores),
`stats` (means, errors, the failing rule, the paper's numbers), `report` (CSVs, table, grid), `cli` (the command).
"""
