"""Research: one GRPO arm from an existing cold start, with its held-out curve (for single-arm variations).

    PYTHONPATH=. python examples/ablation/research/arm.py --cold runs/abl_r1/cold_start --out runs/arm_x \\
        --tag deep_4prompts modes.deep_ratio=1 trainer.prompts_per_step=4

Runs `rlkit.drivers.grpo.run_grpo` with examples/ablation/ablation.yaml's GRPO part plus the overrides, a checkpoint
every --every steps, then evaluates the cold start and every checkpoint in both modes (rlkit.drivers.ablation_eval)
and appends {tag, overrides, curve, wall_s} to results.jsonl.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

from rlkit.runtime_env import apply_defaults

apply_defaults(TRANSFORMERS_VERBOSITY="error", VLLM_LOGGING_LEVEL="ERROR", HF_HUB_DISABLE_PROGRESS_BARS="1")
HERE = pathlib.Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cold", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--tag", required=True)
    ap.add_argument("--every", type=int, default=25)
    ap.add_argument("--eval-n", type=int, default=300)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    from rewards import exact_match
    from rlkit.drivers.ablation import load_ablation_config
    from rlkit.drivers.ablation_eval import checkpoint_curve, eval_record, evaluate_modes
    from rlkit.data import load_source
    from rlkit.drivers.grpo import run_grpo
    from rlkit.models.loading import load_processor
    from rollout import make_engine

    grpo, abl = load_ablation_config(HERE.parent / "ablation.yaml", [
        f"output_dir={args.out}", f"model.path={args.cold}", f"logging.save_every={args.every}",
        "logging.keep_checkpoints=0", "logging.progress=false", *args.overrides])
    t = time.perf_counter()
    run_grpo(grpo, overwrite=True)  # a rerun of the arm: an earlier run in --out is moved aside
    wall = time.perf_counter() - t
    rows = [dict(r) for r in load_source("arith_chain", "test", limit=args.eval_n, seed=grpo.seed)]
    proc = load_processor(args.cold)
    engine = make_engine("vllm", model_path=args.cold, max_model_len=256, seed=0)
    kw = dict(modes=["fast", "deep"], score_fn=exact_match, max_tokens=abl.eval.max_tokens)
    start = eval_record(0, 0, evaluate_modes(engine, proc, rows, **kw))
    curve = checkpoint_curve(args.out, engine, proc, rows, start=start, **kw)
    engine.close()
    rec = {"tag": args.tag, "cold": args.cold, "overrides": args.overrides, "wall_s": round(wall, 1),
           "curve": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in c.items()} for c in curve]}
    for c in rec["curve"]:
        print(c["step"], c["tokens_sampled_total"], c["eval/fast/accuracy"], c["eval/deep/accuracy"])
    with open(HERE / "results.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
