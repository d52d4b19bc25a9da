"""The recipe in one piece (examples/recipe, docs/recipe.md): its rows, held-out graders and table on hand-derived
cases; the per-row reward routing it relies on (exact match on rule rows via `answer_key`, RLPR on free rows via
rlpr's `answer_key`, each None on the other rows) through the real RewardScorer and a tiny policy; its config."""
import importlib.util
import math
import pathlib
import sys
import types

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("recipe_run", ROOT / "examples/recipe/run.py")
run = importlib.util.module_from_spec(spec)
sys.modules["recipe_run"] = run  # dataclasses look their module up
spec.loader.exec_module(run)  # puts examples/recipe and examples/rlaifv on sys.path
T = run.T

IMG = "/nonexistent/a.png"  # the pure functions never open images


# ------------------------------------------------------------------------------------------------ rows
def test_held_rows_alternate_attributes_and_kinds():
    rows = T.held_rows([("a.png", "red", "circle"), ("b.png", "blue", "triangle")])
    assert [(r["kind"], r["attribute"], r["answer"]) for r in rows] == [
        ("rule", "color", "red"), ("free", "shape", "circle"), ("rule", "shape", "triangle"), ("free", "color", "blue")]
    assert [r["prompt"] for r in rows] == ["what color is the shape?", "Say in a sentence what shape is in the image.",
                                           "what shape is in the image?", "Say in a sentence what color the shape is."]
    # each reward's column holds a value only on its own rows; free rows are pinned to deep mode
    assert [(r["rule_answer"], r["reference"], r["mode"]) for r in rows] == [
        ("red", None, None), (None, "circle", "deep"), ("triangle", None, None), (None, "blue", "deep")]


def test_grpo_rows_one_rule_and_one_free_row_per_image_about_different_attributes():
    train = [(f"{i}.png", "green", "rectangle") for i in range(20)]
    rows = T.grpo_rows(train, seed=0)
    assert len(rows) == 40 and "reasoning" not in rows[0]
    for rule, free in zip(rows[::2], rows[1::2]):
        assert rule["kind"] == "rule" and free["kind"] == "free" and rule["image"] == free["image"]
        assert {rule["attribute"], free["attribute"]} == {"color", "shape"}
        assert rule["answer"] == rule["rule_answer"] == ("green" if rule["attribute"] == "color" else "rectangle")
        assert free["answer"] == free["reference"] and free["rule_answer"] is None and rule["reference"] is None
    assert {r["attribute"] for r in rows[::2]} == {"color", "shape"}  # the attribute is drawn per image


def test_grpo_rows_sentence_references():
    rows = T.grpo_rows([("0.png", "green", "rectangle"), ("1.png", "green", "rectangle")], seed=0, reference="sentence")
    free = [r for r in rows if r["kind"] == "free"]
    assert {r["reference"] for r in free} <= {"It is green.", "It is a rectangle."}
    assert all(r["answer"] == r["reference"] for r in free)
    assert [r["rule_answer"] for r in rows if r["kind"] == "rule"] == [r["rule_answer"] for r in T.grpo_rows(
        [("0.png", "green", "rectangle"), ("1.png", "green", "rectangle")], seed=0) if r["kind"] == "rule"]
    with pytest.raises(ValueError, match="reference must be one of word, sentence"):
        T.grpo_rows([], seed=0, reference="phrase")


def test_cold_rows_targets():
    from rewards.basic import exact_match

    train = [(f"{i}.png", "teal", "triangle") for i in range(10)]
    rows = T.cold_rows(train, seed=0)
    assert len(rows) == 10 * (2 * 2 + 1)  # (rule + free) x (fast, deep) + one description per image
    deep = [r for r in rows if r["mode"] == "deep"]
    assert len(deep) == 20
    for r in deep:
        assert r["answer"].startswith("<think>\nThe image shows a teal triangle.\n</think>\n\n")
    desc = [r for r in rows if r["prompt"] == "Describe the image."]
    assert [r["answer"] for r in desc] == ["The color is teal. The shape is a triangle."] * 10
    assert all(r["mode"] == "fast" for r in desc)
    free = [r for r in rows if r.get("kind") == "free"]
    # the paraphrase targets: right by the held-out judge, refused by exact match (the RLPR setting)
    assert {T.judge_free(r["answer"], r["attribute"], "teal", "triangle") for r in free} == {1.0}
    assert set(exact_match([r["prompt"] for r in free], [r["answer"] for r in free],
                           answer=[r["reference"] for r in free])) == {0.0}
    rule = [r for r in rows if r.get("kind") == "rule" and r["mode"] == "fast"]
    assert {r["answer"] for r in rule} <= {"teal", "triangle"}


