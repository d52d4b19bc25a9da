"""The arith_chain source (the ablation's task): seeded, disjoint splits, answers and worked steps checked by
an independent reading of the prompt text (a regex and a signed sum; nothing is evaluated)."""
import re

import pytest

from rlkit.data import load_source
from rlkit.data.arith_chain import load_arith_chain, split_of

EXPR = re.compile(r"^What is (\d+(?: [+-] \d+)+)\? Answer with a number\.$")
STEP = re.compile(r"^(\d+) ([+-]) (\d+) = (-?\d+)$")


def parse(prompt):
    """(operands, operators) read from the prompt text."""
    m = EXPR.match(prompt)
    assert m, prompt
    parts = m.group(1).split(" ")
    return [int(x) for x in parts[0::2]], parts[1::2]


def signed_sum(operands, ops):
    return operands[0] + sum(b if op == "+" else -b for op, b in zip(ops, operands[1:]))


@pytest.fixture(scope="module")
def splits():
    return load_source("arith_chain", "train", limit=1500), load_source("arith_chain", "test", limit=600, seed=1)


def test_registered_columns_and_seeding(splits):
    train, _ = splits
    assert {"prompt", "answer", "reasoning", "terms"} <= set(train.column_names) and len(train) == 1500
    again = load_arith_chain("train", limit=50)
    assert again["prompt"] == train["prompt"][:50]  # same seed, same rows
    other = load_arith_chain("train", limit=50, seed=7)
    assert other["prompt"] != again["prompt"]
    assert len(set(train["prompt"])) == len(train)  # distinct within a split


def test_splits_are_disjoint_whatever_the_seeds(splits):
    train, test = splits
    assert not set(train["prompt"]) & set(test["prompt"])
    for seed in (0, 3):
        assert not set(load_arith_chain("train", limit=400, seed=seed)["prompt"]) & set(
            load_arith_chain("test", limit=400, seed=seed + 1)["prompt"])
    assert all(split_of(EXPR.match(p).group(1)) == "test" for p in test["prompt"])  # the hash decides the split


def test_answers_by_independent_computation(splits):
    for ds in splits:
        for row in ds:
            operands, ops = parse(row["prompt"])
            assert len(operands) == row["terms"] and 3 <= row["terms"] <= 4
            assert all(1 <= x <= 9 for x in operands)
            assert int(row["answer"]) == signed_sum(operands, ops)
            assert row["answer"] == str(int(row["answer"]))  # plain integer text


def test_reasoning_steps_are_consistent(splits):
    train, _ = splits
    for row in train:
        operands, ops = parse(row["prompt"])
        lines = row["reasoning"].split("\n")
        assert len(lines) == len(operands) - 1
        acc = operands[0]
        for line, op, b in zip(lines, ops, operands[1:]):
            m = STEP.match(line)
            assert m, line
            left, sym, right, result = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
            assert (left, sym, right) == (acc, op, b)  # each step continues from the previous result
            assert result == (left + right if sym == "+" else left - right)
            assert 0 <= result <= 19  # partial results stay within max_value
            acc = result
        assert str(acc) == row["answer"]  # the last step's result is the answer


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="split"):
        load_arith_chain("validation")
    with pytest.raises(ValueError, match="ops"):
        load_arith_chain("train", ops="*")
    with pytest.raises(ValueError, match="distinct"):
        load_arith_chain("train", size=5000, min_terms=2, max_terms=2)  # only ~100 two-term chains exist


# ------------------------------------------------------------------ the task mix (issue 20) and the fixed held-out seed
def test_easy_share_is_exact_and_easy_rows_are_single_facts():
    ds = load_arith_chain("train", limit=300, easy_share=0.3, min_terms=4, max_terms=5)
    kinds = ds["kind"]
    assert kinds.count("easy") == 90 and kinds.count("hard") == 210  # round(0.3 * 300) easy, the rest hard
    assert set(kinds[:50]) == set(kinds[-50:]) == {"easy", "hard"}  # interleaved, not two blocks
    for row in ds:
        operands, ops = parse(row["prompt"])
        assert int(row["answer"]) == signed_sum(operands, ops) and 0 <= int(row["answer"]) <= 19
        if row["kind"] == "easy":
            assert len(operands) == 2 == row["terms"] and 1 <= operands[0] <= 19 and 1 <= operands[1] <= 9
            assert row["reasoning"] == f"{operands[0]} {ops[0]} {operands[1]} = {row['answer']}"
        else:
            assert 4 <= len(operands) == row["terms"] <= 5 and all(1 <= x <= 9 for x in operands)
    hard = [p for p, k in zip(ds["prompt"], kinds) if k == "hard"]
    assert len(set(hard)) == len(hard)  # hard rows stay distinct; easy facts repeat (few of them)


def test_easy_facts_count_and_split():
    from rlkit.data.arith_chain import easy_facts

    train, test = easy_facts("train"), easy_facts("test")
    # a + b <= 19 with a in 1..19, b in 1..9: 9 each for a = 1..10, then 8..1 for a = 11..18 -> 90 + 36 = 126;
    # a - b >= 0: a for a = 1..9 (45), then 9 each for a = 10..19 (90) -> 135; 261 in all, split by the hash
    assert len(train) + len(test) == 261 and not set(train) & set(test) and 30 < len(test) < 80
    ds = load_arith_chain("test", limit=200, easy_share=1.0)
    assert {tuple(parse(p)[0]) + tuple(parse(p)[1]) for p in ds["prompt"]} <= {(a, b, op) for a, op, b in test}


def test_test_seed_fixes_the_held_out_rows_only():
    kw = dict(limit=100, easy_share=0.5, min_terms=4, max_terms=5, test_seed=20)
    assert load_arith_chain("test", seed=0, **kw)["prompt"] == load_arith_chain("test", seed=2, **kw)["prompt"]
    assert load_arith_chain("test", seed=0, **kw)["prompt"] != load_arith_chain("test", seed=0, **{**kw, "test_seed": 21})["prompt"]
    assert load_arith_chain("train", seed=0, **kw)["prompt"] != load_arith_chain("train", seed=2, **kw)["prompt"]


def test_no_mix_gives_the_earlier_rows():
    # the first rows of the generator before the mix existed (main at the time of issue 20)
    assert load_arith_chain("train", limit=3)["prompt"] == [
        "What is 8 - 3 + 6? Answer with a number.", "What is 2 - 1 + 4? Answer with a number.",
        "What is 9 - 4 + 4 + 9? Answer with a number."]
    assert set(load_arith_chain("train", limit=50)["kind"]) == {"hard"}
    with pytest.raises(ValueError, match="easy_share"):
        load_arith_chain("train", easy_share=1.5)
