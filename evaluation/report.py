"""What a run writes besides the images: the per-image and per-prompt CSVs, the table, the grid, the report."""

from __future__ import annotations

import csv
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .prompt_sets import SET_NAMES
from .stats import METRIC_LABELS, METRICS, PAPER_NUMBERS, PAPER_SOURCE, Comparison, Score, Summary

SCORE_COLUMNS = ("set", "index", "prompt", "seed", "method", "full", "min_object", "object_1", "object_1_similarity",
                 "object_2", "object_2_similarity", "image")
PROMPT_COLUMNS = ("set", "index", "prompt", "method", "seeds", "full", "min_object")


@dataclass(frozen=True)
class ScoredImage:
    """One image on disk with its prompt and CLIP scores (one row of scores.csv)."""

    score: Score
    prompt: str
    objects: tuple[str, ...]
    object_similarities: tuple[float, ...]
    image: str  # path relative to the output folder


def _f(x: float) -> str:
    return "" if math.isnan(x) else f"{x:.6f}"


def write_scores_csv(rows: Sequence[ScoredImage], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(SCORE_COLUMNS)
        for r in rows:
            s = r.score
            objects = [x for pair in zip(r.objects, (_f(v) for v in r.object_similarities), strict=True) for x in pair]
            w.writerow([s.set_name, s.index, r.prompt, s.seed, s.method, _f(s.full), _f(s.min_object), *objects,
                        r.image])


def write_prompts_csv(rows: Sequence[ScoredImage], path: Path) -> None:
    """One row per prompt and method: the mean over that prompt's seeds (the unit the statistics use)."""
    groups: dict[tuple[str, int, str], list[ScoredImage]] = {}
    for r in rows:
        groups.setdefault((r.score.set_name, r.score.index, r.score.method), []).append(r)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(PROMPT_COLUMNS)
        for (set_name, index, method), group in groups.items():
            n = len(group)
            w.writerow([set_name, index, group[0].prompt, method, n,
                        _f(math.fsum(g.score.full for g in group) / n),
                        _f(math.fsum(g.score.min_object for g in group) / n)])


# ---------------------------------------------------------------------------------------------------------------
# the table


def _pm(mean: float, se: float) -> str:
    if math.isnan(mean):
        return "—"
    return f"{mean:.4f}" if math.isnan(se) else f"{mean:.4f} ± {se:.4f}"


def _signed(delta: float, se: float) -> str:
    if math.isnan(delta):
        return "—"
    return f"{delta:+.4f}" if math.isnan(se) else f"{delta:+.4f} ± {se:.4f}"


def table_rows(summaries: Sequence[Summary], comparisons: Sequence[Comparison], methods: Sequence[str],
               labels: dict[str, str]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the results table: one row per set and metric; ours (mean ± SE), T-SAM's difference from
    plain SD (paired, ± SE), the paper's plain SD and T-SAM beside them."""
    by_key = {(s.set_name, s.method, s.metric): s for s in summaries}
    cmp = {(c.set_name, c.method, c.metric): c for c in comparisons}
    sets = [n for n in SET_NAMES if any(s.set_name == n for s in summaries)]
    header = ["Set", "Metric", "Prompts × seeds"]
    header += [f"{labels[m]} (ours)" for m in methods]
    header += [f"{labels[m]} − plain" for m in methods[1:]]
    header += ["Paper: SD 1.5", "Paper: T-SAM"]
    rows = []
    for set_name in sets:
        for metric in METRICS:
            base = by_key.get((set_name, methods[0], metric))
            if base is None:
                continue
            seeds = base.images // max(base.prompts, 1)
            row = [set_name, METRIC_LABELS[metric], f"{base.prompts} × {seeds}"]
            for m in methods:
                s = by_key.get((set_name, m, metric))
                row.append(_pm(s.mean, s.se) if s else "—")
            for m in methods[1:]:
                c = cmp.get((set_name, m, metric))
                text = _signed(c.delta, c.se) if c else "—"
                if c is not None and c.worse:
                    text += " **worse**"
                row.append(text)
            paper = PAPER_NUMBERS.get((set_name, metric))
            row += [f"{paper['plain']:.2f}", f"{paper['tsam']:.2f}"] if paper else ["—", "—"]
            rows.append(row)
    return header, rows


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c).replace('**worse**', '<b>worse</b>')}</td>" for c in r)
                   + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# ---------------------------------------------------------------------------------------------------------------