# ------------------------------------------------------------------------------------------------ graders
@pytest.mark.parametrize("text,attr,expected", [
    ("<think>\nThe image shows a red circle.\n</think>\n\nIt is red.", "color", 1.0),
    ("I think it is red.", "color", 1.0),
    ("The color is not red.", "color", 0.0),          # the true value negated
    ("It is red or blue.", "color", 0.0),             # names a wrong colour too
    ("It is a red triangle.", "color", 0.0),          # right colour, wrong shape
    ("The shape is a circle.", "color", 0.0),         # does not name the colour
    ("<think>\nThe image shows a red circle.", "color", 0.0),  # unclosed think block: no answer
    ("<think>\nblue\n</think>\n\nA circle, I think.", "shape", 1.0),  # the think block is not graded
    ("It is a circle.", "shape", 1.0),
    ("circles", "shape", 1.0),                         # plural normalised
])
def test_judge_free(text, attr, expected):
    assert T.judge_free(text, attr, "red", "circle") == expected


def test_score_and_breakdown():
    rows = T.held_rows([("a.png", "red", "circle"), ("b.png", "blue", "triangle")])
    texts = ["Red.", "It is a circle.", "circle", "<think>\nx\n</think>\n\nIt is blue."]
    scores = T.score(rows, texts)
    assert scores == [1.0, 1.0, 0.0, 1.0]  # exact match (case, punctuation) / judge / exact match / judge
    assert T.score(rows[:1], ["It is red."]) == [0.0]  # a sentence on a rule row: exact match refuses it
    b = T.breakdown(rows, scores)
    assert b["all"] == {"accuracy": 0.75, "n": 4}
    assert b["rule"] == {"accuracy": 0.5, "n": 2} and b["free"] == {"accuracy": 1.0, "n": 2}
    assert b["color"] == {"accuracy": 1.0, "n": 2} and b["shape"] == {"accuracy": 0.5, "n": 2}


# ------------------------------------------------------------------------------------------------ report
def test_mean_se_over_seeds():
    m, se = T.mean_se([0.2, 0.4])
    # sd = sqrt(((0.2-0.3)^2 + (0.4-0.3)^2) / 1) = sqrt(0.02); se = sd / sqrt(2) = 0.1
    assert m == pytest.approx(0.3) and se == pytest.approx(0.1)
    m, se = T.mean_se([0.5])
    assert m == 0.5 and math.isnan(se)


def _result(fast, deep, chair_i):
    acc = lambda a: {"all": {"accuracy": a, "n": 4}, "rule": {"accuracy": a, "n": 2}}  # noqa: E731
    return {"vqa": {"fast": acc(fast), "deep": acc(deep)},
            "hallucination": {"chair_i": chair_i, "chair_s": 0.5, "words": 9.0, "says_anything": 1.0}}


def test_table_rows_and_mean():
    results = {0: {"cold_start": _result(0.2, 0.5, 0.30), "grpo": _result(0.3, 0.6, 0.40)},
               1: {"cold_start": _result(0.4, 0.7, 0.50)}}
    text = T.table(results)
    lines = text.strip().splitlines()
    assert len(lines) == 2 + 3 + 1  # header, rule, three (seed, stage) rows, one mean row (cold start: 2 seeds)
    assert lines[2].startswith("| 0 | cold_start | 0.200 | 0.500 | 0.300 | 0.500 | 9.0 | 0.200 / - |")
    # cold start over seeds 0 and 1: fast (0.2, 0.4) -> 0.300 ± 0.100, deep (0.5, 0.7) -> 0.600 ± 0.100,
    # CHAIRi (0.3, 0.5) -> 0.400 ± 0.100
    assert lines[-1].startswith("| mean of 2 | cold_start | 0.300 ± 0.100 | 0.600 ± 0.100 | 0.400 ± 0.100 | "
                                "0.500 ± 0.000 | 9.0 ± 0.0 |")


