"""Learning parity of asynchronous GRPO (docs/async.md, "Learning parity"): the arithmetic of the comparison.

Each arm is one GRPO run with `rollout.max_staleness` k from a seed's shared cold start; its held-out curve is
a list of eval records (`{"step", "eval/<mode>/accuracy", ...}`, rlkit.drivers.ablation.curve_from_metrics).
Per seed and k >= 1 the difference d = p_k - p_0 of the final accuracies on n held-out rows is set against
its binomial standard error sqrt(p_k (1 - p_k) / n + p_0 (1 - p_0) / n); k reaches parity when |d| <= 2 SE
on every seed. Pure functions: no run, no file.
"""
from __future__ import annotations

import math
from typing import Dict, Mapping, Sequence

Z = 2.0  # the criterion's width: |d| within two standard errors


def diff_se(p0: float, pk: float, n: int) -> float:
    """Binomial standard error of the difference of two accuracies, each on n rows."""
    if n <= 0:
        raise ValueError(f"n must be > 0, got {n}")
    return math.sqrt(p0 * (1 - p0) / n + pk * (1 - pk) / n)


def score_at(curve: Sequence[dict], mode: str, step: int | None = None) -> float | None:
    """The `mode` accuracy at `step` (None: the curve's last record)."""
    recs = [r for r in curve if r.get(f"eval/{mode}/accuracy") is not None]
    if step is None:
        return recs[-1][f"eval/{mode}/accuracy"] if recs else None
    for r in recs:
        if r["step"] == step:
            return r[f"eval/{mode}/accuracy"]
    return None


def tail_mean(curve: Sequence[dict], mode: str, last: int = 3) -> float | None:
    """Mean `mode` accuracy of the curve's last `last` eval points."""
    vals = [r[f"eval/{mode}/accuracy"] for r in curve if r.get(f"eval/{mode}/accuracy") is not None][-last:]
    return sum(vals) / len(vals) if vals else None


def mean_se(values: Sequence[float]) -> dict:
    """Mean and standard error over seeds (sample s.d. / sqrt(n); n = 1: se None)."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_se needs at least one value")
    mean = sum(values) / n
    se = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) / math.sqrt(n) if n > 1 else None
    return {"n": n, "mean": mean, "se": se}


def compare(finals: Mapping[int, Mapping[int, float]], n: int) -> Dict[int, dict]:
    """{k: comparison of k against k = 0} for every k >= 1 present on every seed of `finals` ({seed: {k: final
    accuracy}}): per seed d, SE, |d| / SE and whether |d| <= 2 SE; over seeds the scores' and d's mean +- se;
    `parity` is True when every seed is within 2 SE."""
    seeds = sorted(finals)
    ks = sorted(set.intersection(*(set(finals[s]) for s in seeds))) if seeds else []
    if 0 not in ks:
        raise ValueError("compare needs the on-policy arm (k = 0) on every seed")
    out = {}
    for k in (k for k in ks if k != 0):
        per = {}
        for s in seeds:
            p0, pk = finals[s][0], finals[s][k]
            se = diff_se(p0, pk, n)
            d = pk - p0
            per[s] = {"p0": p0, "pk": pk, "d": d, "se": se, "z": d / se if se > 0 else (0.0 if d == 0 else math.inf),
                      "within": abs(d) <= Z * se + 1e-12}
        out[k] = {"seeds": per, "score": mean_se([finals[s][k] for s in seeds]),
                  "d": mean_se([per[s]["d"] for s in seeds]), "parity": all(p["within"] for p in per.values())}
    return out


def async_summary(metrics: Sequence[dict]) -> dict:
    """From a run's metrics.jsonl records (the step records): the staleness histogram summed over steps, the
    mean masked share and trainer-engine mismatch over all steps, and the mismatch split by the step's lag
    (steps whose batch was sampled by version step-1 vs older)."""
    steps = [m for m in metrics if "reward/mean" in m]
    hist: Dict[int, float] = {}
    for m in steps:
        for key, v in m.items():
            if key.startswith("async/staleness_hist/"):
                j = int(key.rsplit("/", 1)[1])
                hist[j] = hist.get(j, 0.0) + v

    def avg(key, recs):
        vals = [r[key] for r in recs if r.get(key) is not None]
        return sum(vals) / len(vals) if vals else None

    fresh = [m for m in steps if m.get("async/staleness_mean", 0.0) == 0.0]
    stale = [m for m in steps if m.get("async/staleness_mean", 0.0) > 0.0]
    return {"steps": len(steps), "staleness_hist": {j: hist[j] for j in sorted(hist)},
            "masked_frac": avg("train/is_masked_frac", steps),
            "mismatch_abs_logprob_diff": avg("train/mismatch_abs_logprob_diff", steps),
            "mismatch_fresh_steps": avg("train/mismatch_abs_logprob_diff", fresh),
            "mismatch_stale_steps": avg("train/mismatch_abs_logprob_diff", stale),
            "masked_frac_stale_steps": avg("train/is_masked_frac", stale),
            "wait_s_mean": avg("time/wait_s", steps), "reward_mean": avg("reward/mean", steps)}


def _f(v, spec=".3f") -> str:
    return "n/a" if v is None else format(v, spec)


def parity_table(finals: Mapping[int, Mapping[int, float]], n: int, tails: Mapping[int, Mapping[int, float]] | None = None) -> str:
    """Markdown: one row per k (scores per seed, mean +- se over seeds, d per seed with its SE and the verdict)."""
    seeds = sorted(finals)
    cmp = compare(finals, n)
    head = ("| k | " + " | ".join(f"seed {s} final" for s in seeds) + " | mean +- s.e. | "
            + " | ".join(f"seed {s}: d (SE)" for s in seeds) + " | mean d +- s.e. | parity (|d| <= 2 SE on every seed) |")
    lines = [head, "|" + " --- |" * (len(seeds) * 2 + 4)]
    base = mean_se([finals[s][0] for s in seeds])
    lines.append("| 0 | " + " | ".join(_f(finals[s][0]) for s in seeds) + f" | {_f(base['mean'])} +- {_f(base['se'])} | "
                 + " | ".join("-" for _ in seeds) + " | - | reference |")
    for k, c in cmp.items():
        per = c["seeds"]
        lines.append(f"| {k} | " + " | ".join(_f(finals[s][k]) for s in seeds)
                     + f" | {_f(c['score']['mean'])} +- {_f(c['score']['se'])} | "
                     + " | ".join(f"{per[s]['d']:+.3f} ({per[s]['se']:.3f}, {per[s]['z']:+.1f} SE)" for s in seeds)
                     + f" | {c['d']['mean']:+.3f} +- {_f(c['d']['se'])} | {'yes' if c['parity'] else 'no'} |")
    if tails:
        lines += ["", "Mean of the last three eval points (not the criterion):", "",
                  "| k | " + " | ".join(f"seed {s}" for s in seeds) + " | mean +- s.e. |",
                  "|" + " --- |" * (len(seeds) + 2)]
        for k in sorted(set.intersection(*(set(tails[s]) for s in seeds))):
            m = mean_se([tails[s][k] for s in seeds])
            lines.append(f"| {k} | " + " | ".join(_f(tails[s][k]) for s in seeds) + f" | {_f(m['mean'])} +- {_f(m['se'])} |")
    return "\n".join(lines) + "\n"