# the grid


def image_grid(rows: Sequence[tuple[str, Sequence[Path]]], column_labels: Sequence[str],
               cell: int = 256) -> Image.Image:
    """Rows of images (one row per prompt: plain | Paper | Official), each row headed by its prompt."""
    font = ImageFont.load_default()
    pad, title_h, label_h = 4, 18, 16
    width = pad + len(column_labels) * (cell + pad)
    height = label_h + len(rows) * (title_h + cell + pad) + pad
    grid = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(grid)
    for c, label in enumerate(column_labels):
        draw.text((pad + c * (cell + pad), 2), label, fill="black", font=font)
    y = label_h
    for title, paths in rows:
        draw.text((pad, y + 3), title, fill="black", font=font)
        y += title_h
        for c, path in enumerate(paths):
            with Image.open(path) as im:
                grid.paste(im.convert("RGB").resize((cell, cell), Image.BICUBIC), (pad + c * (cell + pad), y))
        y += cell + pad
    return grid


# ---------------------------------------------------------------------------------------------------------------
# the report


def write_report(out: Path, header: Sequence[str], rows: Sequence[Sequence[str]], comparisons: Sequence[Comparison],
                 notes: Sequence[str], grid_files: Sequence[str], sigma: float, labels: dict[str, str]) -> list[Path]:
    """report.md and report.html in `out`; returns both paths."""
    verdict = verdict_lines(comparisons, sigma, labels)
    md = ["# T-SAM on the Attend-and-Excite prompt sets", ""]
    md += [f"- {n}" for n in notes] + [""]
    md += [markdown_table(header, rows), ""]
    md += [f"Ours: mean ± standard error over prompts (each prompt averaged over its seeds). Differences from plain "
           f"SD are paired (same prompts, same seeds). Paper: {PAPER_SOURCE}; — where the paper gives no number.", ""]
    md += ["## Check", ""] + [f"- {v}" for v in verdict] + [""]
    if grid_files:
        md += ["## Sample (first seed; columns: " + " | ".join(labels.values()) + ")", ""]
        md += [f"![{Path(g).stem}]({g})\n" for g in grid_files]
    md_path = Path(out) / "report.md"
    md_path.write_text("\n".join(md), encoding="utf-8")

    body = ["<h1>T-SAM on the Attend-and-Excite prompt sets</h1>", "<ul>"]
    body += [f"<li>{html.escape(n)}</li>" for n in notes] + ["</ul>", html_table(header, rows)]
    body += [f"<p>Ours: mean ± standard error over prompts (each prompt averaged over its seeds). Differences from "
             f"plain SD are paired (same prompts, same seeds). Paper: {html.escape(PAPER_SOURCE)}.</p>",
             "<h2>Check</h2>", "<ul>"] + [f"<li>{html.escape(v)}</li>" for v in verdict] + ["</ul>"]
    if grid_files:
        body += ["<h2>Sample (first seed; columns: " + html.escape(" | ".join(labels.values())) + ")</h2>"]
        body += [f'<p><img src="{html.escape(g)}" alt="{html.escape(Path(g).stem)}"></p>' for g in grid_files]
    style = "table{border-collapse:collapse}td,th{border:1px solid #aaa;padding:3px 6px}"
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>T-SAM evaluation</title><style>{style}"
            f"</style></head><body>{''.join(body)}</body></html>\n")
    html_path = Path(out) / "report.html"
    html_path.write_text(page, encoding="utf-8")
    return [md_path, html_path]


def verdict_lines(comparisons: Sequence[Comparison], sigma: float, labels: dict[str, str]) -> list[str]:
    """One line per comparison that failed or could not be judged, and a closing line."""
    lines = []
    for c in comparisons:
        name = f"{labels.get(c.method, c.method)} on {c.set_name}, {METRIC_LABELS[c.metric].lower()}"
        if c.worse:
            lines.append(f"WORSE: {name}: {c.delta:+.4f} vs plain SD, beyond {sigma:g} × its standard error "
                         f"{c.se:.4f} ({c.prompts} prompts)")
        elif c.worse is None:
            lines.append(f"not judged: {name}: {c.prompts} prompt(s), no standard error")
    if not any(c.worse for c in comparisons):
        judged = sum(c.worse is not None for c in comparisons)
        lines.append(f"OK: T-SAM is nowhere worse than plain SD beyond {sigma:g} × the standard error "
                     f"({judged} comparisons judged)")
    return lines
