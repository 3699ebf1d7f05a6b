"""Means, standard errors, the paired comparison with plain SD, and the rule that fails a run.

Unit of analysis: the prompt. Each prompt's images are averaged over its seeds first; a set's mean is the mean of
those prompt means (with the same seeds for every prompt this equals A&E's mean over all images) and its standard
error is the sample standard deviation of the prompt means over sqrt(prompts). Seeds of one prompt are not
independent samples of the set, so they do not shrink the error as if they were.

Failing loudly: T-SAM and plain SD run the same prompts with the same seeds, so they are compared in pairs. For a
set, a T-SAM preset and a metric, d_p = (T-SAM's prompt mean - plain SD's prompt mean) for each prompt p,
delta = mean of d_p, SE(delta) = sd(d_p) / sqrt(prompts). T-SAM counts as worse when delta < -k * SE(delta)
(k = --fail-sigma, default 1: "worse than plain SD beyond its standard error"). Fewer than two prompts give no
standard error: that comparison is not judged.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

METRICS = ("full", "min_object")
METRIC_LABELS = {"full": "Full-prompt similarity", "min_object": "Minimum-object similarity"}
BASELINE = "plain"

# The paper's numbers (Kim, Esmaeili, Qiu, CVPR 2025, arXiv 2411.15236, its comparison on the Attend-and-Excite
# sets: SD 1.5, 64 seeds, two decimals), as the project's method notes transcribe them (objects / animals-objects).
# The paper gives no animals column. docs/evaluation.md shows the same table.
PAPER_SOURCE = "Kim, Esmaeili, Qiu, CVPR 2025 (arXiv 2411.15236), Attend-and-Excite comparison, SD 1.5, 64 seeds"
PAPER_NUMBERS: dict[tuple[str, str], dict[str, float]] = {
    ("objects", "full"): {"plain": 0.34, "tsam": 0.36},
    ("animals_objects", "full"): {"plain": 0.34, "tsam": 0.37},
    ("objects", "min_object"): {"plain": 0.25, "tsam": 0.28},
    ("animals_objects", "min_object"): {"plain": 0.26, "tsam": 0.28},
}


@dataclass(frozen=True)
class Score:
    """One image's scores (what the runner reads back from disk and CLIP measures)."""

    set_name: str
    index: int
    seed: int
    method: str
    full: float
    min_object: float

    def value(self, metric: str) -> float:
        return float(getattr(self, metric))


@dataclass(frozen=True)
class Summary:
    set_name: str
    method: str
    metric: str
    mean: float
    se: float  # nan with fewer than two prompts
    prompts: int
    images: int


@dataclass(frozen=True)
class Comparison:
    set_name: str
    method: str
    metric: str
    delta: float  # mean over prompts of (method - plain)
    se: float
    prompts: int
    worse: bool | None  # None: not judged (fewer than two prompts)


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error (sample sd / sqrt(n)); the error is nan for fewer than two values."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = math.fsum(values) / n
    if n < 2:
        return mean, math.nan
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def prompt_means(scores: Iterable[Score], metric: str) -> dict[tuple[str, str], dict[int, float]]:
    """(set, method) -> {prompt index: mean over that prompt's seeds}."""
    sums: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for s in scores:
        sums[(s.set_name, s.method, s.index)].append(s.value(metric))
    out: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    for (set_name, method, index), values in sums.items():
        out[(set_name, method)][index] = math.fsum(values) / len(values)
    return out


def summarize(scores: Sequence[Score]) -> list[Summary]:
    out = []
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for s in scores:
        counts[(s.set_name, s.method)] += 1
    for metric in METRICS:
        for (set_name, method), by_prompt in sorted(prompt_means(scores, metric).items()):
            mean, se = mean_se(list(by_prompt.values()))
            out.append(Summary(set_name, method, metric, mean, se, len(by_prompt), counts[(set_name, method)]))
    return out


def compare(scores: Sequence[Score], sigma: float = 1.0, baseline: str = BASELINE) -> list[Comparison]:
    """Every non-baseline method against the baseline, per set and metric, on the prompts both have."""
    out = []
    for metric in METRICS:
        means = prompt_means(scores, metric)
        for (set_name, method), by_prompt in sorted(means.items()):
            if method == baseline or (set_name, baseline) not in means:
                continue
            base = means[(set_name, baseline)]
            diffs = [by_prompt[i] - base[i] for i in sorted(by_prompt) if i in base]
            delta, se = mean_se(diffs)
            worse = None if math.isnan(se) else bool(delta < -sigma * se)
            out.append(Comparison(set_name, method, metric, delta, se, len(diffs), worse))
    return out


def failures(comparisons: Iterable[Comparison]) -> list[Comparison]:
    return [c for c in comparisons if c.worse]
