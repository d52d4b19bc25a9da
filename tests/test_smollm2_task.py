"""The SmolLM2 demo's task (examples/smollm2/task.py) and its summary (run.py): hand-derived values, no model."""
import importlib.util
import math
import pathlib
import sys

import pytest

EX = pathlib.Path(__file__).resolve().parents[1] / "examples" / "smollm2"


def _load(name):
    sys.path.insert(0, str(EX))
    try:
        spec = importlib.util.spec_from_file_location(f"smollm2_{name}", EX / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(EX))


task = _load("task")


class Scripted:
    """A stand-in for random.Random that returns scripted draws, so the problem is known by hand."""

    def __init__(self, draws):
        self.draws = list(draws)

    def random(self):
        return self.draws.pop(0)

    def randint(self, lo, hi):
        v = self.draws.pop(0)
        assert lo <= v <= hi, (lo, v, hi)
        return v

    def choice(self, seq):
        v = self.draws.pop(0)
        assert v in seq
        return v


@pytest.mark.parametrize("draws,prompt,answer", [
    ([0.7, 58, "+", 0.9, 98], "Calculate 58 + 98.", "156"),       # two 2-digit operands
    ([0.1, 7, "-", 0.6, 23], "Calculate 7 - 23.", "-16"),         # 1-digit minus 2-digit: negative
    ([0.2, 9, "*", 0.5, 12], "Calculate 9 * 12.", "108"),         # random() == 0.5 is not < 0.5: two digits
    ([0.3, 0, "*", 0.4, 6], "Calculate 0 * 6.", "0"),
])
def test_problem_by_hand(draws, prompt, answer):
    rng = Scripted(draws)
    assert task.problem(rng) == {"prompt": prompt, "answer": answer}
    assert rng.draws == []


def test_splits_are_fixed_distinct_and_disjoint():
    train, test = task.splits(500, 200)
    assert len(train) == 500 and len(test) == 200
    tr, te = [p["prompt"] for p in train], [p["prompt"] for p in test]
    assert len(set(tr)) == 500 and len(set(te)) == 200 and not set(tr) & set(te)
    assert task.splits(500, 200) == (train, test)                 # the seeds fix them
    assert task.splits(100, 200)[1] == test                       # the held-out split does not depend on n_train
    for p in test + train:                                        # every answer is the arithmetic of its question
        _, a, op, b = p["prompt"].rstrip(".").split()
        a, b = int(a), int(b)
        assert 0 <= a <= 99 and 0 <= b <= 99
        assert int(p["answer"]) == {"+": a + b, "-": a - b, "*": a * b}[op]


def test_standard_errors_by_hand():
    assert task.binomial_se(0.2, 100) == pytest.approx(0.04, abs=1e-12)            # sqrt(.2*.8/100)
    assert task.diff_se(0.2, 100, 0.5, 100) == pytest.approx(math.sqrt(0.0041), abs=1e-12)  # .04^2 + .05^2


def test_final_number_by_hand():
    texts = ["63 + 8 = 71.", "The result of 58 + 98 is", "7 - 23 = -16", "The answer is 108.", "1,234 apples",
             "It is 71, not 17", "no digits here", "58 \u2212 98 = \u221240", "3.0", "71.5"]
    gold = ["71", "156", "-16", "108", "1234", "71", "5", "-40", "3", "71"]
    assert [task.last_number(t) for t in texts] == ["71", "98", "-16", "108", "1234", "17", None, "-40", "3.0",
                                                    "71.5"]
    assert task.final_number([""] * 10, texts, answer=gold) == [1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0]
    assert task.final_number([""], ["7"], answer=[None]) == [None]
    assert task.final_number([""], ["9" * 5000], answer=["9"]) == [0.0]          # bounded: no huge int() parse


def test_math_accuracy_would_pay_for_restating_the_question():
    """Why the task has its own grader: math-verify evaluates the restated question's expression."""
    from rewards import math_accuracy

    assert math_accuracy([""], ["The result of 58 + 98 is"], answer=["156"]) == [1.0]


def test_summary_by_hand():
    run = _load("run")
    metrics = [{"step": 0, "eval/fast/accuracy": 0.2, "eval/fast/n": 100},
               {"step": 1, "reward/mean": 0.25, "time/step_s": 30.0, "train/mismatch_abs_logprob_diff": 2e-5},
               {"step": 2, "reward/mean": 0.5, "time/step_s": 20.0, "train/mismatch_abs_logprob_diff": 3e-5},
               {"step": 2, "eval/fast/accuracy": 0.5, "eval/fast/n": 100}]
    s = run.summarize(metrics, 60.0, (1.0, 2.0, 3.0))
    assert (s["accuracy_before"], s["accuracy_after"], s["n_test"]) == (0.2, 0.5, 100)
    assert s["gain"] == pytest.approx(0.3) and s["gain_se"] == pytest.approx(math.sqrt(0.0041))
    assert s["gain_in_se"] == pytest.approx(0.3 / math.sqrt(0.0041))                # 4.685
    assert s["eval_curve"] == [(0, 0.2), (2, 0.5)] and s["train_reward"] == [0.25, 0.5]
    assert s["mismatch_abs_logprob_diff_max"] == 3e-5
