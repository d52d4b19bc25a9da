"""The built-in easy-VQA source: columns, question types, deterministic order, real images; and the grader."""
import os

import pytest

from rlkit.data.easy_vqa import ANSWERS_BY_TYPE, TYPES, load_easy_vqa, question_type
from rlkit.drivers.vqa_eval import evaluate_vqa, exact_match


def test_columns_types_and_answers():
    ds = load_easy_vqa("test", limit=300, seed=0)
    assert len(ds) == 300
    assert {"prompt", "image", "answer", "type"} <= set(ds.column_names)
    assert set(ds["type"]) == set(TYPES)
    for row in ds:
        assert row["answer"] in ANSWERS_BY_TYPE[row["type"]]
        assert os.path.isabs(row["image"]) and row["image"].endswith(".png")


def test_question_type_rules():
    assert question_type("what color is the circle?", "red") == "color"
    assert question_type("what is the color of the shape?") == "color"
    assert question_type("what is the red shape?", "triangle") == "shape"
    assert question_type("what shape is present?") == "shape"
    assert question_type("is there not a blue shape?", "yes") == "yesno"
    with pytest.raises(ValueError, match="what color is the shape"):
        question_type("what color is the shape?", "circle")


def test_deterministic_by_seed_and_type_filter():
    a = load_easy_vqa("train", limit=50, seed=3)
    b = load_easy_vqa("train", limit=50, seed=3)
    c = load_easy_vqa("train", limit=50, seed=4)
    assert a["prompt"] == b["prompt"] and a["image"] == b["image"]
    assert a["prompt"] != c["prompt"] or a["image"] != c["image"]
    full = load_easy_vqa("test", seed=None)
    assert len(full) == 9673
    only = load_easy_vqa("test", types=["color", "shape"], seed=1, limit=100)
    assert set(only["type"]) == {"color", "shape"}
    # the first rows of a larger sample are the smaller sample (limit cuts one fixed permutation)
    assert load_easy_vqa("test", seed=0, limit=20)["prompt"] == load_easy_vqa("test", seed=0, limit=40)["prompt"][:20]
    with pytest.raises(ValueError, match="unknown easy-VQA question types"):
        load_easy_vqa("test", types=["colour"])
    with pytest.raises(ValueError, match="split"):
        load_easy_vqa("validation")


def test_counts_caps_each_type_in_the_seeded_order():
    full = load_easy_vqa("test", seed=5)
    mixed = load_easy_vqa("test", seed=5, counts={"color": None, "shape": 7, "yesno": 3})
    # hand-derived: every colour question of the test split (all of them kept), the first 7 shape and the
    # first 3 yes/no questions of the seed-5 permutation, in that permutation's order
    expect = []
    left = {"shape": 7, "yesno": 3}
    for r in full:
        if r["type"] == "color" or left[r["type"]] > 0:
            if r["type"] != "color":
                left[r["type"]] -= 1
            expect.append(r["prompt"] + r["image"])
    assert [r["prompt"] + r["image"] for r in mixed] == expect
    n_color = sum(t == "color" for t in full["type"])
    assert len(mixed) == n_color + 7 + 3
    assert sorted(set(load_easy_vqa("test", seed=5, counts={"shape": 4})["type"])) == ["shape"]
    with pytest.raises(ValueError, match="counts: unknown question types"):
        load_easy_vqa("test", counts={"colour": 3})


def test_images_exist_and_decode():
    from PIL import Image

    ds = load_easy_vqa("train", limit=8, seed=0)
    for path in ds["image"]:
        with Image.open(path) as im:
            im = im.convert("RGB")
            assert im.size == (64, 64)


def test_normalised_exact_match():
    assert exact_match("  Red. ", "red")
    assert exact_match("<think>\nit is blue\n</think>\n\nYes!", "yes")
    assert not exact_match("<think>it is blue", "blue")  # unfinished reasoning: no answer
    assert exact_match("Circle", "circle")
    assert not exact_match("red circle", "circle")
    assert not exact_match("", "no")


def test_evaluate_vqa_counts_per_type():
    rows = [
        {"prompt": "q1", "image": None, "answer": "red", "type": "color"},
        {"prompt": "q2", "image": None, "answer": "yes", "type": "yesno"},
        {"prompt": "q3", "image": None, "answer": "no", "type": "yesno"},
    ]
    answers = {"q1": "Red", "q2": "</think> yes.", "q3": "yes"}
    res = evaluate_vqa(lambda items: [answers[it["prompt"]] for it in items], rows, batch_size=2)
    assert res["n"] == 3
    assert res["accuracy"] == pytest.approx(2 / 3)
    assert res["by_type"] == {"color": {"accuracy": 1.0, "n": 1}, "yesno": {"accuracy": 0.5, "n": 2}}


def test_demo_cold_start_split():
    from rlkit.data.easy_vqa import load_easy_vqa_cold_start

    ds = load_easy_vqa_cold_start(seed=0, counts={"color": 40, "shape": 30, "yesno": 200})
    assert len(ds) == 270
    by = {t: [r for r in ds if r["type"] == t] for t in TYPES}
    assert [len(by[t]) for t in TYPES] == [40, 30, 200]
    assert all(r["answer"] == r["true_answer"] and r["label"] == "true" for r in by["color"] + by["shape"])
    yn = by["yesno"]
    assert all(r["label"] == "random" and r["answer"] in ("yes", "no") for r in yn)
    agree = sum(r["answer"] == r["true_answer"] for r in yn) / len(yn)
    assert 0.35 < agree < 0.65  # coin flips, not the real labels
    again = load_easy_vqa_cold_start(seed=0, counts={"color": 40, "shape": 30, "yesno": 200})
    assert again["answer"] == ds["answer"] and again["prompt"] == ds["prompt"]
