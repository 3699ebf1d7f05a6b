"""Mirrors modules/prompt_parser.py on the parts the stand-in uses.

Simplified: the host parses prompt editing with a lark grammar (nesting, alternation `[a|b]`, hires steps); here only
non-nested `[from:to:when]`, `[to:when]` and `[from::when]` are understood, with the host's new-scheduling rule
(a fraction `when` is `int(when * steps)`, a whole number is a step). Emphasis parsing and AND/weights follow the
host's rules, written independently. SDXL's dict conds ({"crossattn", "vector"}) are scheduled and batched as the
host does: one dict per schedule entry, stacked per key into a DictWithShape whose `.shape` is the crossattn shape.
"""

from __future__ import annotations

import re
from collections import namedtuple

import torch

re_edit = re.compile(r"\[([^\[\]:]*?)(?::([^\[\]:]*))?:\s*([0-9]*\.?[0-9]+)\s*\]")
re_and = re.compile(r"\bAND\b")
re_weight = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")
re_break = re.compile(r"\s*\bBREAK\b\s*", re.S)
re_attention = re.compile(r"\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:", re.X)

ScheduledPromptConditioning = namedtuple("ScheduledPromptConditioning", ["end_at_step", "cond"])


class SdConditioning(list):
    """A list of prompts with the image size attached (the host passes this to the cond functions); unset fields
    are copied from `copy_from` (default: `prompts`), so the size and the negative flag reach SDXL's
    get_learned_conditioning through the schedule and AND splitting."""

    def __init__(self, prompts, is_negative_prompt=False, width=None, height=None, copy_from=None):
        super().__init__()
        self.extend(prompts)
        if copy_from is None:
            copy_from = prompts
        self.is_negative_prompt = is_negative_prompt or getattr(copy_from, "is_negative_prompt", False)
        self.width = width or getattr(copy_from, "width", None)
        self.height = height or getattr(copy_from, "height", None)


def get_learned_conditioning_prompt_schedules(prompts, base_steps, hires_steps=None, use_old_scheduling=False):
    """[[end_at_step, text], ...] per prompt: the text in force up to and including each end step."""
    steps = base_steps
    out = []
    for prompt in prompts:
        edits = list(re_edit.finditer(prompt))
        whens = []
        for m in edits:
            raw = m.group(3)
            value = float(raw) * steps if "." in raw else float(raw)
            whens.append(min(steps, int(value)))
        bounds = sorted({w for w in whens if w >= 1} | {steps})
        schedule = []
        for bound in bounds:
            text, last = [], 0
            for m, when in zip(edits, whens, strict=True):
                before, after = (m.group(1), m.group(2)) if m.group(2) is not None else ("", m.group(1))
                text += [prompt[last:m.start()], before if bound <= when else after]
                last = m.end()
            text.append(prompt[last:])
            schedule.append([bound, "".join(text)])
        out.append(schedule)
    return out


def parse_prompt_attention(text):
    """'a (b:1.5) [c]' -> [['a ', 1.0], ['b', 1.5], [' ', 1.0], ['c', 1/1.1]]; BREAK becomes ['BREAK', -1]."""
    res: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def scale(start, factor):
        for item in res[start:]:
            item[1] *= factor

    for m in re_attention.finditer(text):
        token, weight = m.group(0), m.group(1)
        if token.startswith("\\") and len(token) == 2:
            res.append([token[1], 1.0])
        elif token == "(":
            round_open.append(len(res))
        elif token == "[":
            square_open.append(len(res))
        elif weight is not None and round_open:
            scale(round_open.pop(), float(weight))
        elif token == ")" and round_open:
            scale(round_open.pop(), 1.1)
        elif token == "]" and square_open:
            scale(square_open.pop(), 1 / 1.1)
        else:
            for i, part in enumerate(re_break.split(token)):
                if i > 0:
                    res.append(["BREAK", -1])
                res.append([part, 1.0])
    for start in round_open:
        scale(start, 1.1)
    for start in square_open:
        scale(start, 1 / 1.1)
    if not res:
        return [["", 1.0]]
    merged = [res[0]]
    for item in res[1:]:
        if item[1] == merged[-1][1] and item[1] != -1:
            merged[-1][0] += item[0]
        else:
            merged.append(item)
    return merged