def test_stages_to_run():
    every = ["cold_start", "grpo", "rlaifv"]
    assert T.stages_to_run(set(), set()) == every
    assert T.stages_to_run({"cold_start"}, set()) == ["grpo", "rlaifv"]
    assert T.stages_to_run(set(every), set()) == []
    assert T.stages_to_run(set(every), {"grpo"}) == ["grpo", "rlaifv"]  # a redone stage redoes the later ones
    assert T.stages_to_run({"cold_start", "rlaifv"}, set()) == ["grpo", "rlaifv"]  # a stale later result is redone


# ------------------------------------------------------------------------------------------------ config
def test_recipe_config_loads_and_names_a_bad_key():
    from rlkit.config import ConfigError

    recipe, grpo = run.load(ROOT / "examples/recipe/recipe.yaml", [])
    assert recipe.seeds == [0, 1] and grpo["modes"]["deep_ratio"] == 0.5
    names = {r["name"]: r.get("kwargs", {}).get("answer_key") for r in grpo["rewards"]}
    assert names == {"exact_match": "rule_answer", "rlpr": "reference", "format": None}
    with pytest.raises(ConfigError, match="grpo.rollout.nn"):
        run.load(ROOT / "examples/recipe/recipe.yaml", ["grpo.rollout.nn=3"])
    with pytest.raises(ConfigError, match="free_reference"):
        run.load(ROOT / "examples/recipe/recipe.yaml", ["free_reference=phrase"])
    with pytest.raises(ConfigError, match="cold_start.stpes"):
        run.load(ROOT / "examples/recipe/recipe.yaml", ["cold_start.stpes=3"])


# ------------------------------------------------------------------------------------------------ rewards by row
def test_rule_reward_and_rlpr_each_score_their_own_rows(tiny_text_path):
    """exact match (answer_key rule_answer) scores the rule rows and gives None on the free ones; rlpr (answer_key
    reference) the reverse; the total is the one reward that applies. rlpr's value on a free row equals rlpr
    called directly with that row's reference as `answer`."""
    from rewards import RewardScorer, RewardSpec
    from rewards.rlpr import RLPRState, WorkerPolicyAccess, rlpr
    from rlkit.policy.worker import PolicyWorker
    from rlkit.records import PromptRow
    from rlkit.step.modes import render_prompt

    w = PolicyWorker(tiny_text_path, micro_batch_size=4)
    tok = w.tokenizer
    prompts = ["What is 2 + 3?", "What is 4 + 4?", "What is 1 + 1? Say it in words.", "What is 3 + 3? Say it in words."]
    comps = ["<think>\n2 + 3 = 5\n</think>\n\n5", "<think>\n4 + 4 = 9\n</think>\n\n9",
             "<think>\n1 + 1 = 2\n</think>\n\nIt is two.", "<think>\n3 + 3 = 6\n</think>\n\nsix"]
    cols = {"rule_answer": ["5", "8", None, None], "reference": [None, None, "2", "6"], "answer": ["5", "8", "2", "6"],
            "mode": ["deep"] * 4, "completion_ids": [tok(c, add_special_tokens=False)["input_ids"] for c in comps],
            "prompt_text": [render_prompt(tok, PromptRow(0, p, [], None, {}), "deep") for p in prompts],
            "images": [[] for _ in prompts]}
    rlpr.state.reset()
    resources = types.SimpleNamespace(policy=WorkerPolicyAccess(w))
    specs = [RewardSpec(name="exact_match", kwargs={"answer_key": "rule_answer"}),
             RewardSpec(name="rlpr", kwargs={"answer_key": "reference"})]
    with RewardScorer(specs, timeout_s=60, strict=True, resources=resources, isolation="inline") as scorer:
        res = scorer(prompts, comps, cols)
    em, rl = res.per_reward["exact_match"], res.per_reward["rlpr"]
    assert em == [1.0, 0.0, None, None]
    assert rl[:2] == [None, None] and all(isinstance(v, float) for v in rl[2:])
    direct = rlpr(prompts[2:], comps[2:], resources=resources, answer=["2", "6"],
                  **{k: v[2:] for k, v in cols.items() if k not in ("answer", "rule_answer", "reference")},
                  state=RLPRState())
    assert rl[2:] == pytest.approx(direct, abs=1e-6)
    assert res.total == pytest.approx([1.0, 0.0, *direct], abs=1e-6)
    # a column that does not exist is named
    with pytest.raises(ValueError, match="answer_key 'refs' names no column"):
        rlpr(prompts, comps, resources=resources, answer_key="refs", **{k: v for k, v in cols.items() if k != "answer"},
             state=RLPRState())
