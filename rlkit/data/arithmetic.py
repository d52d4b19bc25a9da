"""A built-in offline text source: small arithmetic questions with integer answers, generated from a seed.

Why: text-model tests and demos need a task whose answers are checkable without any download. Rows:
`prompt` ("What is 3 + 4? Answer with a number."), `answer` ("7"), `type` ("add" | "sub" | "mul").
"""
from __future__ import annotations

import random

OPS = {"add": ("+", lambda a, b: a + b), "sub": ("-", lambda a, b: a - b), "mul": ("*", lambda a, b: a * b)}


def load_arithmetic(split: str = "train", *, limit: int | None = None, seed: int = 0, max_operand: int = 9, size: int = 2000):
    """`size` questions (`limit` caps it); the test split uses a disjoint seed stream."""
    import datasets

    if split not in ("train", "test"):
        raise ValueError(f"arithmetic split must be 'train' or 'test', got {split!r}")
    rng = random.Random(f"arithmetic-{split}-{seed}")
    n = min(size, limit) if limit else size
    rows = {"prompt": [], "answer": [], "type": []}
    names = sorted(OPS)
    for _ in range(n):
        kind = rng.choice(names)
        a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
        sym, fn = OPS[kind]
        rows["prompt"].append(f"What is {a} {sym} {b}? Answer with a number.")
        rows["answer"].append(str(fn(a, b)))
        rows["type"].append(kind)
    return datasets.Dataset.from_dict(rows)
