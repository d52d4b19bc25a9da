"""Plot GRPO runs of examples/smollm2: training reward per step (a 4-step moving mean over the raw points), greedy
held-out accuracy (with +-1 standard error bars) and the trainer-engine logprob mismatch per step (mean |trainer
logprob - vLLM logprob| over the sampled tokens), one colour per seed.

    python examples/smollm2/plot.py runs/smollm2/grpo_seed0 runs/smollm2/grpo_seed1 --out examples/smollm2/grpo.png
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib


def plot_runs(run_dirs, out) -> pathlib.Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_r, ax_e, ax_m) = plt.subplots(1, 3, figsize=(15, 3.8))
    for i, d in enumerate(run_dirs):
        d = pathlib.Path(d)
        recs = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
        steps = [r for r in recs if "reward/mean" in r]
        evals = [r for r in recs if "eval/fast/accuracy" in r]
        c = f"C{i}"
        xs, ys = [r["step"] for r in steps], [r["reward/mean"] for r in steps]
        ax_r.plot(xs, ys, ".", color=c, alpha=0.35)
        k = 4
        mean = [sum(ys[max(0, j - k + 1):j + 1]) / len(ys[max(0, j - k + 1):j + 1]) for j in range(len(ys))]
        ax_r.plot(xs, mean, "-", color=c, label=d.name)
        ex = [r.get("step", 0) for r in evals]
        ey = [r["eval/fast/accuracy"] for r in evals]
        se = [math.sqrt(p * (1 - p) / r["eval/fast/n"]) for p, r in zip(ey, evals)]
        ax_e.errorbar(ex, ey, yerr=se, fmt="o-", color=c, capsize=3, label=d.name)
        mm = [(r["step"], r["train/mismatch_abs_logprob_diff"]) for r in steps if "train/mismatch_abs_logprob_diff" in r]
        ax_m.plot([x for x, _ in mm], [y for _, y in mm], ".-", color=c, label=d.name)
    ax_r.set(xlabel="GRPO step", ylabel="training reward (final_number)", title="reward (dots: steps, line: 4-step mean)")
    ax_e.set(xlabel="GRPO step", ylabel="held-out greedy accuracy", title="held-out accuracy (+-1 SE)")
    ax_m.set(xlabel="GRPO step", ylabel="mean |logprob diff| (nats/token)", yscale="log",
             title="trainer vs vLLM logprob mismatch")
    for ax in (ax_r, ax_e, ax_m):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = pathlib.Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--out", default="examples/smollm2/grpo.png")
    a = ap.parse_args()
    print(plot_runs(a.runs, a.out))
