"""Every T-SAM setting in one dataclass.

`AlignConfig`'s field metadata is the single table the UI labels, slider ranges, infotext keys, API argument
order and X/Y/Z axes are derived from: add a setting here and it appears everywhere; there is no second list.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

PAPER = "Paper"
OFFICIAL = "Official code"
PRESETS = (PAPER, OFFICIAL)
LOSS_FORMS = ("paper", "official")
# Refinement rules. "official" is the released code's loop: `for cnt in range(30)`, and at cnt == 20 it stops if the
# loss (of the 20th evaluation) is still above the threshold, else it goes on to 30 — so every refinement makes 20 or
# 30 updates (then the regular one). "while above" updates while the loss is above the threshold, at most the cap
# (Attend-and-Excite's rule; what this extension ran before it followed the released loop exactly).
REFINE_OFF, REFINE_OFFICIAL, REFINE_WHILE_ABOVE = "off", "official", "while above"
REFINE_RULES = (REFINE_OFF, REFINE_OFFICIAL, REFINE_WHILE_ABOVE)
OFFICIAL_REFINE_CHECK = 20  # the released loop's `cnt == 20`
# Memory modes of T-SAM's pass (the `low_memory` setting): gradient checkpointing on, off, or after an out-of-memory.
MEMORY_AUTO, MEMORY_ON, MEMORY_OFF = "auto", "on", "off"
MEMORY_MODES = (MEMORY_AUTO, MEMORY_ON, MEMORY_OFF)
RAN = " → "  # an infotext value may add what ran after the setting ("auto → low"); the setting is what precedes it


def _setting(default: Any, label: str, key: str, help: str, **spec: Any) -> Any:
    """A dataclass field whose metadata describes how a user sees and sets it."""
    return field(default=default, metadata={"label": label, "key": key, "help": help, **spec})


@dataclass
class AlignConfig:
    """T-SAM settings. The defaults are the paper's published method (`AlignConfig.paper()`)."""

    preset: str = _setting(
        PAPER, "Preset", "T-SAM preset",
        "Paper: the published equations (L1 loss, constant step, first half of the steps). Official code: the "
        "authors' released defaults (cosine loss, decaying step, iterative refinement; about 3x slower).",
        choices=PRESETS)
    loss_form: str = _setting(
        "paper", "Loss", "T-SAM loss",
        "paper: L1 between T and the row-normalised similarity matrix S (diagonal included). official: cosine "
        "distance between the rows of T and of the cosine matrix (strict lower triangle).",
        choices=LOSS_FORMS)
    power: float = _setting(
        4.0, "Power on T", "T-SAM power",
        "Sharpens the text self-attention target before row-normalising (paper 4, official code 3).",
        minimum=1.0, maximum=8.0, step=0.5)
    step_size: float = _setting(
        10.0, "Strength (step size)", "T-SAM strength",
        "How far each gradient step moves the latent. Higher follows the prompt's structure harder but can "
        "degrade the image (paper 10; 40 for long free-form prompts; official code 5).",
        minimum=0.0, maximum=100.0, step=0.5)
    step_decay: float = _setting(
        1.0, "Strength at the last optimised step", "T-SAM decay",
        "Step size at step i is strength * sqrt(linspace(1, this, N)[i]). 1 keeps it constant (paper); the "
        "official code decays to 0.5.",
        minimum=0.0, maximum=1.0, step=0.05)
    steps_fraction: float = _setting(
        0.5, "Optimised steps (fraction of sampling steps)", "T-SAM steps",
        "T-SAM adjusts the latent at the first fraction of the sampling steps, where layout is decided "
        "(paper 0.5, official code 0.6).",
        minimum=0.0, maximum=1.0, step=0.05)
    refine: str = _setting(
        REFINE_OFF, "Iterative refinement", "T-SAM refine",
        "At a few early steps, repeat the update. official: the released code's loop (20 updates; 10 more only if "
        "the loss is then at or below the threshold). while above: update while the loss is above the threshold, "
        "up to the cap.",
        choices=REFINE_RULES,
        # Infotexts written before the rule had a name say True/False; True then meant "while above".
        aliases={"true": REFINE_WHILE_ABOVE, "false": REFINE_OFF, "1": REFINE_WHILE_ABOVE, "0": REFINE_OFF})
    refine_at: tuple[float, ...] = _setting(
        (0.0, 0.2, 0.4), "Refinement at (fractions of the steps)", "T-SAM refine at",
        "Where refinement runs, as fractions of the sampling steps (official code: steps 0, 10, 20 of 50).",
        kind="floats")
    refine_iters: int = _setting(
        30, "Refinement iteration cap", "T-SAM refine iters",
        "The most update iterations one refinement may take.", minimum=1, maximum=100, step=1)
    refine_threshold: float = _setting(
        0.14, "Refinement threshold (per token)", "T-SAM refine threshold",
        "Refinement stops once the loss is at most this times (prompt tokens - 1).",
        minimum=0.0, maximum=1.0, step=0.01)
    smooth: bool = _setting(
        True, "Smooth attention maps", "T-SAM smooth",
        "Gaussian-smooth each token's cross-attention map (3x3, sigma 0.5) before comparing maps.")
    low_memory: str = _setting(
        MEMORY_AUTO, "Memory mode", "T-SAM memory",
        "on: the T-SAM pass recomputes the UNet's activations during its backward instead of keeping them (gradient "
        "checkpointing): same result, less memory, about 40 % more compute per update. off: never. auto: on when "
        "the normal pass would not fit in the GPU's free memory (estimated before the first update), and from an "
        "update where the GPU still runs out of memory.",
        choices=MEMORY_MODES,
        # Before the modes, the setting was a checkbox ("T-SAM low memory: True/False" in old infotexts).
        aliases={"true": MEMORY_ON, "1": MEMORY_ON, "yes": MEMORY_ON, "false": MEMORY_OFF, "0": MEMORY_OFF,
                 "no": MEMORY_OFF},
        old_keys=("T-SAM low memory",))

    # --- presets -------------------------------------------------------------------------------------------
    @classmethod
    def paper(cls, **overrides: Any) -> AlignConfig:
        """The published equations: L1 loss, gamma 4, constant alpha 10, first half of the steps, no refinement."""
        return cls(**overrides)

    @classmethod
    def official(cls, **overrides: Any) -> AlignConfig:
        """The official code's defaults: row cosine loss, k 3, alpha 5*sqrt(linspace(1, .5)), 30/50 steps, refine."""
        return cls(**{**OFFICIAL_VALUES, **overrides})

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> AlignConfig:
        if name == OFFICIAL:
            return cls.official(**overrides)
        if name == PAPER:
            return cls.paper(**overrides)
        raise ValueError(f"T-SAM: unknown preset {name!r}; choose one of {', '.join(PRESETS)}")

    def __post_init__(self) -> None:
        self.validate()

    # --- checking ------------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Coerce types (API callers send strings and ints) and raise ValueError with a readable message."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(f, getattr(self, f.name)))
            spec = f.metadata
            value = getattr(self, f.name)
            if "choices" in spec and value not in spec["choices"]:
                raise ValueError(f"T-SAM: {spec['label']} must be one of {', '.join(spec['choices'])}, not {value!r}")
            if "minimum" in spec and not (spec["minimum"] <= value <= spec["maximum"]):
                raise ValueError(
                    f"T-SAM: {spec['label']} must be between {spec['minimum']} and {spec['maximum']}, not {value}")
        if any(not 0.0 <= r <= 1.0 for r in self.refine_at):
            raise ValueError(f"T-SAM: refinement positions are fractions in [0, 1], got {self.refine_at}")

    # --- schedules -----------------------------------------------------------------------------------------
    def optimised_steps(self, total_steps: int) -> int:
        """How many of the first sampling steps get a gradient update (25 of 50 for the paper)."""
        return min(total_steps, int(round(self.steps_fraction * total_steps)))

    def step_size_at(self, step: int, total_steps: int) -> float:
        """alpha_i = strength * sqrt(1 + (decay - 1) * i / N); decay 1 is constant.

        The released code computes strength * sqrt(linspace(1, decay, len(scheduler.timesteps))[i]) on PNDM, whose
        50-step schedule has len 51 (it repeats one timestep), i.e. i / 50 for N = 50. Dividing by N (not N - 1)
        gives exactly its alpha values at N = 50 (alpha_29 = 4.2131 for strength 5, decay 0.5; linspace over N
        entries would give 4.1955), and the same shape at any other step count.
        """
        if total_steps <= 0:
            return self.step_size
        frac = 1.0 + (self.step_decay - 1.0) * step / total_steps
        return self.step_size * math.sqrt(frac)

    def refinement_steps(self, total_steps: int) -> set[int]:
        """Sampling steps at which refinement runs: {0, 10, 20} of 50, scaled to other step counts."""
        if self.refine == REFINE_OFF:
            return set()
        last = self.optimised_steps(total_steps)
        return {s for s in (int(round(r * total_steps)) for r in self.refine_at) if s < last}

    def with_preset(self, name: str) -> AlignConfig:
        """A copy that runs preset `name`: the settings a preset decides (`PRESET_FIELDS`) take its values, the
        others (refinement positions and cap, threshold, smoothing, memory) keep theirs. This is what "preset" means
        in an API dict on top of an infotext's settings and on an X/Y/Z axis."""
        preset = AlignConfig.from_preset(str(name))
        return self.replace(**{name_: getattr(preset, name_) for name_ in PRESET_FIELDS})

    def replace(self, **changes: Any) -> AlignConfig:
        """A copy with some settings changed (by field name), validated like any other."""
        return dataclasses.replace(self, **changes)

    # --- conversions (UI, API, infotext) --------------------------------------------------------------------
    @classmethod
    def settings(cls) -> tuple[dataclasses.Field, ...]:
        """The table: one dataclass field per setting, in UI / API order."""
        return dataclasses.fields(cls)

    def to_args(self) -> list[Any]:
        """Positional values in `settings()` order, as `ui()` returns components and the API sends args."""
        return [_to_plain(getattr(self, f.name)) for f in self.settings()]

    @classmethod
    def from_args(cls, args: Sequence[Any] | Mapping[str, Any]) -> AlignConfig:
        """Positional values (missing trailing ones keep the preset's defaults) or a dict of named settings.

        A dict may use field names or labels/infotext keys; unknown names are an error, not silently dropped.
        """
        if isinstance(args, Mapping):
            named = resolve_setting_names(args)
        else:
            fields_ = cls.settings()
            if len(args) > len(fields_):
                raise ValueError(f"T-SAM: expected at most {len(fields_)} settings, got {len(args)}")
            named = {f.name: v for f, v in zip(fields_, args, strict=False) if v is not None}
        preset = named.pop("preset", PAPER)
        return cls.from_preset(str(preset), **named)

    def infotext(self) -> dict[str, Any]:
        """Infotext entries for `p.extra_generation_params` (keys use only letters, digits, space, '-')."""
        return {f.metadata["key"]: _format(getattr(self, f.name)) for f in self.settings()}

    @classmethod
    def infotext_keys(cls) -> list[str]:
        return [f.metadata["key"] for f in cls.settings()]

    @classmethod
    def from_infotext(cls, params: Mapping[str, Any]) -> AlignConfig:
        """Inverse of `infotext()`; keys that are absent keep the preset's defaults."""
        named = {}
        for f in cls.settings():
            key = next((k for k in infotext_keys_of(f) if k in params), None)
            if key is not None:
                named[f.name] = params[key]
        preset = named.pop("preset", PAPER)
        return cls.from_preset(str(preset), **named)


