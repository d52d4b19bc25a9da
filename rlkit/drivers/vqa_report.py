"""What an easy-VQA before/after comparison shows: per-type accuracy gains with their standard errors, and
whether a gain needs the image (the blank-image control).

Inputs are `evaluate_vqa` results (``{"accuracy", "n", "by_type": {type: {"accuracy", "n"}}}``), one on the
real images ("real") and one on the same questions with a blank image ("blind"), before and after training.
A gain *needs the image* when it exceeds `z` standard errors with the real images and does not with blank
ones: what the policy learned to answer without looking moves both; what it learned from the picture moves
only the first.
"""
from __future__ import annotations

import math
from typing import Any, Sequence


def binomial_se(accuracy: float, n: int) -> float:
    """Standard error of an accuracy measured on `n` questions: sqrt(p (1 - p) / n) (0 for n = 0)."""
    return math.sqrt(accuracy * (1.0 - accuracy) / n) if n else 0.0


def with_merged_type(result: dict[str, Any], name: str, types: Sequence[str]) -> dict[str, Any]:
    """`result` with one more entry in by_type: `name`, the accuracy over the questions of all of `types`
    (their accuracies weighted by their counts), e.g. "image" for colour + shape (what only the image answers)."""
    parts = [result["by_type"][t] for t in types if t in result["by_type"]]
    n = sum(p["n"] for p in parts)
    acc = sum(p["accuracy"] * p["n"] for p in parts) / n if n else 0.0
    return {**result, "by_type": {**result["by_type"], name: {"accuracy": acc, "n": n}}}


def gain(before: dict[str, Any], after: dict[str, Any], qtype: str | None = None) -> dict[str, float]:
    """after - before for one question type (None: overall), with the standard error of that difference,
    sqrt(se_before^2 + se_after^2) (the two measurements taken as independent binomials)."""
    b = before if qtype is None else before["by_type"].get(qtype, {"accuracy": 0.0, "n": 0})
    a = after if qtype is None else after["by_type"].get(qtype, {"accuracy": 0.0, "n": 0})
    se = math.hypot(binomial_se(b["accuracy"], b["n"]), binomial_se(a["accuracy"], a["n"]))
    return {"before": b["accuracy"], "after": a["accuracy"], "gain": a["accuracy"] - b["accuracy"], "se": se}


def image_gains(before: dict[str, Any], after: dict[str, Any], types: Sequence[str], z: float = 2.0) -> dict[str, dict]:
    """Per question type: the gain with real images and with blank ones, and `needs_image`: the real-image
    gain is above `z` s.e. and the blank-image gain is not. `before`/`after`: {"real": result, "blind": result}."""
    out = {}
    for t in types:
        real = gain(before["real"], after["real"], t)
        blind = gain(before["blind"], after["blind"], t)
        out[t] = {"real": real, "blind": blind,
                  "needs_image": real["gain"] > z * real["se"] and not blind["gain"] > z * blind["se"]}
    return out


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean over seeds and its standard error, stdev / sqrt(k) with the sample stdev (k - 1); (mean, nan) for one value."""
    k = len(values)
    if k == 0:
        raise ValueError("mean_se needs at least one value")
    m = sum(values) / k
    if k == 1:
        return m, float("nan")
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (k - 1) / k)
