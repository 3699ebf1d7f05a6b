"""Mirrors modules/processing.py (1.10): StableDiffusionProcessingTxt2Img and process_images_inner.

Faithful on the hook order of one job — before_process, process (outside no_grad), then per batch under no_grad:
before_process_batch, (extra networks stripped), process_batch, setup_conds, sampler created,
process_before_every_sampling, sampling, [hires: is_hr_pass, before_hr, process_before_every_sampling, img2img
sampling], post_sample, decode (NaN check), postprocess_batch, postprocess_image per image — and postprocess, which an
exception skips (it is not in a finally). Seeds give per-image noise (one generator per seed, like rng.ImageRNG);
the infotext is built like create_infotext. With more than one image the gallery's grid comes first
(opts.return_grid; `index_of_first_image` = 1), as in the host. Simplified: no styles, no extra networks, no face
restore, images and grid are not saved (scripts' own saving goes to the recording modules.images), no overrides;
hires fix upscales the latent with "nearest"; the grid is one row.

SDXL: setup_conds passes the job's width/height (and is_negative_prompt for the negative prompts) on
prompt_parser.SdConditioning, which SDXL's get_learned_conditioning reads into `vector`; the conds are dicts.
For the hires pass the host computes new conds from SdConditioning(hr prompts, width=hr_upscale_to_x,
height=hr_upscale_to_y) (calculate_hr_conds); for SD1/SD2 they equal the first pass's (same prompts, no size input),
so the stand-in keeps those and recomputes only for SDXL, whose `vector` holds the size (no hires prompt of its own,
no hires schedule: the first pass's steps).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from modules import devices, prompt_parser, scripts, sd_samplers
from modules.infotext_utils import quote
from modules.shared import opts, state

opt_C, opt_f = 4, 8
re_extra_net = re.compile(r"<(\w+):([^>]+)>")


class ImageRNG:
    """rng.ImageRNG: one generator per seed, so image i's noise does not depend on the batch it is in."""

    def __init__(self, shape, seeds):
        self.shape = tuple(shape)
        self.generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]

    def next(self):
        return torch.stack([torch.randn(self.shape, generator=g) for g in self.generators]).to(devices.device)


@dataclass(repr=False)
class StableDiffusionProcessing:
    sd_model: Any = None
    prompt: Any = ""
    negative_prompt: Any = ""
    seed: int = 1
    sampler_name: str = "Euler"
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 6
    cfg_scale: float = 7.0
    width: int = 128
    height: int = 128
    eta: float | None = None
    scripts: Any = None
    script_args: list = field(default_factory=list)
    extra_generation_params: dict = field(default_factory=dict)
    comments: dict = field(default_factory=dict)
    s_min_uncond: float = 0.0
    is_hr_pass: bool = False
    outpath_samples: str = "outputs/txt2img-images"
    do_not_save_samples: bool = False  # the API sets it from `save_images` (false by default there)
    do_not_save_grid: bool = False

    def __post_init__(self):
        self.sampler = None
        self.c = None
        self.uc = None
        self.iteration = 0
        self.all_prompts = self.all_negative_prompts = self.all_seeds = None
        self.prompts = self.negative_prompts = self.seeds = None
        self.rng = None
        self.firstpass_steps = self.steps
        self.step_multiplier = 1

    def comment(self, text):
        self.comments[text] = 1

    def setup_prompts(self):
        if isinstance(self.prompt, list):
            self.all_prompts = list(self.prompt)
        else:
            self.all_prompts = self.batch_size * self.n_iter * [self.prompt]
        if isinstance(self.negative_prompt, list):
            self.all_negative_prompts = list(self.negative_prompt)
        else:
            self.all_negative_prompts = [self.negative_prompt] * len(self.all_prompts)

    def parse_extra_network_prompts(self):
        self.prompts = [re_extra_net.sub("", x) for x in self.prompts]

    def setup_conds(self):
        prompts = prompt_parser.SdConditioning(self.prompts, width=self.width, height=self.height)
        negative = prompt_parser.SdConditioning(self.negative_prompts, width=self.width, height=self.height,
                                                is_negative_prompt=True)
        sampler_config = sd_samplers.find_sampler_config(self.sampler_name)
        total_steps = sampler_config.total_steps(self.steps) if sampler_config else self.steps
        self.step_multiplier = total_steps // self.steps
        self.firstpass_steps = total_steps
        self.uc = prompt_parser.get_learned_conditioning(self.sd_model, negative, total_steps)
        self.c = prompt_parser.get_multicond_learned_conditioning(self.sd_model, prompts, total_steps)

    def get_conds(self):
        return self.c, self.uc

    def txt2img_image_conditioning(self, x):
        return x.new_zeros(x.shape[0], 5, 1, 1)

    def close(self):
        self.sampler = None
        self.c = None
        self.uc = None


