"""The multi-seed comparison of the ablation (docs/ablation.md, "Pre-registered design"): pure arithmetic on
held-out curves, no Ray, no model.

A curve is the list of eval records one GRPO run writes (`step`, `tokens_sampled_total`, `eval/{mode}/accuracy`,
step 0 first). Per seed: the target is a share of deep-only's gain (`REACH_FRACTION`), the tokens each arm needs
to reach it are read by linear interpolation between eval points, and the hybrid / deep-only ratio of those
tokens is summarised over seeds by a geometric mean with a Student-t interval on the log ratios.
"""
from __future__ import annotations

import math
from typing import Sequence

REACH_FRACTION = 0.9  # share of deep-only's gain that defines the target score

# t(0.975, df): the two-sided 95% Student quantile, df = 1..10 (seeds - 1)
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def points(curve: Sequence[dict], mode: str) -> list[tuple[float, float]]:
    """(cumulative sampled tokens, held-out accuracy) of a curve's eval records that have `mode`, in step order."""
    recs = sorted((r for r in curve if r.get(f"eval/{mode}/accuracy") is not None), key=lambda r: r["step"])
    return [(float(r["tokens_sampled_total"]), float(r[f"eval/{mode}/accuracy"])) for r in recs]


def tokens_to_reach(pts: Sequence[tuple[float, float]], target: float) -> float | None:
    """Tokens at which the curve first reaches `target`: linear interpolation between the last point below the
    target and the first point at or above it; the first point itself when it already reaches it; None: never."""
    for i, (tok, acc) in enumerate(pts):
        if acc >= target - 1e-12:
            if i == 0:
                return tok
            t0, a0 = pts[i - 1]
            return t0 + (target - a0) / (acc - a0) * (tok - t0)
    return None


def gain_target(pts: Sequence[tuple[float, float]], fraction: float = REACH_FRACTION) -> float:
    """start + fraction * (final - start) of a curve."""
    return pts[0][1] + fraction * (pts[-1][1] - pts[0][1])


def t_interval(values: Sequence[float]) -> dict:
    """Mean, standard error and the 95% interval mean +- t(0.975, n-1) * SE (n >= 2 values, n <= 11)."""
    n = len(values)
    if n < 2 or n - 1 not in T975:
        raise ValueError(f"a t interval needs 2..{max(T975) + 1} values, got {n}")
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    se = sd / math.sqrt(n)
    half = T975[n - 1] * se
    return {"n": n, "mean": mean, "sd": sd, "se": se, "t": T975[n - 1], "low": mean - half, "high": mean + half}


def ratio_interval(ratios: Sequence[float]) -> dict:
    """Geometric mean of positive ratios and the 95% interval exp(mean(log r) +- t * SE(log r))."""
    if any(r <= 0 for r in ratios):
        raise ValueError(f"ratios must be positive, got {list(ratios)}")
    ti = t_interval([math.log(r) for r in ratios])
    return {"n": ti["n"], "geo_mean": math.exp(ti["mean"]), "low": math.exp(ti["low"]), "high": math.exp(ti["high"]),
            "log_se": ti["se"], "t": ti["t"]}


def reach_comparison(deep_curve: Sequence[dict], hybrid_curve: Sequence[dict], mode: str,
                     fraction: float = REACH_FRACTION) -> dict:
    """One seed's tokens-to-reach comparison in `mode`: the target is `fraction` of deep-only's gain in that mode
    (undefined when deep-only did not gain). Ratio = hybrid's tokens / deep-only's; `censored` when the hybrid
    never reached the target (then `ratio_above` = the hybrid's last tokens / deep-only's)."""
    d, h = points(deep_curve, mode), points(hybrid_curve, mode)
    out = {"mode": mode, "start": d[0][1], "deep_only_final": d[-1][1], "hybrid_final": h[-1][1]}
    if d[-1][1] <= d[0][1]:
        return {**out, "target": None, "defined": False}
    target = gain_target(d, fraction)
    td, th = tokens_to_reach(d, target), tokens_to_reach(h, target)
    out.update(target=target, defined=True, deep_only_tokens=td, hybrid_tokens=th, censored=th is None)
    if th is None:
        out["ratio_above"] = h[-1][0] / td
    else:
        out["ratio"] = th / td
    return out


def summarize(seeds: dict) -> dict:
    """Over seeds ({seed: {"deep_only": curve, "hybrid": curve}}): per mode, each seed's reach comparison, the
    ratio interval (None when a seed is censored or the target is undefined) and the final-score difference
    hybrid - deep-only with its t interval."""
    out = {}
    for mode in ("deep", "fast"):
        per_seed = {}
        for s, runs in seeds.items():
            if not points(runs["deep_only"], mode):
                continue
            c = reach_comparison(runs["deep_only"], runs["hybrid"], mode)
            c["final_diff"] = c["hybrid_final"] - c["deep_only_final"]
            per_seed[s] = c
        if not per_seed:
            continue
        ok = all(c["defined"] and not c["censored"] for c in per_seed.values())
        diffs = [c["final_diff"] for c in per_seed.values()]
        out[mode] = {"seeds": per_seed,
                     "ratio": ratio_interval([c["ratio"] for c in per_seed.values()]) if ok and len(per_seed) > 1 else None,
                     "final_diff": t_interval(diffs) if len(diffs) > 1 else None}
    return out


def verdict(ratio: dict | None, report_ratio: float = 0.705) -> str:
    """The pre-registered verdict on the deep-mode token ratio interval."""
    if ratio is None:
        return "not computed (a seed's hybrid never reached the target, or deep-only did not gain)"
    lo, hi, g = ratio["low"], ratio["high"], ratio["geo_mean"]
    if hi < 1:
        rel = "below" if hi < report_ratio else ("above" if lo > report_ratio else "consistent with")
        return (f"reproduces the direction: the hybrid needs fewer tokens (ratio {g:.2f}, 95% interval "
                f"{lo:.2f}-{hi:.2f}, {rel} the report's {report_ratio})")
    if lo > 1:
        return f"worse: the hybrid needs more tokens (ratio {g:.2f}, 95% interval {lo:.2f}-{hi:.2f})"
    return f"inconclusive: the interval contains 1 (ratio {g:.2f}, 95% interval {lo:.2f}-{hi:.2f})"


def interpolate(pts: Sequence[tuple[float, float]], x: float) -> float | None:
    """The curve's accuracy at `x` tokens, linear between eval points; None outside its token range."""
    for (t0, a0), (t1, a1) in zip(pts, pts[1:]):
        if t0 <= x <= t1:
            return a0 if t1 == t0 else a0 + (x - t0) / (t1 - t0) * (a1 - a0)
    return None


def matched_token_gap(deep_curve: Sequence[dict], hybrid_curve: Sequence[dict], mode: str) -> dict:
    """A summary less sensitive to one eval point than a first crossing (analysis added after the pre-registered
    rule, docs/ablation.md): the mean over the hybrid's eval points after step 0 of H(t) - D(t), D read at the
    same sampled tokens t by linear interpolation (points beyond deep-only's last tokens are left out)."""
    d, h = points(deep_curve, mode), points(hybrid_curve, mode)
    gaps = [a - interpolate(d, t) for t, a in h[1:] if interpolate(d, t) is not None]
    return {"mode": mode, "n_points": len(gaps), "gap": sum(gaps) / len(gaps) if gaps else None}
