"""The evaluation command's parts with hand-made answers: prompt sets, CLIP score arithmetic, statistics, the rule
that fails a run, and the one-line setup errors. (End-to-end runs: test_evaluation_run.py.)"""

from __future__ import annotations

import importlib.util
import itertools
import math

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation import cli, metrics, prompt_sets, stats
from evaluation.metrics import ClipScorer, SetupError
from evaluation.stats import Score

# ---------------------------------------------------------------------------------------------------------------
# prompt sets


@pytest.mark.parametrize("name,count", [("animals", 66), ("animals_objects", 144), ("objects", 66)])
def test_shipped_sets_have_the_paper_sizes_and_equal_the_generator(name, count):
    shipped = prompt_sets.load_set(name)
    assert len(shipped) == count
    assert list(shipped.prompts) == prompt_sets.generate_set(name)
    assert len(set(shipped.prompts)) == count  # no duplicates
    header = [line for line in open(shipped.source, encoding="utf-8") if line.startswith("#")]
    assert "Attend-and-Excite" in header[0] and "arXiv 2301.13826" in "".join(header)


def test_sets_follow_the_templates():
    animals = prompt_sets.generate_set("animals")
    pairs = [tuple(p.removeprefix("a ").split(" and a ")) for p in animals]
    assert pairs == list(itertools.combinations(prompt_sets.ANIMALS, 2))

    mixed = prompt_sets.generate_set("animals_objects")
    withs = [p for p in mixed if " with " in p]
    assert len(withs) == 36 and {p.split()[-1] for p in withs} == {"glasses", "crown", "bow"}
    ands = [p.split() for p in mixed if " and " in p]
    assert len(ands) == 108 and all(w[4] in prompt_sets.COLORS for w in ands)
    assert {(p.split()[1], p.split()[-1]) for p in mixed} == set(itertools.product(prompt_sets.ANIMALS,
                                                                                   prompt_sets.OBJECTS))
    objects = [p.split() for p in prompt_sets.generate_set("objects")]
    assert [(w[2], w[6]) for w in objects] == list(itertools.combinations(prompt_sets.OBJECTS, 2))
    assert all(w[1] in prompt_sets.COLORS and w[5] in prompt_sets.COLORS for w in objects)


def test_object_sub_prompts_follow_the_split_rule():
    assert prompt_sets.object_prompts("a cat and a dog") == ["a cat", "a dog"]
    assert prompt_sets.object_prompts("a monkey and a red car") == ["a monkey", "a red car"]
    assert prompt_sets.object_prompts("a horse with a glasses") == ["a horse", "a glasses"]
    assert prompt_sets.object_prompts("a pink crown and a purple bow") == ["a pink crown", "a purple bow"]
    with pytest.raises(ValueError, match="cannot split"):
        prompt_sets.object_prompts("a cat")
    for name in prompt_sets.SET_NAMES:
        for p in prompt_sets.generate_set(name):
            assert len(prompt_sets.object_prompts(p)) == 2, p


def test_compare_with_counts_agreement_with_and_without_colours():
    ours = prompt_sets.generate_set("objects")
    recoloured = [p.replace(p.split()[1], "white" if p.split()[1] != "white" else "black", 1) for p in ours]
    report = prompt_sets.compare_with("objects", recoloured)
    assert report["same_prompts"] == 0 and report["same_ignoring_colours"] == 66


# ---------------------------------------------------------------------------------------------------------------
# metric arithmetic


def test_cosine_of_hand_made_vectors():
    v = torch.tensor([0.3, -1.2, 2.0])
    assert metrics.cosine(v, v) == pytest.approx(1.0, abs=1e-12)
    assert metrics.cosine(v, 5 * v) == pytest.approx(1.0, abs=1e-12)
    assert metrics.cosine(v, -v) == pytest.approx(-1.0, abs=1e-12)
    assert metrics.cosine(torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 2.0, 0.0])) == 0.0
    assert metrics.cosine(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0])) == pytest.approx(2**-0.5)


def test_minimum_object_takes_the_worst_object():
    assert metrics.minimum_object([0.31, 0.24]) == 0.24
    assert metrics.minimum_object([0.2, 0.2]) == 0.2
    with pytest.raises(ValueError):
        metrics.minimum_object([])


