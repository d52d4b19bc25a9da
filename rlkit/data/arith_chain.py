"""A built-in offline text source where thinking helps: chains of additions and subtractions.

Why: the hybrid-vs-deep-only ablation (docs/ablation.md) needs a task on which writing intermediate results
(deep mode) beats answering at once (fast mode), that the project can generate offline, seeded, with a
worked solution for the cold start. A chain such as `7 + 5 - 3 + 8` is one step per operator when the
partial results are written down, and a sum of several numbers in one forward pass when they are not.

Rows: `prompt` ("What is 7 + 5 - 3 + 8? Answer with a number."), `answer` ("17"), `reasoning` (the worked
steps, one per line: "7 + 5 = 12\\n12 - 3 = 9\\n9 + 8 = 17"), `terms` (number of operands).

Train and test are disjoint by construction, whatever the seeds: every distinct chain belongs to exactly one
split, chosen by a hash of its text (`split_of`); a split's rows are drawn only from its own chains.
Partial results are kept within [0, max_value] (chains that leave it are redrawn), so every number written in a
step has at most two digits.
"""
from __future__ import annotations

import hashlib
import random

PROMPT = "What is {expr}? Answer with a number."


def split_of(expr: str, test_share: float = 0.2) -> str:
    """'test' for a fixed `test_share` of all chains (by a hash of the text), else 'train'."""
    h = int.from_bytes(hashlib.sha256(expr.encode()).digest()[:8], "big") / 2**64
    return "test" if h < test_share else "train"


def chain_steps(operands: list[int], ops: list[str]) -> list[tuple[int, str, int, int]]:
    """The worked steps (left, op, right, result) of `operands[0] ops[0] operands[1] ...`, left to right."""
    acc, steps = operands[0], []
    for op, b in zip(ops, operands[1:]):
        if op == "+":
            new = acc + b
        elif op == "-":
            new = acc - b
        else:
            raise ValueError(f"unsupported operator {op!r}")
        steps.append((acc, op, b, new))
        acc = new
    return steps


def expression(operands: list[int], ops: list[str]) -> str:
    return " ".join([str(operands[0])] + [f"{op} {b}" for op, b in zip(ops, operands[1:])])


def reasoning_text(steps: list[tuple[int, str, int, int]]) -> str:
    return "\n".join(f"{a} {op} {b} = {r}" for a, op, b, r in steps)


def load_arith_chain(split: str = "train", *, limit: int | None = None, seed: int = 0, size: int = 4000,
                     min_terms: int = 3, max_terms: int = 4, max_operand: int = 9, max_value: int = 19,
                     ops: str = "+-", test_share: float = 0.2):
    """`size` chains of `min_terms`..`max_terms` operands in 1..`max_operand` (`limit` caps the count).

    Rows are distinct within a split. A split with fewer distinct chains than asked for raises ValueError.
    """
    import datasets

    if split not in ("train", "test"):
        raise ValueError(f"arith_chain split must be 'train' or 'test', got {split!r}")
    if not 2 <= min_terms <= max_terms:
        raise ValueError(f"need 2 <= min_terms <= max_terms, got {min_terms}, {max_terms}")
    bad_ops = set(ops) - {"+", "-"}
    if not ops or bad_ops:
        raise ValueError(f"ops must be made of '+' and '-', got {ops!r}")
    n = min(size, limit) if limit else size
    rng = random.Random(f"arith_chain-{split}-{seed}")
    rows = {"prompt": [], "answer": [], "reasoning": [], "terms": []}
    seen: set[str] = set()
    tries = 0
    while len(seen) < n:
        tries += 1
        if tries > 200 * n + 10_000:
            raise ValueError(f"arith_chain: could not draw {n} distinct {split} chains with these settings "
                             f"(got {len(seen)}); lower size or widen the ranges")
        k = rng.randint(min_terms, max_terms)
        operands = [rng.randint(1, max_operand) for _ in range(k)]
        chosen = [rng.choice(ops) for _ in range(k - 1)]
        steps = chain_steps(operands, chosen)
        if any(not 0 <= r <= max_value for *_, r in steps):
            continue
        expr = expression(operands, chosen)
        if expr in seen or split_of(expr, test_share) != split:
            continue
        seen.add(expr)
        rows["prompt"].append(PROMPT.format(expr=expr))
        rows["answer"].append(str(steps[-1][3]))
        rows["reasoning"].append(reasoning_text(steps))
        rows["terms"].append(k)
    return datasets.Dataset.from_dict(rows)
