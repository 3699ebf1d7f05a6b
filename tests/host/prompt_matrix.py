"""Mirrors scripts/prompt_matrix.py (A1111 1.10.1) on what reaches other scripts: a selectable script whose `run`
splits the prompt at "|", runs one `process_images` over every combination, then builds its grid from
`processed.images` — `images.image_grid(processed.images, p.batch_size, rows=1 << ((parts - 1) // 2))` and
`images.draw_prompt_matrix`, whose `draw_grid_annotations` asserts `cols == len(hor_texts)` ("bad number of
horizontal texts") — and inserts the grid first (`index_of_first_image = 1`).
Simplified: positive prompt only, comma delimiter, p.seed left as it is (the host sets a list), the grid not drawn
(its column count and the host's assertion are kept), nothing saved.
"""

from __future__ import annotations

import math

from modules import scripts
from modules.processing import process_images
from PIL import Image


class PromptMatrixScript(scripts.Script):
    def title(self):
        return "Prompt matrix"

    def show(self, is_img2img):
        return not is_img2img

    def run(self, p, *args):
        parts = p.prompt.split("|")
        prompts = []
        for combination in range(2 ** (len(parts) - 1)):
            chosen = [text.strip().strip(",") for n, text in enumerate(parts[1:]) if combination & (1 << n)]
            prompts.append(", ".join([parts[0].strip(), *chosen]))
        p.n_iter = math.ceil(len(prompts) / p.batch_size)
        p.do_not_save_grid = True
        p.prompt = prompts
        processed = process_images(p)
        rows = 1 << ((len(parts) - 1) // 2)
        cols = math.ceil(len(processed.images) / rows)  # images.image_grid with rows given
        horizontal = 1 << math.ceil((len(parts) - 1) / 2)  # draw_prompt_matrix's hor_texts
        assert cols == horizontal, f"bad number of horizontal texts: {horizontal}; must be {cols}"
        width, height = processed.images[0].size
        processed.images.insert(0, Image.new("RGB", (width * cols, height * rows)))
        processed.index_of_first_image = 1
        processed.infotexts.insert(0, processed.infotexts[0])
        return processed
