"""Time per phase of a fixed small GRPO configuration (rollout, reward, update, sync) and tokens per second.

    python benchmarks/grpo_phases.py [--model vlm|text] [--engine vllm|hf] [--steps 8] [--out FILE]

Runs the real loop (Ray actors, the chosen engine, the policy worker) on a tiny model, skips the first
`--warmup` steps (engine warm-up), and prints medians per phase. Writes JSON (default
benchmarks/results/grpo_phases-<model>-<engine>.json).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import tempfile
import time

from rlkit.runtime_env import apply_defaults  # noqa: E402  (before torch/vLLM/Ray)

apply_defaults()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=("vlm", "text"), default="vlm")
    ap.add_argument("--engine", choices=("vllm", "hf"), default="vllm")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--out", default="")
    args = ap.parse_args()

    from rlkit.config import GRPOConfig, load_config
    from rlkit.drivers.grpo import run_grpo

    out_dir = tempfile.mkdtemp(prefix="rlkit-bench-")
    source = "easy_vqa" if args.model == "vlm" else "arithmetic"
    cfg = load_config(GRPOConfig, None, [
        f"output_dir={out_dir}", f"max_steps={args.steps}", f"model.path=tiny:{args.model}", f"data.source={source}",
        f"rollout.engine={args.engine}", f"rollout.n={args.n}", f"rollout.max_tokens={args.max_tokens}",
        f"trainer.prompts_per_step={args.prompts}", "logging.progress=false", "logging.log_samples=false",
        "rollout.temperature=1.0", "rewards=[{name: exact_match}]",
    ])
    t0 = time.perf_counter()
    run_grpo(cfg)
    wall = time.perf_counter() - t0
    rows = [json.loads(l) for l in pathlib.Path(out_dir, "metrics.jsonl").read_text().splitlines()]
    rows = rows[args.warmup:]
    med = lambda k: statistics.median(r[k] for r in rows)
    phases = ["time/rollout_s", "time/reward_s", "time/update_s", "time/sync_s", "time/step_s"]
    result = {
        "model": args.model, "engine": args.engine, "prompts": args.prompts, "n": args.n,
        "max_tokens": args.max_tokens, "steps_measured": len(rows), "wall_s_total": wall,
        **{k.split("/")[1]: med(k) for k in phases},
        "tokens_per_step": med("tokens/sampled"),
    }
    result["rollout_tokens_per_s"] = result["tokens_per_step"] / result["rollout_s"]
    result["step_tokens_per_s"] = result["tokens_per_step"] / result["step_s"]
    print(f"\nGRPO step phases (median of {len(rows)} steps after {args.warmup} warm-up), tiny {args.model}, "
          f"{args.engine}, {args.prompts} prompts x {args.n}, <= {args.max_tokens} new tokens, 1 thread/actor")
    print(f"{'phase':<12}{'seconds':>10}{'share':>8}")
    for k in phases[:-1]:
        name = k.split("/")[1]
        print(f"{name:<12}{result[name]:>10.4f}{result[name] / result['step_s']:>8.1%}")
    print(f"{'step':<12}{result['step_s']:>10.4f}")
    print(f"tokens/step {result['tokens_per_step']:.0f}; rollout {result['rollout_tokens_per_s']:.0f} tok/s; "
          f"end-to-end {result['step_tokens_per_s']:.0f} tok/s")
    out = pathlib.Path(args.out or f"benchmarks/results/grpo_phases-{args.model}-{args.engine}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
