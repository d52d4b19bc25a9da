"""Research (issue 20): choose the task settings on held-in rows only. Cold start on an arith_chain mix, then
greedy fast/deep accuracy on the first --eval-n *training* rows (held-in; the held-out split is never read here),
split by row kind (easy / hard).

    PYTHONPATH=. python examples/ablation/research/dev.py --steps 600 --min-terms 4 --max-terms 5 --easy-share 0.5
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

from rlkit.runtime_env import apply_defaults

apply_defaults(TRANSFORMERS_VERBOSITY="error", VLLM_LOGGING_LEVEL="ERROR")
HERE = pathlib.Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--min-terms", type=int, default=4)
    ap.add_argument("--max-terms", type=int, default=5)
    ap.add_argument("--easy-share", type=float, default=0.5)
    ap.add_argument("--eval-n", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="/tmp/abl/dev")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    from rewards import exact_match
    from rlkit.drivers.ablation_eval import prompt_rows, reward_rows_score_fn
    from rlkit.data import load_source
    from rlkit.drivers.evaluate import evaluate_modes
    from rlkit.models.loading import build_tiny, load_policy
    from rlkit.drivers.sft import SFTConfig, mode_rows, sft
    from rollout import make_engine

    kw = dict(min_terms=args.min_terms, max_terms=args.max_terms, easy_share=args.easy_share)
    train = [dict(r) for r in load_source("arith_chain", "train", seed=args.seed, **kw)]
    held_in = train[: args.eval_n]
    rows = mode_rows(train)
    out = pathlib.Path(args.out) / f"t{args.min_terms}{args.max_terms}_e{args.easy_share}_s{args.steps}_seed{args.seed}"
    t = time.perf_counter()
    base = build_tiny("text", out / "base", texts=[r["prompt"] for r in train] + [r["answer"] for r in train]
                      + [r["answer"] for r in rows], seed=args.seed, hidden_size=128, num_layers=2)
    model, tok, _ = load_policy(str(base))
    sft(model, tok, rows, SFTConfig(lr=args.lr, batch_size=32, max_steps=args.steps, seed=args.seed,
                                   warmup_steps=10, log_every=max(1, args.steps // 3)), output_dir=out / "cold")
    t_sft = time.perf_counter() - t
    engine = make_engine("vllm", model_path=str(out / "cold"), max_model_len=256, seed=0)
    score = reward_rows_score_fn(exact_match)
    ev = {}
    for kind in ("all", "easy", "hard"):
        sub = [r for r in held_in if kind == "all" or r["kind"] == kind]
        ev[kind] = {m: round(v["accuracy"], 3) for m, v in evaluate_modes(
            engine, tok, prompt_rows(sub), modes=["fast", "deep"], score_fn=score, max_tokens=64).items()}
        ev[kind]["n"] = len(sub)
    engine.close()
    rec = {"what": "dev (held-in)", **vars(args), "sft_s": round(t_sft, 1), "held_in": ev}
    print(json.dumps(rec))
    with open(HERE / "dev_results.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
