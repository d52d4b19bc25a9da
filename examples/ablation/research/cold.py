"""Research: does a cold start on arith_chain teach both formats, and does deep beat fast afterwards?

    PYTHONPATH=. python examples/ablation/research/cold.py --steps 400 --lr 1e-3 --eval-n 300

Builds a tiny text policy, runs the two-mode cold start (`rlkit.drivers.sft.mode_rows`), evaluates greedy fast and
deep accuracy on held-out chains with vLLM, appends a line to results.jsonl.
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
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--min-terms", type=int, default=3)
    ap.add_argument("--max-terms", type=int, default=4)
    ap.add_argument("--max-value", type=int, default=19)
    ap.add_argument("--eval-n", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="")
    ap.add_argument("--out", default="runs/ablation_research/cold")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    from rewards import exact_match
    from rlkit.drivers.ablation_eval import evaluate_modes
    from rlkit.data import load_source
    from rlkit.models.loading import build_tiny, load_policy
    from rlkit.drivers.sft import SFTConfig, mode_rows, sft
    from rollout import make_engine

    kw = dict(min_terms=args.min_terms, max_terms=args.max_terms, max_value=args.max_value)
    train = [dict(r) for r in load_source("arith_chain", "train", seed=args.seed, **kw)]
    test = [dict(r) for r in load_source("arith_chain", "test", seed=0, limit=args.eval_n, **kw)]
    rows = mode_rows(train)
    out = pathlib.Path(args.out) / (args.tag or f"s{args.steps}")
    t = time.perf_counter()
    base = build_tiny("text", out / "base", texts=[r["prompt"] for r in rows] + [r["answer"] for r in rows],
                      vocab_size=args.vocab, seed=args.seed, hidden_size=args.hidden, num_layers=args.layers)
    model, tok, _ = load_policy(str(base))
    print("params", sum(p.numel() for p in model.parameters()), "vocab", len(tok))
    print(tok.tokenize(rows[1]["answer"]))
    res = sft(model, tok, rows, SFTConfig(lr=args.lr, batch_size=args.batch, max_steps=args.steps, seed=args.seed,
                                         warmup_steps=10, log_every=100), output_dir=out / "cold")
    t_sft = time.perf_counter() - t
    t = time.perf_counter()
    engine = make_engine("vllm", model_path=str(out / "cold"), max_model_len=256, seed=0)
    ev = evaluate_modes(engine, tok, test, modes=["fast", "deep"], score_fn=exact_match, max_tokens=64)
    by_terms = {}
    for k in sorted({r["terms"] for r in test}):
        sub = [r for r in test if r["terms"] == k]
        by_terms[k] = {m: v["accuracy"] for m, v in evaluate_modes(engine, tok, sub, modes=["fast", "deep"],
                                                                     score_fn=exact_match, max_tokens=64).items()}
    engine.close()
    t_eval = time.perf_counter() - t
    rec = {"tag": args.tag, **vars(args), "sft_s": round(t_sft, 1), "eval_s": round(t_eval, 1),
           "loss_last": sum(res.losses[-20:]) / 20, "eval": ev, "by_terms": by_terms}
    print(json.dumps(rec, indent=1))
    with open(HERE / "results.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