def test_template_texts_are_the_80_imagenet_templates_with_the_article_fixes():
    texts = metrics.template_texts("a cat and a dog")
    assert len(texts) == 80 == len(set(metrics.IMAGENET_TEMPLATES))
    assert texts[0] == "a bad photo of a cat and a dog."  # "a a cat" -> "a cat"
    assert texts[metrics.IMAGENET_TEMPLATES.index("a photo of the {}.")] == "a photo of a cat and a dog."
    assert texts[metrics.IMAGENET_TEMPLATES.index("a {} in a video game.")] == "a cat and a dog in a video game."


def test_averaged_embedding_normalises_before_and_after_the_mean():
    e = metrics.averaged_embedding(torch.tensor([[2.0, 0.0], [0.0, 3.0]]))
    assert e.tolist() == pytest.approx([2**-0.5, 2**-0.5])


def test_scorer_full_prompt_and_minimum_object_on_hand_made_embeddings():
    """Texts embed as word counts over (cat, dog, car); the image embeds as pure "cat". By hand: full prompt
    cos([1,0,0], [1,1,0]) = 1/sqrt(2); objects: "a cat" 1, "a dog" 0; minimum-object 0."""
    words = ("cat", "dog", "car")

    def encode_texts(texts):
        return torch.tensor([[float(t.split().count(w) + t.split().count(w + ".")) for w in words] for t in texts])

    scorer = ClipScorer("fake", 8, encode_texts, lambda pixels: torch.tensor([[1.0, 0.0, 0.0]] * len(pixels)))
    [score] = scorer.score([Image.new("RGB", (8, 8))], "a cat and a dog")
    assert score.objects == ["a cat", "a dog"]
    assert score.full == pytest.approx(2**-0.5)
    assert score.object_similarities == pytest.approx([1.0, 0.0], abs=1e-7)
    assert score.min_object == pytest.approx(0.0, abs=1e-7)


