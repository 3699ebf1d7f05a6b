"""Mirrors modules/sd_samplers.py: the sampler table (k-diffusion's, then the timestep samplers) and
create_sampler (the config is attached to the sampler). Stand-in only: `created` lists every sampler made, so tests
can count hooks left on their CFG denoisers (as the A1111 stand-in's does)."""

from __future__ import annotations

from typing import Any

from modules import sd_samplers_kdiffusion, sd_samplers_timesteps

all_samplers = [*sd_samplers_kdiffusion.samplers_data_k_diffusion, *sd_samplers_timesteps.samplers_data_timesteps]
all_samplers_map = {x.name: x for x in all_samplers}
created: list = []


def find_sampler_config(name: str | None) -> Any:
    return all_samplers_map.get(name) if name is not None else all_samplers[0]


def create_sampler(name: str, model: Any) -> Any:
    config = find_sampler_config(name)
    if config is None:
        raise ValueError(f"implementation error: unknown sampler {name}")
    sampler = config.constructor(model)
    sampler.config = config
    created.append(sampler)
    return sampler
