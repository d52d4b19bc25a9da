"""How fast the math reward scores, and what its time limit costs.

Scores 1,000 generated completions (fractions, decimals, percentages, scientific notation, intervals, sets,
think blocks, wrong and missing answers) against their references on one CPU core, three ways:
  direct   - `math_accuracy(...)` called in this process (no time limit beyond math-verify's own);
  process  - `RewardScorer` with killable worker processes (the default; per-sample time limit);
  inline   - `RewardScorer(isolation="inline")` (watched threads).
It also measures the cheap `exact_match` the same ways (to isolate the per-sample cost of the limit itself),
a cold worker start, and the recovery after a hung call (kill + restart). Prints a table and writes JSON.

    python benchmarks/rewards_math.py [--n 1000] [--repeat 2] [--out benchmarks/results/rewards_math.json]
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import random
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_NUM_THREADS", "1")


def make_cases(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """(completions, references): a deterministic mix of answer forms, about 60% correct."""
    rng = random.Random(seed)
    comps, golds = [], []
    for i in range(n):
        a, b = rng.randint(1, 99), rng.randint(2, 99)
        kind = i % 10
        right = rng.random() < 0.6
        delta = 0 if right else rng.randint(1, 5)
        if kind == 0:
            gold, ans = str(a + b), rf"\boxed{{{a + b + delta}}}"
        elif kind == 1:
            gold, ans = rf"\frac{{{a}}}{{{b}}}", f"The answer is {a + delta}/{b}."
        elif kind == 2:
            gold, ans = f"{a / 4:g}", rf"\boxed{{\frac{{{a + delta}}}{{4}}}}"
        elif kind == 3:
            gold, ans = f"{a}\\%", rf"\boxed{{{(a + delta) / 100:g}}}"
        elif kind == 4:
            gold, ans = str(a * 1000), rf"\boxed{{{a + delta}e3}}"
        elif kind == 5:
            gold, ans = f"[{a},{a + b})", rf"\boxed{{[{a},{a + b + delta})}}"
        elif kind == 6:
            gold, ans = rf"\{{{a},{b}\}}", rf"\boxed{{\{{{b + delta},{a}\}}}}"
        elif kind == 7:
            gold, ans = f"x^2+{2 * a}x+{a * a}", rf"\boxed{{(x+{a + delta})^2}}"
        elif kind == 8:
            gold, ans = str(a - b), rf"\boxed{{{a - b - delta}}}"
        else:
            gold, ans = str(a), "I could not solve it."
        thinking = f"<think>Let me work this out: {a} and {b}. " + "Check the arithmetic again. " * rng.randint(0, 20)
        comps.append(thinking + "</think>\n" + ans)
        golds.append(gold)
    return comps, golds


def timed(fn, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/rewards_math.json")
    args = ap.parse_args(argv)

    cpu = sorted(os.sched_getaffinity(0))[0] if hasattr(os, "sched_getaffinity") else None
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})  # one core; worker processes inherit it

    from rewards import RewardScorer, RewardSpec, exact_match, math_accuracy

    comps, golds = make_cases(args.n)
    prompts = ["Solve the problem."] * args.n
    cols = {"answer": golds, "mode": ["deep"] * args.n}

    t0 = time.perf_counter()
    proc = RewardScorer([RewardSpec(name="math_accuracy")], timeout_s=10.0)
    proc.start()
    proc(prompts[:1], comps[:1], {"answer": golds[:1]})
    cold_start = time.perf_counter() - t0
    inline = RewardScorer([RewardSpec(name="math_accuracy")], timeout_s=10.0, isolation="inline")
    verdicts: dict = {}
    paths = {
        "math direct": lambda: verdicts.__setitem__("direct", math_accuracy(prompts, comps, answer=golds)),
        "math process": lambda: verdicts.__setitem__("process", proc(prompts, comps, cols).per_reward["math_accuracy"]),
        "math inline": lambda: inline(prompts, comps, cols),
    }
    # Steady state, as in training where each reference recurs every step: math-verify's ANTLR prediction cache
    # and the reference cache are warm in this process and in the worker before timing (one pass each).
    paths["math direct"]()
    paths["math process"]()
    rows = {k: float("inf") for k in paths}
    for _ in range(args.repeat):  # interleaved, best of: the machine may be shared
        for k, fn in paths.items():
            rows[k] = min(rows[k], timed(fn))
    assert verdicts["direct"] == verdicts["process"], "isolation changed a verdict"

    em_proc = RewardScorer([RewardSpec(name="exact_match")], timeout_s=10.0)
    em_proc(prompts[:1], comps[:1], {"answer": golds[:1]})
    em_inline = RewardScorer([RewardSpec(name="exact_match")], timeout_s=10.0, isolation="inline")
    rows["exact_match direct"] = timed(lambda: exact_match(prompts, comps, answer=golds), 3)
    rows["exact_match process"] = timed(lambda: em_proc(prompts, comps, cols), 3)
    rows["exact_match inline"] = timed(lambda: em_inline(prompts, comps, cols), 3)

    hang_limit = 0.5
    guardless = RewardScorer([RewardSpec(name="math_accuracy", kwargs={"max_digits": None})], timeout_s=hang_limit)
    guardless(prompts[:1], comps[:1], {"answer": golds[:1]})
    t0 = time.perf_counter()
    r = guardless(["", ""], [r"\boxed{9^{9^{9^{9}}}}", r"\boxed{4}"], {"answer": ["4", "4"]})
    recovery = time.perf_counter() - t0 - hang_limit
    assert r.failures and r.failures[0].error.startswith("timeout") and r.per_reward["math_accuracy"][1] == 1.0
    for s in (proc, inline, em_proc, em_inline, guardless):
        s.close()

    n = args.n
    accuracy = sum(v == 1.0 for v in verdicts["direct"]) / n
    per = {k: v / n * 1e6 for k, v in rows.items()}
    result = {
        "n": n, "cpu_pinned": cpu, "python": platform.python_version(), "machine": platform.machine(),
        "completions_per_s": {k: n / v for k, v in rows.items()},
        "us_per_completion": per,
        "limit_overhead_us_per_completion": {
            "math process": per["math process"] - per["math direct"],
            "math inline": per["math inline"] - per["math direct"],
            "exact_match process": per["exact_match process"] - per["exact_match direct"],
            "exact_match inline": per["exact_match inline"] - per["exact_match direct"],
        },
        "limit_overhead_pct_math_process": 100 * (rows["math process"] / rows["math direct"] - 1),
        "cold_worker_start_s": cold_start,
        "hung_call_recovery_s_beyond_limit": recovery,
        "share_scored_correct": accuracy,
        "load_average_1min": os.getloadavg()[0],
    }
    print(f"math reward on {n} completions, one core (cpu {cpu}); {100 * accuracy:.0f}% judged correct; "
          f"machine load {os.getloadavg()[0]:.1f} (timings on a shared machine vary by ~30%)")
    print(f"{'scorer':<22}{'completions/s':>15}{'us/completion':>15}{'limit overhead us':>19}")
    for k in rows:
        base = per["math direct"] if k.startswith("math") else per["exact_match direct"]
        extra = "" if k.endswith("direct") else f"{per[k] - base:>19.1f}"
        print(f"{k:<22}{n / rows[k]:>15.0f}{per[k]:>15.1f}{extra}")
    print(f"time-limit overhead, math via worker process: {result['limit_overhead_pct_math_process']:+.1f}%")
    print(f"cold worker start (import + warm-up): {cold_start:.2f} s; "
          f"recovery after a hung call (kill + restart, beyond the {hang_limit:g} s limit): {recovery:.2f} s")
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