def get_learned_conditioning(model, prompts, steps, hires_steps=None, use_old_scheduling=False):
    """Per prompt, the schedule of conds [(end_at_step, cond [tokens, dim])]."""
    res = []
    for schedule in get_learned_conditioning_prompt_schedules(prompts, steps, hires_steps, use_old_scheduling):
        texts = SdConditioning([text for _, text in schedule], copy_from=prompts)
        conds = model.get_learned_conditioning(texts)
        res.append([ScheduledPromptConditioning(end, _row(conds, i)) for i, (end, _) in enumerate(schedule)])
    return res


def _row(conds, i):
    """Row i of a batch of conds: a tensor row, or for SDXL's dict a dict of rows."""
    return {k: v[i] for k, v in conds.items()} if isinstance(conds, dict) else conds[i]


def get_multicond_prompt_list(prompts):
    """AND splits a prompt into sub-prompts with weights (`a AND b :0.5`)."""
    res_indexes, index_of = [], {}
    flat = SdConditioning(prompts)  # the host keeps the size and flags on the flat list of sub-prompts
    flat.clear()
    for prompt in prompts:
        indexes = []
        for sub in re_and.split(prompt):
            m = re_weight.search(sub)
            text, weight = (m.group(1), float(m.group(2))) if m and m.group(2) is not None else (sub, 1.0)
            if text not in index_of:
                index_of[text] = len(flat)
                flat.append(text)
            indexes.append((index_of[text], weight))
        res_indexes.append(indexes)
    return res_indexes, flat, index_of


class ComposableScheduledPromptConditioning:
    def __init__(self, schedules, weight=1.0):
        self.schedules = schedules
        self.weight = weight


class MulticondLearnedConditioning:
    def __init__(self, shape, batch):
        self.shape = shape
        self.batch = batch


def get_multicond_learned_conditioning(model, prompts, steps, hires_steps=None, use_old_scheduling=False):
    res_indexes, flat, _ = get_multicond_prompt_list(prompts)
    learned = get_learned_conditioning(model, flat, steps, hires_steps, use_old_scheduling)
    batch = [[ComposableScheduledPromptConditioning(learned[i], w) for i, w in indexes] for indexes in res_indexes]
    return MulticondLearnedConditioning(shape=(len(prompts),), batch=batch)


def _pick(schedules, current_step):
    for entry in schedules:
        if current_step <= entry.end_at_step:
            return entry.cond
    return schedules[-1].cond


class DictWithShape(dict):
    """SDXL's batched conds; `.shape` is the crossattn shape, so code written for tensors can compare lengths."""

    def __init__(self, x, shape=None):
        super().__init__()
        self.update(x)

    @property
    def shape(self):
        return self["crossattn"].shape


def _stack_padded(tensors):
    """Rows of different token counts are padded by repeating their last vector, as the host does; SDXL's dicts
    are stacked per key (a 1-D `vector` has the same length in every row, so it is never padded)."""
    if isinstance(tensors[0], dict):
        return DictWithShape({k: _stack_padded([t[k] for t in tensors]) for k in tensors[0]})
    count = max(t.shape[0] for t in tensors)
    padded = [t if t.shape[0] == count else torch.vstack([t, t[-1:].repeat(count - t.shape[0], 1)]) for t in tensors]
    return torch.stack(padded)


def reconstruct_cond_batch(c, current_step):
    return _stack_padded([_pick(schedules, current_step) for schedules in c])


def reconstruct_multicond_batch(c, current_step):
    tensors, conds_list = [], []
    for composable_prompts in c.batch:
        conds_for_batch = []
        for composable in composable_prompts:
            conds_for_batch.append((len(tensors), composable.weight))
            tensors.append(_pick(composable.schedules, current_step))
        conds_list.append(conds_for_batch)
    return conds_list, _stack_padded(tensors)