@dataclass(repr=False)
class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    enable_hr: bool = False
    denoising_strength: float = 0.5
    hr_scale: float = 2.0
    hr_second_pass_steps: int = 0

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
        x = self.rng.next()
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(p=self, x=x, noise=x, c=conditioning,
                                                       uc=unconditional_conditioning)
        samples = self.sampler.sample(self, x, conditioning, unconditional_conditioning,
                                      image_conditioning=self.txt2img_image_conditioning(x))
        if not self.enable_hr:
            return samples
        return self.sample_hr_pass(samples, conditioning, unconditional_conditioning)

    def sample_hr_pass(self, samples, conditioning, unconditional_conditioning):
        if state.interrupted:
            return samples
        self.is_hr_pass = True
        if getattr(self.sd_model, "is_sdxl", False):
            conditioning, unconditional_conditioning = self.calculate_hr_conds()
        self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
        h, w = int(samples.shape[2] * self.hr_scale), int(samples.shape[3] * self.hr_scale)
        samples = torch.nn.functional.interpolate(samples, size=(h, w), mode="nearest")
        self.rng = ImageRNG(samples.shape[1:], self.seeds)
        noise = self.rng.next()
        if self.scripts is not None:
            self.scripts.before_hr(self)
            self.scripts.process_before_every_sampling(p=self, x=samples, noise=noise, c=conditioning,
                                                       uc=unconditional_conditioning)
        samples = self.sampler.sample_img2img(self, samples, noise, conditioning, unconditional_conditioning,
                                              steps=self.hr_second_pass_steps or self.steps,
                                              image_conditioning=self.txt2img_image_conditioning(samples))
        self.sampler = None
        self.is_hr_pass = False
        return samples


    def calculate_hr_conds(self):
        """The hires pass's (c, uc) at the upscaled size (hr_upscale_to_x/y = int(width/height * hr_scale))."""
        width, height = int(self.width * self.hr_scale), int(self.height * self.hr_scale)
        prompts = prompt_parser.SdConditioning(self.prompts, width=width, height=height)
        negative = prompt_parser.SdConditioning(self.negative_prompts, width=width, height=height,
                                                is_negative_prompt=True)
        hr_uc = prompt_parser.get_learned_conditioning(self.sd_model, negative, self.firstpass_steps)
        hr_c = prompt_parser.get_multicond_learned_conditioning(self.sd_model, prompts, self.firstpass_steps)
        return hr_c, hr_uc


class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    """Only its type matters here (nested img2img jobs, e.g. ADetailer's)."""


class Processed:
    def __init__(self, p, images, infotexts, samples, index_of_first_image=0):
        self.images = images
        self.infotexts = infotexts
        self.index_of_first_image = index_of_first_image
        self.info = infotexts[0] if infotexts else ""
        self.samples = samples  # stand-in only: the latents, so tests can compare them bitwise
        self.comments = "".join(f"{comment}\n" for comment in p.comments)
        self.extra_generation_params = p.extra_generation_params


