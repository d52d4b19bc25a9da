"""The weight sync through Ray (policy actor state dict -> object store -> vLLM engine actor), A/B between two
source trees in one Ray session, calls interleaved so both sides see the same machine load.

    python benchmarks/sync_ab.py --base /path/to/other/checkout [--model text|vlm|realistic-text] [--calls 40]

(`git archive <commit> | tar -x -C DIR` makes a checkout of the "before" tree.) Each side gets its own policy actor
(`rlkit.distributed.pool.PolicyRank`, spawned with `rlkit.drivers.grpo.POLICY_ENV` where the tree has it) and engine actor
(`rlkit.distributed.orchestration.EngineActor`, vLLM), with `PYTHONPATH` pointing at its tree. One call is what the GRPO
driver does per step: `ray.get(engine.update_weights.remote(policy.state_dict.remote()))`. Prints medians of
the wall time and of each actor's CPU time per call.
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import tempfile
import time

from rlkit.runtime_env import apply_defaults  # noqa: E402  (before torch/vLLM/Ray)

apply_defaults()


class _CPUTime:
    def cpu_time(self) -> float:
        return time.process_time()


def _policy_env(root: str) -> dict:
    """`POLICY_ENV` of the tree at `root` (its rlkit/drivers/grpo.py, read as text: the tree may not import here)."""
    text = pathlib.Path(root, "rlkit/drivers/grpo.py").read_text()
    return {"RAY_ENABLE_ZERO_COPY_TORCH_TENSORS": "1"} if "RAY_ENABLE_ZERO_COPY_TORCH_TENSORS" in text else {}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True, help="the other source tree (a checkout of the 'before' commit)")
    ap.add_argument("--model", choices=("text", "vlm", "realistic-text"), default="text")
    ap.add_argument("--calls", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()

    import ray

    from benchmarks.vs_trl import Case, build_model
    from rlkit.distributed.orchestration import EngineActor, init_ray, spawn
    from rlkit.distributed.pool import PolicyRank

    size, kind = ("realistic", "text") if args.model == "realistic-text" else ("small", args.model)
    model = build_model(Case(size, kind, 1, 1, 1), tempfile.mkdtemp(prefix="rlkit-sync-ab-"))
    init_ray("", 8, True)  # 4 actors of one CPU each: reserve more than a 2-core machine has
    engine_cls = type("EngineActor", (EngineActor, _CPUTime), {})
    policy_cls = type("PolicyWorker", (PolicyRank, _CPUTime), {})
    here = str(pathlib.Path(__file__).resolve().parents[1])
    sides = {}
    for side, root in (("base", str(pathlib.Path(args.base).resolve())), ("this", here)):
        policy = spawn(policy_cls, model, num_cpus=1, lr=1e-4, seed=0, env={"PYTHONPATH": root, **_policy_env(root)})
        engine = spawn(engine_cls, "vllm", model_path=model, num_cpus=1, max_model_len=512, seed=0,
                       env={"PYTHONPATH": root})
        ray.get([policy.cpu_time.remote(), engine.cpu_time.remote()])
        sides[side] = (policy, engine)
    res = {s: {"wall": [], "policy_cpu": [], "engine_cpu": []} for s in sides}
    for i in range(args.warmup + args.calls):
        for s in (("base", "this") if i % 2 else ("this", "base")):
            policy, engine = sides[s]
            c0 = ray.get([policy.cpu_time.remote(), engine.cpu_time.remote()])
            t0 = time.perf_counter()
            ray.get(engine.update_weights.remote(policy.state_dict.remote()))
            wall = time.perf_counter() - t0
            c1 = ray.get([policy.cpu_time.remote(), engine.cpu_time.remote()])
            if i >= args.warmup:
                res[s]["wall"].append(wall)
                res[s]["policy_cpu"].append(c1[0] - c0[0])
                res[s]["engine_cpu"].append(c1[1] - c0[1])
    print(f"weight sync through Ray, {args.model} model, median of {args.calls} interleaved calls (ms)")
    print(f"{'side':<6}{'wall':>8}{'policy CPU':>12}{'engine CPU':>12}")
    for s, r in res.items():
        print(f"{s:<6}" + "".join(f"{statistics.median(r[k]) * 1e3:>{w}.2f}"
                                  for k, w in (("wall", 8), ("policy_cpu", 12), ("engine_cpu", 12))))
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