def test_preprocess_resizes_crops_and_normalises_like_clip():
    white = (1.0 - np.array(metrics.CLIP_MEAN)) / np.array(metrics.CLIP_STD)  # by hand: (1 - mean) / std
    px = metrics.preprocess(Image.new("RGB", (300, 200), "white"), 224)
    assert tuple(px.shape) == (3, 224, 224)
    assert px.mean(dim=(1, 2)).tolist() == pytest.approx(white.tolist(), abs=1e-5)
    # 672x224, black | white | black thirds: the short side is already 224, the centre crop is the white third.
    im = Image.new("RGB", (672, 224), "black")
    im.paste(Image.new("RGB", (224, 224), "white"), (224, 0))
    px = metrics.preprocess(im, 224)
    assert px.amin(dim=(1, 2)).tolist() == pytest.approx(white.tolist(), abs=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# statistics and the failing rule


def test_mean_and_standard_error_by_hand():
    mean, se = stats.mean_se([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    assert se == pytest.approx(math.sqrt(5 / 3) / 2)  # sample sd sqrt(5/3), over sqrt(4)
    assert math.isnan(stats.mean_se([0.3])[1])


def _scores(per_prompt: dict[str, list[list[float]]], set_name: str = "objects") -> list[Score]:
    """method -> [prompt][seed] values, used for both metrics."""
    return [Score(set_name, i, seed, method, v, v) for method, prompts in per_prompt.items()
            for i, seeds in enumerate(prompts) for seed, v in enumerate(seeds)]


def test_prompt_means_average_seeds_first():
    summary = stats.summarize(_scores({"plain": [[1.0, 3.0], [4.0, 4.0]]}))
    full = next(s for s in summary if s.metric == "full")
    assert (full.mean, full.prompts, full.images) == (3.0, 2, 4)  # prompt means 2 and 4
    assert full.se == pytest.approx(1.0)  # sd of (2, 4) = sqrt(2), over sqrt(2)


def test_failing_rule_on_injected_numbers():
    """Paired differences -0.5 and -1.5: delta -1, SE exactly 0.5. Worse when delta < -k * SE."""
    scores = _scores({"plain": [[1.0], [2.0]], "paper": [[0.5], [0.5]], "official": [[1.5], [2.5]]})
    by = {(c.method, c.metric): c for c in stats.compare(scores, sigma=1.0)}
    paper, official = by[("paper", "full")], by[("official", "full")]
    assert (paper.delta, paper.se, paper.prompts, paper.worse) == (-1.0, 0.5, 2, True)
    assert (official.delta, official.worse) == (0.5, False)
    assert {(c.method, c.metric) for c in stats.failures(stats.compare(scores))} == {("paper", "full"),
                                                                                       ("paper", "min_object")}
    # The boundary: -1 < -2 * 0.5 is false (not worse beyond 2 SE); just inside it, worse.
    assert not any(c.worse for c in stats.compare(scores, sigma=2.0))
    near = {(c.method, c.metric): c for c in stats.compare(scores, sigma=1.99)}
    assert near[("paper", "full")].worse and near[("paper", "min_object")].worse


def test_a_single_prompt_is_not_judged():
    [c, *_] = stats.compare(_scores({"plain": [[1.0, 1.0]], "paper": [[0.0, 0.0]]}))
    assert c.delta == -1.0 and math.isnan(c.se) and c.worse is None


def test_paper_numbers_are_the_quoted_table():
    p = stats.PAPER_NUMBERS
    assert [p[("objects", "full")][k] for k in ("plain", "tsam")] == [0.34, 0.36]
    assert [p[("animals_objects", "full")][k] for k in ("plain", "tsam")] == [0.34, 0.37]
    assert [p[("objects", "min_object")][k] for k in ("plain", "tsam")] == [0.25, 0.28]
    assert [p[("animals_objects", "min_object")][k] for k in ("plain", "tsam")] == [0.26, 0.28]
    assert ("animals", "full") not in p


# ---------------------------------------------------------------------------------------------------------------
# options and one-line setup errors


def test_seed_specs():
    assert cli.parse_seeds("3") == [0, 1, 2]
    assert cli.parse_seeds("0-3,10") == [0, 1, 2, 3, 10]
    assert cli.parse_seeds("7,") == [7]
    with pytest.raises(SetupError):
        cli.parse_seeds("a-b")
    assert [cli.seed_text(s) for s in ([0, 1, 2], [7], [1, 5, 9])] == ["0-2", "7", "1, 5, 9"]


def _error_of(capsys, *argv: str) -> str:
    assert cli.main(list(argv)) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_setup_errors_are_one_line(tmp_path, capsys):
    out = str(tmp_path / "out")
    assert "--ckpt" in _error_of(capsys, "--out", out)
    assert "no such file" in _error_of(capsys, "--ckpt", str(tmp_path / "none.safetensors"), "--out", out)
    assert "fp16 needs a CUDA GPU" in _error_of(capsys, "--tiny", "--device", "cpu", "--dtype", "fp16", "--out", out)
    if not torch.cuda.is_available():
        assert "no CUDA GPU" in _error_of(capsys, "--tiny", "--device", "cuda", "--out", out)
    assert "choose from" in _error_of(capsys, "--tiny", "--sets", "animals,plants", "--out", out)


def test_a_clip_that_is_not_here_is_a_one_line_error_with_a_fix(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # load_clip asks for local files only; this makes sure of it
    err = _error_of(capsys, "--tiny", "--clip", "nobody/no-such-clip", "--out", str(tmp_path / "o"), "--device", "cpu")
    assert "neither a local folder nor in the Hugging Face cache" in err and "huggingface-cli download" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "holds no transformers CLIP" in _error_of(capsys, "--tiny", "--clip", str(empty), "--out",
                                                     str(tmp_path / "o"), "--device", "cpu")


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="open_clip may import here")
def test_open_clip_without_torchvision_is_a_one_line_error():
    with pytest.raises(SetupError, match="open_clip cannot be imported.*torchvision") as e:
        metrics.load_clip("open_clip:ViT-B-16/openai")
    assert "\n" not in str(e.value)


def test_prompt_dir_reads_a_users_files(tmp_path):
    """--prompt-dir: e.g. the authors' own files (no header, no final newline); unsplittable lines are refused."""
    (tmp_path / "objects.txt").write_text("# a note\na purple balloon and a white clock\n\na red car and a bowl")
    got = prompt_sets.load_set("objects", tmp_path)
    assert got.prompts == ("a purple balloon and a white clock", "a red car and a bowl")
    assert got.digest != prompt_sets.load_set("objects").digest
    (tmp_path / "animals.txt").write_text("a cat\n")
    with pytest.raises(ValueError, match="cannot split"):
        prompt_sets.load_set("animals", tmp_path)
    with pytest.raises(FileNotFoundError):
        prompt_sets.load_set("animals_objects", tmp_path)
