"""'Show attention': what each image's pictures need is kept after sampling; the pictures are added at the end."""

from __future__ import annotations

from typing import Any

from modules import images, shared

from ..pictures import draw, image_attention
from .job import Job, active_text


def keep_attention(job: Job) -> None:
    """After a batch's sampling: what each image's pictures need (T; the maps if T-SAM ran), on the CPU."""
    if not job.show or not job.schedules:
        return
    ran = [s for s in job.sessions.values() if s.history]
    latest = max(ran, key=lambda s: s.history[-1].step, default=None)  # prompt editing: the last one used
    first = int(getattr(job.p, "iteration", 0)) * len(job.schedules)
    for b, schedule in enumerate(job.schedules):
        # Nothing optimised (too short a prompt, T-SAM stopped): T alone still explains the prompt.
        targets = latest.targets[b] if latest is not None else job.targets.get(active_text(schedule, 0), [])
        job.attention.append((first + b, image_attention(latest, b, targets, job.config.power)))


def add_pictures(job: Job, processed: Any) -> None:
    """Append each image's pictures to the result, after all images, each with its image's infotext. Saved like the
    images only when the user saves every image ("Always save all generated images")."""
    p, opts = job.p, shared.opts
    first = int(getattr(processed, "index_of_first_image", 0))
    shown, texts = list(processed.images), list(processed.infotexts)
    save = bool(getattr(opts, "samples_save", False)) and not getattr(p, "do_not_save_samples", False)
    for number, record in job.attention:
        index = first + number
        image = shown[index] if index < len(shown) else None
        infotext = texts[index] if index < len(texts) else processed.info
        for kind, picture in draw(record, image).named():
            if getattr(opts, "enable_pnginfo", True):
                picture.info["parameters"] = infotext
            processed.images.append(picture)
            processed.infotexts.append(infotext)
            if save:
                seeds, prompts = getattr(p, "all_seeds", None) or [None], getattr(p, "all_prompts", None) or [""]
                images.save_image(picture, p.outpath_samples, "", seeds[min(number, len(seeds) - 1)],
                                  prompts[min(number, len(prompts) - 1)], opts.samples_format, info=infotext,
                                  p=p, suffix=f"-tsam-{kind}")
    job.attention.clear()
