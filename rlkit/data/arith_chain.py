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
                     ops: str = "+-", test_share: float = 0.2, easy_share: float = 0.0,
                     test_seed: int | None = None):
    """`size` chains of `min_terms`..`max_terms` operands in 1..`max_operand` (`limit` caps the count).

    Rows are distinct within a split. A split with fewer distinct chains than asked for raises ValueError.

    A task mix (`easy_share` > 0): exactly round(easy_share * n) of the n rows are *easy*, one operation
    `a op b` with a in 1..`max_value` and b in 1..`max_operand` (a fact the fast mode can answer at once: the
    same form as one line of the worked steps); the rest are the chains above (*hard*). The `kind` column says
    which ("easy" / "hard"). There are only a few hundred easy facts, so easy rows are drawn with replacement
    (they repeat within a split; train and test facts stay disjoint by the hash); hard rows stay distinct.
    The two kinds are interleaved in a seeded order. `easy_share` = 0 gives the rows of earlier versions.
    `test_seed`: the seed of the test split (None: `seed`), so a held-out set can stay fixed while runs vary
    their seed.
    """
    import datasets

    if split not in ("train", "test"):
        raise ValueError(f"arith_chain split must be 'train' or 'test', got {split!r}")
    if not 2 <= min_terms <= max_terms:
        raise ValueError(f"need 2 <= min_terms <= max_terms, got {min_terms}, {max_terms}")
    bad_ops = set(ops) - {"+", "-"}
    if not ops or bad_ops:
        raise ValueError(f"ops must be made of '+' and '-', got {ops!r}")
    if not 0.0 <= easy_share <= 1.0:
        raise ValueError(f"easy_share must be within [0, 1], got {easy_share}")
    if split == "test" and test_seed is not None:
        seed = test_seed
    n = min(size, limit) if limit else size
    rng = random.Random(f"arith_chain-{split}-{seed}")
    n_easy = round(easy_share * n)
    rows = {"prompt": [], "answer": [], "reasoning": [], "terms": [], "kind": []}
    for kind, steps in _draw_hard(rng, n - n_easy, split, min_terms, max_terms, max_operand, max_value, ops,
                                  test_share) + _draw_easy(rng, n_easy, split, max_operand, max_value, ops, test_share):
        rows["prompt"].append(PROMPT.format(expr=expression([steps[0][0]] + [s[2] for s in steps],
                                                            [s[1] for s in steps])))
        rows["answer"].append(str(steps[-1][3]))
        rows["reasoning"].append(reasoning_text(steps))
        rows["terms"].append(len(steps) + 1)
        rows["kind"].append(kind)
    if n_easy:  # interleave the two kinds (a seeded order of its own: the hard rows above are unchanged)
        order = list(range(n))
        random.Random(f"arith_chain-order-{split}-{seed}").shuffle(order)
        rows = {k: [v[i] for i in order] for k, v in rows.items()}
    return datasets.Dataset.from_dict(rows)


def _draw_hard(rng, n, split, min_terms, max_terms, max_operand, max_value, ops, test_share):
    """n distinct chains of the split: [("hard", steps)]."""
    out, seen, tries = [], set(), 0
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
        out.append(("hard", steps))
    return out


def easy_facts(split, max_operand=9, max_value=19, ops="+-", test_share=0.2) -> list[tuple[int, str, int]]:
    """Every easy fact (a, op, b) of the split: a in 1..max_value, b in 1..max_operand, result in 0..max_value."""
    facts = []
    for a in range(1, max_value + 1):
        for op in ops:
            for b in range(1, max_operand + 1):
                r = chain_steps([a, b], [op])[0][3]
                if 0 <= r <= max_value and split_of(expression([a, b], [op]), test_share) == split:
                    facts.append((a, op, b))
    return facts


def _draw_easy(rng, n, split, max_operand, max_value, ops, test_share):
    """n easy rows of the split, drawn with replacement from its facts: [("easy", steps)]."""
    if not n:
        return []
    facts = easy_facts(split, max_operand, max_value, ops, test_share)
    if not facts:
        raise ValueError(f"arith_chain: no easy {split} facts with max_operand={max_operand}, max_value={max_value}")
    return [("easy", chain_steps([a, b], [op])) for a, op, b in (rng.choice(facts) for _ in range(n))]
