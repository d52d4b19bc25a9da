"""The SmolLM2 demo's task: two-operand integer arithmetic ("Calculate 58 + 98."), answers graded by `math_accuracy`.

Why this task: SmolLM2-135M-Instruct answers it greedily right about 40% of the time (measured on the training
split: 27/64 for the same problems drawn by reasoning-gym's `basic_arithmetic` with these settings), so GRPO
groups have reward variance; harder tasks (gsm_symbolic, chain sums, equations) start at 0-6% and give
nothing to learn. The generator is our own (no reasoning-gym dependency), in reasoning-gym's format.

- `problem(rng)`: one problem: each operand has 1 or 2 digits (each with probability 1/2; 0-9 or 10-99 uniform),
  the operator is +, - or * (uniform). The answer is computed here, never by evaluating text.
- `splits(n_train, n_test)`: the held-out split first (seed 1, `n_test` distinct questions), then the training
  split (seed 0, `n_train` distinct questions, none of them in the held-out split): fixed by the two seeds.
- `final_number(prompts, completions, answer=...)`: the reward and the held-out grader (rlkit reward by path,
  `examples/smollm2/task.py:final_number`): 1.0 when the last number written in the completion equals the
  answer, else 0.0. Not `math_accuracy`: it reads the last *expression*, so a completion that merely restates
  the question ("The result of 58 + 98 is") scores 1.0 (math-verify evaluates 58 + 98 = 156), a reward the
  policy could learn to game. Never evaluates the text: numbers are matched by a regex without nested quantifiers.
- `binomial_se(p, n)`, `diff_se(p1, n1, p2, n2)`: standard errors of an accuracy and of a difference of two
  independent accuracies (conservative for the same problems answered before and after).
"""
from __future__ import annotations

import json
import math
import pathlib
import random
import re

OPS = ("+", "-", "*")


def problem(rng: random.Random) -> dict:
    def operand() -> int:
        return rng.randint(0, 9) if rng.random() < 0.5 else rng.randint(10, 99)

    a, op, b = operand(), rng.choice(OPS), operand()
    value = a + b if op == "+" else a - b if op == "-" else a * b
    return {"prompt": f"Calculate {a} {op} {b}.", "answer": str(value)}


def _distinct(seed: int, n: int, exclude: set) -> list[dict]:
    rng, seen, out = random.Random(seed), set(exclude), []
    while len(out) < n:
        p = problem(rng)
        if p["prompt"] not in seen:
            seen.add(p["prompt"])
            out.append(p)
    return out


def splits(n_train: int, n_test: int) -> tuple[list[dict], list[dict]]:
    """(train, test): `n_test` distinct held-out problems (seed 1), `n_train` distinct training problems (seed 0)
    that never repeat a held-out question."""
    test = _distinct(1, n_test, set())
    return _distinct(0, n_train, {p["prompt"] for p in test}), test


def write_splits(out: pathlib.Path, n_train: int, n_test: int) -> tuple[pathlib.Path, pathlib.Path]:
    """OUT/arith_train.jsonl and OUT/arith_test.jsonl (rewritten identically on every call: fixed by the seeds)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, rows in zip(("train", "test"), splits(n_train, n_test)):
        p = out / f"arith_{name}.jsonl"
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(p)
    return paths[0], paths[1]


_GROUPED = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")  # 1,234 -> 1234
_NUMBER = re.compile(r"-?\d{1,15}(?:\.\d{1,15})?")


def last_number(text: str) -> str | None:
    """The last number written in `text` ("-" glued to it is its sign; thousands commas dropped), or None."""
    found = _NUMBER.findall(_GROUPED.sub("", text.replace("\u2212", "-")))
    return found[-1] if found else None


def final_number(prompts, completions, *, answer, **kwargs) -> list[float | None]:
    """1.0 when the completion's last number equals the answer (an integer), else 0.0; None without an answer."""
    from rewards.text import completion_text

    out: list[float | None] = []
    for completion, gold in zip(completions, answer):
        if gold is None or str(gold).strip() == "":
            out.append(None)
            continue
        num = last_number(completion_text(completion))
        out.append(float(num is not None and float(num) == int(gold)))
    return out


def binomial_se(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n)


def diff_se(p1: float, n1: int, p2: float, n2: int) -> float:
    return math.sqrt(binomial_se(p1, n1) ** 2 + binomial_se(p2, n2) ** 2)
