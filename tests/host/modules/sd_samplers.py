"""Mirrors modules/sd_samplers.py: the sampler table and create_sampler (config attached to the sampler)."""

from __future__ import annotations

from modules import sd_samplers_kdiffusion, sd_samplers_timesteps

all_samplers = [*sd_samplers_kdiffusion.samplers_data_k_diffusion, *sd_samplers_timesteps.samplers_data_timesteps]
all_samplers_map = {x.name: x for x in all_samplers}
created: list = []  # stand-in only: every sampler made, so tests can count hooks left on their CFG denoisers


def find_sampler_config(name):
    return all_samplers_map.get(name) if name is not None else all_samplers[0]


def create_sampler(name, model):
    config = find_sampler_config(name)
    if config is None:
        raise ValueError(f"implementation error: unknown sampler {name}")
    sampler = config.constructor(model)
    sampler.config = config
    created.append(sampler)
    return sampler