def create_infotext(p, index):
    """The host's format: prompt, 'Negative prompt: ...', then 'Key: value, ...' with values quoted as needed."""
    generation_params = {
        "Steps": p.steps,
        "Sampler": p.sampler_name,
        "CFG scale": p.cfg_scale,
        "Seed": p.seeds[index],
        "Size": f"{p.width}x{p.height}",
        **p.extra_generation_params,
    }
    text = ", ".join(k if k == v else f"{k}: {quote(v)}" for k, v in generation_params.items() if v is not None)
    negative = f"\nNegative prompt: {p.negative_prompts[index]}" if p.negative_prompts[index] else ""
    return f"{p.prompts[index]}{negative}\n{text}"


def decode_latent_batch(model, batch, check_for_nans=False):
    if check_for_nans:
        devices.test_for_nans(batch, "unet")
    return [model.decode_first_stage(batch[i:i + 1])[0] for i in range(batch.shape[0])]


def process_images(p):
    """processing.process_images -> process_images_inner, without the settings overrides."""
    if p.scripts is not None:
        p.scripts.before_process(p)
    p.setup_prompts()
    p.all_seeds = [int(p.seed) + i for i in range(len(p.all_prompts))]
    if p.scripts is not None:
        p.scripts.process(p)

    images, infotexts, all_samples = [], [], []
    with torch.no_grad():
        for n in range(p.n_iter):
            p.iteration = n
            if state.skipped:
                state.skipped = False
            if state.interrupted:
                break
            p.prompts = p.all_prompts[n * p.batch_size:(n + 1) * p.batch_size]
            p.negative_prompts = p.all_negative_prompts[n * p.batch_size:(n + 1) * p.batch_size]
            p.seeds = p.all_seeds[n * p.batch_size:(n + 1) * p.batch_size]
            p.rng = ImageRNG((opt_C, p.height // opt_f, p.width // opt_f), p.seeds)
            if p.scripts is not None:
                p.scripts.before_process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds)
            p.parse_extra_network_prompts()
            if p.scripts is not None:
                p.scripts.process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds)
            p.setup_conds()
            with devices.without_autocast() if devices.unet_needs_upcast else devices.autocast():
                samples = p.sample(conditioning=p.c, unconditional_conditioning=p.uc, seeds=p.seeds, subseeds=None,
                                   subseed_strength=0.0, prompts=p.prompts)
            if p.scripts is not None:
                ps = scripts.PostSampleArgs(samples)
                p.scripts.post_sample(p, ps)
                samples = ps.samples
            all_samples.append(samples)
            x_samples = torch.stack(decode_latent_batch(p.sd_model, samples, check_for_nans=True)).float()
            x_samples = torch.clamp((x_samples + 1.0) / 2.0, min=0.0, max=1.0)
            if p.scripts is not None:
                p.scripts.postprocess_batch(p, x_samples, batch_number=n)
            for i, x_sample in enumerate(x_samples):
                p.batch_index = i
                array = (255.0 * np.moveaxis(x_sample.cpu().numpy(), 0, 2)).astype(np.uint8)
                image = Image.fromarray(array)
                if p.scripts is not None:
                    pp = scripts.PostprocessImageArgs(image)
                    p.scripts.postprocess_image(p, pp)
                    image = pp.image
                infotexts.append(create_infotext(p, i))
                image.info["parameters"] = infotexts[-1]
                images.append(image)
            state.nextjob()

    index_of_first_image = 0
    unwanted_grid = len(images) < 2 and opts.grid_only_if_multiple
    if opts.return_grid and not p.do_not_save_grid and not unwanted_grid:
        grid = Image.new("RGB", (sum(im.width for im in images), max(im.height for im in images)))
        for i, im in enumerate(images):
            grid.paste(im, (sum(prev.width for prev in images[:i]), 0))
        infotexts.insert(0, infotexts[0])  # the host writes the main prompt's infotext
        images.insert(0, grid)
        index_of_first_image = 1
    res = Processed(p, images, infotexts, torch.cat(all_samples) if all_samples else None, index_of_first_image)
    if p.scripts is not None:
        p.scripts.postprocess(p, res)
    return res
