"""Mirrors Forge's modules/processing.py: StableDiffusionProcessingTxt2Img, process_images, process_images_inner.

Where Forge differs from A1111, kept here:
- `p.init`, the whole per-batch loop (conds, sampling, hires pass, decoding, images) and the grid run inside ONE
  `with torch.inference_mode():` (Forge: process_images_inner); `process` runs before it, `postprocess` after it.
- Per batch: `p.sd_model.forge_objects = p.sd_model.forge_objects_original.shallow_copy()` first, then (after extra
  networks, not mirrored) `forge_objects_after_applying_lora.shallow_copy()`; txt2img's `sample` takes that copy
  again before process_before_every_sampling, so a script's patched UNet lives for one sampling run.
- setup_conds: `sd_model.set_clip_skip(opts.CLIP_stop_at_last_layers)` before encoding; no uncond when CFG is 1.
- The noise has `forge_objects.vae.latent_channels` channels.
- Hires fix: the first pass's latents are upscaled ("nearest", Forge's default latent upscaler), conds are computed
  at the target size (hr_uc None when hr_cfg is 1, the API default), then before_hr, process_before_every_sampling,
  a fresh shallow copy of forge_objects, process_before_every_sampling AGAIN (Forge calls it twice), img2img
  sampling with `p.is_hr_pass` True; the pass returns DECODED samples (post_sample sees pixels, as in Forge).
- devices.test_for_nans is called where Forge calls it, and does nothing (Forge's is a no-op).
Kept from the A1111 stand-in: hook order (before_process, process, before_process_batch, process_batch,
process_before_every_sampling, [before_hr], post_sample, postprocess_batch, postprocess_image per image,
postprocess — not in a finally), the infotext format, the grid first when there is more than one image.
Simplified: no styles, extra networks, face restore, overlays, saving, settings overrides, model reloads
(`p.sd_model` is `shared.sd_model`, as forge_model_reload returns it), cond caching, subseeds, refiner, token
merging, zero-terminal-SNR. Stand-in only: `Processed.samples` holds the final latents (for hires, the second pass's).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import backend.text_processing.classic_engine as classic_engine
import numpy as np
import torch
from PIL import Image

from modules import devices, prompt_parser, scripts, sd_samplers, shared
from modules.infotext_utils import quote
from modules.rng import ImageRNG
from modules.shared import opts, state

opt_C, opt_f = 4, 8
re_extra_net = re.compile(r"<(\w+):([^>]+)>")


@dataclass(repr=False)
class StableDiffusionProcessing:
    sd_model: Any = None
    prompt: Any = ""
    negative_prompt: Any = ""
    seed: int = 1
    sampler_name: str = "Euler"
    scheduler: str | None = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 6
    cfg_scale: float = 7.0
    distilled_cfg_scale: float = 3.5
    width: int = 128
    height: int = 128
    eta: float | None = None
    scripts: Any = None
    script_args: list = field(default_factory=list)
    extra_generation_params: dict = field(default_factory=dict)
    comments: dict = field(default_factory=dict)
    s_min_uncond: float = 0.0
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    outpath_samples: str = "outputs/txt2img-images"
    is_hr_pass: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.sampler: Any = None
        self.c = self.uc = None
        self.iteration = 0
        self.all_prompts = self.all_negative_prompts = self.all_seeds = None
        self.prompts = self.negative_prompts = self.seeds = None
        self.rng: ImageRNG | None = None
        self.firstpass_steps = self.steps
        self.step_multiplier = 1
        self.latents_after_sampling: list = []
        self.final_latents: torch.Tensor | None = None  # stand-in only, see the module docstring

    def comment(self, text: str) -> None:
        self.comments[text] = 1

    def init(self, all_prompts: list, all_seeds: list, all_subseeds: list) -> None:
        pass

    def setup_prompts(self) -> None:
        if isinstance(self.prompt, list):
            self.all_prompts = list(self.prompt)
        elif isinstance(self.negative_prompt, list):
            self.all_prompts = [self.prompt] * len(self.negative_prompt)
        else:
            self.all_prompts = self.batch_size * self.n_iter * [self.prompt]
        if isinstance(self.negative_prompt, list):
            self.all_negative_prompts = list(self.negative_prompt)
        else:
            self.all_negative_prompts = [self.negative_prompt] * len(self.all_prompts)
        self.main_prompt, self.main_negative_prompt = self.all_prompts[0], self.all_negative_prompts[0]

    def parse_extra_network_prompts(self) -> None:
        self.prompts = [re_extra_net.sub("", x) for x in self.prompts]

    def get_conds_with_caching(self, function: Any, required_prompts: Any, steps: int) -> Any:
        """Forge's, without the cache: clip skip set on the engine, encoded, the engine's infotext entries kept."""
        shared.sd_model.set_clip_skip(int(opts.CLIP_stop_at_last_layers))
        result = function(shared.sd_model, required_prompts, steps)
        shared.sd_model.extra_generation_params.update(classic_engine.last_extra_generation_params)
        classic_engine.last_extra_generation_params.clear()
        return result

    def conditioning(self, prompts: list[str], width: int, height: int, negative: bool = False) -> Any:
        cond = prompt_parser.SdConditioning(prompts, width=width, height=height, is_negative_prompt=negative)
        cond.distilled_cfg_scale = self.distilled_cfg_scale  # Forge's SdConditioning takes it as an argument
        return cond

    def setup_conds(self) -> None:
        prompts = self.conditioning(self.prompts, self.width, self.height)
        negative = self.conditioning(self.negative_prompts, self.width, self.height, negative=True)
        config = sd_samplers.find_sampler_config(self.sampler_name)
        total_steps = config.total_steps(self.steps) if config else self.steps
        self.step_multiplier = total_steps // self.steps
        self.firstpass_steps = total_steps
        self.uc = None if self.cfg_scale == 1 else self.get_conds_with_caching(
            prompt_parser.get_learned_conditioning, negative, total_steps)
        self.c = self.get_conds_with_caching(prompt_parser.get_multicond_learned_conditioning, prompts, total_steps)

    def get_conds(self) -> tuple[Any, Any]:
        return self.c, self.uc

    def txt2img_image_conditioning(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0], 5, 1, 1)

    def close(self) -> None:
        self.sampler = None
        self.c = self.uc = None


@dataclass(repr=False)
class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    enable_hr: bool = False
    denoising_strength: float = 0.75
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    hr_cfg: float = 1.0
    hr_distilled_cfg: float = 3.5

    def __post_init__(self) -> None:
        super().__post_init__()
        self.hr_c = self.hr_uc = None
        self.hr_upscale_to_x = self.hr_upscale_to_y = 0
        self.all_hr_prompts = self.all_hr_negative_prompts = self.hr_prompts = self.hr_negative_prompts = None

    def init(self, all_prompts: list, all_seeds: list, all_subseeds: list) -> None:
        if not self.enable_hr:
            return
        self.extra_generation_params["Denoising strength"] = self.denoising_strength
        self.extra_generation_params["Hires CFG Scale"] = self.hr_cfg
        if self.hr_scheduler is None:
            self.hr_scheduler = self.scheduler
        self.extra_generation_params["Hires upscale"] = self.hr_scale
        self.hr_upscale_to_x, self.hr_upscale_to_y = int(self.width * self.hr_scale), int(self.height * self.hr_scale)
        if self.hr_second_pass_steps:
            self.extra_generation_params["Hires steps"] = self.hr_second_pass_steps

    def setup_prompts(self) -> None:
        super().setup_prompts()
        if not self.enable_hr:
            return
        hr_prompt = self.hr_prompt or self.prompt
        hr_negative = self.hr_negative_prompt or self.negative_prompt
        self.all_hr_prompts = list(hr_prompt) if isinstance(hr_prompt, list) else len(self.all_prompts) * [hr_prompt]
        self.all_hr_negative_prompts = (list(hr_negative) if isinstance(hr_negative, list)
                                        else len(self.all_prompts) * [hr_negative])

    def parse_extra_network_prompts(self) -> None:
        super().parse_extra_network_prompts()
        if self.enable_hr:
            batch = slice(self.iteration * self.batch_size, (self.iteration + 1) * self.batch_size)
            self.hr_prompts = [re_extra_net.sub("", x) for x in self.all_hr_prompts[batch]]
            self.hr_negative_prompts = self.all_hr_negative_prompts[batch]

    def calculate_hr_conds(self) -> None:
        if self.hr_c is not None:
            return
        prompts = self.conditioning(self.hr_prompts, self.hr_upscale_to_x, self.hr_upscale_to_y)
        negative = self.conditioning(self.hr_negative_prompts, self.hr_upscale_to_x, self.hr_upscale_to_y, True)
        self.hr_uc = None if self.hr_cfg == 1 else self.get_conds_with_caching(
            prompt_parser.get_learned_conditioning, negative, self.firstpass_steps)
        self.hr_c = self.get_conds_with_caching(prompt_parser.get_multicond_learned_conditioning, prompts,
                                                self.firstpass_steps)

    def setup_conds(self) -> None:
        if self.is_hr_pass:
            self.hr_c = None
            self.calculate_hr_conds()
            return
        super().setup_conds()
        self.hr_c = self.hr_uc = None
        if self.enable_hr:
            self.calculate_hr_conds()

    def get_conds(self) -> tuple[Any, Any]:
        return (self.hr_c, self.hr_uc) if self.is_hr_pass else super().get_conds()

    def sample(self, conditioning: Any, unconditional_conditioning: Any, seeds: list, subseeds: Any,
               subseed_strength: float, prompts: list) -> Any:
        self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
        x = self.rng.next()
        self.sd_model.forge_objects = self.sd_model.forge_objects_after_applying_lora.shallow_copy()
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(p=self, x=x, noise=x, c=conditioning,
                                                       uc=unconditional_conditioning)
        samples = self.sampler.sample(self, x, conditioning, unconditional_conditioning,
                                      image_conditioning=self.txt2img_image_conditioning(x))
        self.final_latents = samples
        if not self.enable_hr:
            return samples
        return self.sample_hr_pass(samples)

    def sample_hr_pass(self, samples: torch.Tensor) -> Any:
        if state.interrupted:
            return samples
        self.is_hr_pass = True
        self.sampler = sd_samplers.create_sampler(self.hr_sampler_name or self.sampler_name, self.sd_model)
        samples = torch.nn.functional.interpolate(samples, size=(self.hr_upscale_to_y // opt_f,
                                                                 self.hr_upscale_to_x // opt_f), mode="nearest")
        image_conditioning = self.txt2img_image_conditioning(samples)
        state.nextjob()
        self.rng = ImageRNG(samples.shape[1:], self.seeds)
        noise = self.rng.next()
        self.calculate_hr_conds()
        if self.scripts is not None:
            self.scripts.before_hr(self)
            self.scripts.process_before_every_sampling(p=self, x=samples, noise=noise, c=self.hr_c, uc=self.hr_uc)
        self.sd_model.forge_objects = self.sd_model.forge_objects_after_applying_lora.shallow_copy()
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(p=self, x=samples, noise=noise, c=self.hr_c, uc=self.hr_uc)
        samples = self.sampler.sample_img2img(self, samples, noise, self.hr_c, self.hr_uc,
                                              steps=self.hr_second_pass_steps or self.steps,
                                              image_conditioning=image_conditioning)
        self.final_latents = samples
        self.sampler = None
        decoded = decode_latent_batch(self.sd_model, samples, target_device=devices.cpu, check_for_nans=True)
        self.is_hr_pass = False
        return decoded

    def close(self) -> None:
        super().close()
        self.hr_c = self.hr_uc = None


class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    """Only its type matters here (nested img2img jobs, e.g. ADetailer's)."""


class Processed:
    def __init__(self, p: Any, images: list, infotexts: list, samples: torch.Tensor | None,
                 index_of_first_image: int = 0) -> None:
        self.images = images
        self.infotexts = infotexts
        self.index_of_first_image = index_of_first_image
        self.info = infotexts[0] if infotexts else ""
        self.samples = samples  # stand-in only: the final latents, so tests can compare them bitwise
        self.comments = "".join(f"{comment}\n" for comment in p.comments)
        self.extra_generation_params = p.extra_generation_params


class DecodedSamples(list):
    already_decoded = True


def decode_latent_batch(model: Any, batch: torch.Tensor, target_device: Any = None, check_for_nans: bool = False
                        ) -> DecodedSamples:
    """Forge's: decodes the whole batch at once; `check_for_nans` is ignored, as in Forge."""
    return DecodedSamples(model.decode_first_stage(batch).to(target_device))


def create_infotext(p: Any, index: int) -> str:
    """Forge's format for the fields the stand-in has: values may be lists (per image) or callables."""
    prompt_text, negative_prompt = p.prompts[index], p.negative_prompts[index]
    clip_skip = int(opts.CLIP_stop_at_last_layers)
    params: dict[str, Any] = {
        "Steps": p.steps, "Sampler": p.sampler_name, "Schedule type": p.scheduler, "CFG scale": p.cfg_scale,
        "Seed": p.seeds[index], "Size": f"{p.width}x{p.height}", "Clip skip": None if clip_skip <= 1 else clip_skip,
        **p.extra_generation_params,
    }
    for key, value in params.items():
        if isinstance(value, list):
            params[key] = value[index]
        elif callable(value):
            params[key] = value(p=p, index=index, prompt_text=prompt_text, negative_prompt=negative_prompt)
    text = ", ".join(k if k == v else f"{k}: {quote(v)}" for k, v in params.items() if v is not None)
    negative = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt_text}{negative}\n{text}".strip()