def infotext_keys_of(f: dataclasses.Field) -> tuple[str, ...]:
    """The infotext key a setting is written under, then the keys older versions wrote it under."""
    return (f.metadata["key"], *f.metadata.get("old_keys", ()))


# What the "Official code" preset sets; the paper's values for these are the dataclass defaults. A preset decides
# exactly these settings (`with_preset`).
OFFICIAL_VALUES: dict[str, Any] = dict(preset=OFFICIAL, loss_form="official", power=3.0, step_size=5.0,
                                       step_decay=0.5, steps_fraction=0.6, refine=REFINE_OFFICIAL)
PRESET_FIELDS = tuple(OFFICIAL_VALUES)


def resolve_setting_names(args: Mapping[str, Any]) -> dict[str, Any]:
    """Named settings (field names, labels or infotext keys, any capitalisation) -> {field name: value}.
    A name that is not a setting is a ValueError listing the known ones (the switch and "Show attention" are not
    settings: `script_args` takes those out first)."""
    by_alias: dict[str, str] = {}
    for f in AlignConfig.settings():
        for alias in (f.name, f.metadata["key"], f.metadata["label"]):
            by_alias[alias.lower()] = f.name
    out: dict[str, Any] = {}
    for name, value in args.items():
        if str(name).strip().lower() not in by_alias:
            known = ", ".join(f.name for f in AlignConfig.settings())
            raise ValueError(f"T-SAM: unknown setting {name!r}; known: enabled, show_attention, {known}")
        out[by_alias[str(name).strip().lower()]] = value
    return out


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    kind = f.metadata.get("kind")
    default = f.default
    if isinstance(default, bool) and "aliases" not in f.metadata:
        return parse_bool(value, f.metadata["label"])  # its own message names the accepted words
    try:
        if kind == "floats":
            return parse_floats(value)
        if "choices" in f.metadata and isinstance(value, str) and RAN in value:
            value = value.split(RAN)[0]  # "auto → low": the setting, then what ran
        if "aliases" in f.metadata and str(value).strip().lower() in f.metadata["aliases"]:
            return f.metadata["aliases"][str(value).strip().lower()]
        if isinstance(default, int):
            number = float(value)
            if number != int(number):
                raise ValueError
            return int(number)
        if isinstance(default, float):
            number = float(value)
            if not math.isfinite(number):
                raise ValueError
            return number
        return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"T-SAM: {f.metadata['label']} got an unreadable value {value!r}") from None


TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")


def parse_bool(value: Any, name: str = "value") -> bool:
    """The one rule for every boolean we read (positional API args, named API args, infotext, X/Y/Z): a bool, 0/1,
    or one of true/false, yes/no, on/off, 1/0 in any capitalisation. Anything else is a ValueError naming `name`."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE_WORDS + FALSE_WORDS:
        return value.strip().lower() in TRUE_WORDS
    raise ValueError(f"T-SAM: {name} must be true or false (also yes/no, on/off, 1/0), not {value!r}")


def parse_floats(value: Any) -> tuple[float, ...]:
    """'0 0.2 0.4', '0, 0.2, 0.4' or [0, 0.2, 0.4] -> (0.0, 0.2, 0.4)."""
    if isinstance(value, str):
        parts: Iterable[Any] = value.replace(";", " ").replace(",", " ").split()
    else:
        parts = value
    return tuple(float(v) for v in parts)


def _format(value: Any) -> Any:
    if isinstance(value, tuple):
        # Space-separated: a comma would need quoting in A1111's comma-separated infotext.
        return " ".join(f"{v:g}" for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return value


def _to_plain(value: Any) -> Any:
    return _format(value) if isinstance(value, tuple) else value
