"""The three Attend-and-Excite prompt sets the T-SAM paper evaluates on, rebuilt from A&E's templates and word lists.

Source: Chefer, Alaluf, Vinker, Wolf, Cohen-Or, "Attend-and-Excite: Attention-Based Semantic Guidance for
Text-to-Image Diffusion Models", SIGGRAPH 2023 (arXiv 2301.13826): 12 animals, 12 objects, 11 colours and three
templates:

- animals (66 prompts): "a [animalA] and a [animalB]", every unordered pair of animals;
- animals_objects (144): "a [animal] with a [object]" for the wearable objects (glasses, crown, bow) and
  "a [animal] and a [color] [object]" for the other nine, every animal with every object;
- objects (66): "a [colorA] [objectA] and a [colorB] [objectB]", every unordered pair of objects.

A&E drew each colour at random and published no seed, so the colours here come from our own seeded draw
(`COLOR_SEED`): they differ from the lists A&E and the T-SAM authors ran (the T-SAM authors kept theirs in their
repository's history, t-sam-diffusion/code, prompt_files/attend_n_excite/txt/). Everything else — words, pairs, the
order of the two words in a pair, "with" versus "and" — follows the templates and agrees with those lists. To run
exactly the authors' prompts, save their three files in a folder and pass `--prompt-dir`.

`python -m evaluation.prompt_sets` rewrites the shipped text files in `evaluation/prompts/` from this module.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import re
from dataclasses import dataclass
from pathlib import Path

# Word lists in A&E's order; a pair's first word is the one earlier in its list (as in the authors' files).
ANIMALS = ("cat", "dog", "bird", "bear", "lion", "horse", "elephant", "monkey", "frog", "turtle", "rabbit", "mouse")
OBJECTS = ("backpack", "glasses", "crown", "suitcase", "chair", "balloon", "bow", "car", "bowl", "bench", "clock",
           "apple")
WEARABLES = ("glasses", "crown", "bow")  # "a [animal] with a [object]", no colour
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "gray", "black", "white")
COLOR_SEED = 0

SET_NAMES = ("animals", "animals_objects", "objects")
SET_SIZES = {"animals": 66, "animals_objects": 144, "objects": 66}
PROMPT_DIR = Path(__file__).resolve().parent / "prompts"

SOURCE_HEADER = (
    "# Attend-and-Excite prompt set '{name}' ({count} prompts), rebuilt by evaluation/prompt_sets.py from the\n"
    "# templates and word lists of Chefer et al., Attend-and-Excite, SIGGRAPH 2023, arXiv 2301.13826.\n"
    "# Colours: our own draw (random.Random({seed})); A&E's random colours were not published with a seed.\n"
    "# One prompt per line; lines starting with '#' are comments.\n"
)


@dataclass(frozen=True)
class PromptSet:
    name: str
    prompts: tuple[str, ...]
    source: str  # where the prompts were read from (a file path)
    digest: str  # sha256 of the prompts, so a resumed run can tell that the set did not change

    def __len__(self) -> int:
        return len(self.prompts)


def generate_set(name: str) -> list[str]:
    """One set's prompts from the templates, in a fixed order (pairs in word-list order)."""
    rng = random.Random(COLOR_SEED)  # a fresh draw per set, so each set is reproducible on its own
    if name == "animals":
        return [f"a {a} and a {b}" for a, b in itertools.combinations(ANIMALS, 2)]
    if name == "animals_objects":
        out = []
        for animal in ANIMALS:
            for obj in OBJECTS:
                out.append(f"a {animal} with a {obj}" if obj in WEARABLES
                           else f"a {animal} and a {rng.choice(COLORS)} {obj}")
        return out
    if name == "objects":
        pairs = itertools.combinations(OBJECTS, 2)
        return [f"a {rng.choice(COLORS)} {a} and a {rng.choice(COLORS)} {b}" for a, b in pairs]
    raise ValueError(f"unknown prompt set {name!r}; choose from {', '.join(SET_NAMES)}")


def object_prompts(prompt: str) -> list[str]:
    """The sub-prompts whose CLIP similarities the minimum-object score takes the minimum of.

    A&E's rule (metrics/compute_clip_similarity.py): split at " and " if the prompt has one, else at " with ":
    "a monkey and a red car" -> ["a monkey", "a red car"], "a horse with a glasses" -> ["a horse", "a glasses"].
    """
    for sep in (" and ", " with "):
        if sep in prompt:
            return [part.strip() for part in prompt.split(sep)]
    raise ValueError(f"cannot split {prompt!r} into objects: it has neither ' and ' nor ' with '")


def read_prompt_file(path: Path) -> list[str]:
    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def load_set(name: str, directory: Path | None = None) -> PromptSet:
    """A set from `directory/<name>.txt` (default: the shipped files)."""
    if name not in SET_NAMES:
        raise ValueError(f"unknown prompt set {name!r}; choose from {', '.join(SET_NAMES)}")
    path = Path(directory or PROMPT_DIR) / f"{name}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"prompt set {name!r}: no file {path}")
    prompts = read_prompt_file(path)
    for p in prompts:
        object_prompts(p)  # fail on load, not after hours of sampling
    digest = hashlib.sha256("\n".join(prompts).encode("utf-8")).hexdigest()
    return PromptSet(name=name, prompts=tuple(prompts), source=str(path), digest=digest)


def write_sets(directory: Path = PROMPT_DIR) -> list[Path]:
    """Write the generated sets with their source header; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name in SET_NAMES:
        prompts = generate_set(name)
        header = SOURCE_HEADER.format(name=name, count=len(prompts), seed=COLOR_SEED)
        path = directory / f"{name}.txt"
        path.write_text(header + "\n".join(prompts) + "\n", encoding="utf-8")
        written.append(path)
    return written


def compare_with(name: str, other: list[str]) -> dict[str, int]:
    """How a generated set agrees with another list of the same set (e.g. the authors' file): exact lines, and
    lines that agree once colours are ignored."""
    ours = generate_set(name)
    no_color = re.compile(r"\b(" + "|".join(COLORS) + r") ")
    return {
        "ours": len(ours),
        "theirs": len(other),
        "same_lines_in_order": sum(a == b for a, b in zip(ours, other, strict=False)),
        "same_prompts": len(set(ours) & set(other)),
        "same_ignoring_colours": len({no_color.sub("", p) for p in ours} & {no_color.sub("", p) for p in other}),
    }


if __name__ == "__main__":
    for written_path in write_sets():
        print(f"wrote {written_path}")