def process_images(p: Any) -> Processed:
    if p.scripts is not None:
        p.scripts.before_process(p)
    p.sd_model = shared.sd_model  # manage_model_and_prompt_cache: forge_model_reload() returns the loaded engine
    return process_images_inner(p)


def process_images_inner(p: Any) -> Processed:
    p.sd_model_name = shared.sd_model.sd_checkpoint_info.name_for_extra
    p.sd_model.comments = []
    p.sd_model.extra_generation_params = {}
    p.setup_prompts()
    p.all_seeds = [int(p.seed) + i for i in range(len(p.all_prompts))]
    p.all_subseeds = [0] * len(p.all_prompts)
    if p.scripts is not None:
        p.scripts.process(p)

    infotexts: list[str] = []
    output_images: list[Image.Image] = []
    all_samples: list[torch.Tensor] = []
    with torch.inference_mode():
        with devices.autocast():
            p.init(p.all_prompts, p.all_seeds, p.all_subseeds)
        for n in range(p.n_iter):
            p.iteration = n
            if state.skipped:
                state.skipped = False
            if state.interrupted or getattr(state, "stopping_generation", False):
                break
            p.sd_model.forge_objects = p.sd_model.forge_objects_original.shallow_copy()
            p.prompts = p.all_prompts[n * p.batch_size:(n + 1) * p.batch_size]
            p.negative_prompts = p.all_negative_prompts[n * p.batch_size:(n + 1) * p.batch_size]
            p.seeds = p.all_seeds[n * p.batch_size:(n + 1) * p.batch_size]
            latent_channels = shared.sd_model.forge_objects.vae.latent_channels
            p.rng = ImageRNG((latent_channels, p.height // opt_f, p.width // opt_f), p.seeds)
            if p.scripts is not None:
                p.scripts.before_process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds)
            if len(p.prompts) == 0:
                break
            p.parse_extra_network_prompts()
            p.sd_model.forge_objects = p.sd_model.forge_objects_after_applying_lora.shallow_copy()
            if p.scripts is not None:
                p.scripts.process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds)
            p.setup_conds()
            p.extra_generation_params.update(p.sd_model.extra_generation_params)
            for comment in p.sd_model.comments:
                p.comment(comment)
            samples = p.sample(conditioning=p.c, unconditional_conditioning=p.uc, seeds=p.seeds, subseeds=None,
                               subseed_strength=0.0, prompts=p.prompts)
            p.latents_after_sampling.extend(samples)
            if p.scripts is not None:
                ps = scripts.PostSampleArgs(samples)
                p.scripts.post_sample(p, ps)
                samples = ps.samples
            if isinstance(samples, torch.Tensor):
                p.final_latents = samples
            all_samples.append(p.final_latents)
            if getattr(samples, "already_decoded", False):
                x_samples = samples
            else:
                devices.test_for_nans(samples, "unet")
                x_samples = decode_latent_batch(p.sd_model, samples, target_device=devices.cpu, check_for_nans=True)
            x_samples = torch.clamp((torch.stack(x_samples).float() + 1.0) / 2.0, min=0.0, max=1.0)
            state.nextjob()
            if p.scripts is not None:
                p.scripts.postprocess_batch(p, x_samples, batch_number=n)
            for i, x_sample in enumerate(x_samples):
                p.batch_index = i
                image = Image.fromarray((255.0 * np.moveaxis(x_sample.cpu().numpy(), 0, 2)).astype(np.uint8))
                if p.scripts is not None:
                    pp = scripts.PostprocessImageArgs(image)
                    p.scripts.postprocess_image(p, pp)
                    image = pp.image
                infotexts.append(create_infotext(p, i))
                if opts.enable_pnginfo:
                    image.info["parameters"] = infotexts[-1]
                output_images.append(image)

        index_of_first_image = 0
        unwanted_grid = len(output_images) < 2 and opts.grid_only_if_multiple
        if opts.return_grid and not p.do_not_save_grid and not unwanted_grid:
            grid = Image.new("RGB", (sum(im.width for im in output_images), max(im.height for im in output_images)))
            for i, im in enumerate(output_images):
                grid.paste(im, (sum(prev.width for prev in output_images[:i]), 0))
            infotexts.insert(0, infotexts[0])
            output_images.insert(0, grid)
            index_of_first_image = 1

    res = Processed(p, output_images, infotexts, torch.cat(all_samples) if all_samples else None,
                    index_of_first_image)
    if p.scripts is not None:
        p.scripts.postprocess(p, res)
    return res
