"""What RLPR adds to a GRPO step: step time with and without the `rlpr` reward at the benchmark configuration.

    python benchmarks/rlpr_overhead.py [--model vlm|text] [--harness auto|driver|local] [--steps 8] [--out FILE]

Configuration: that of benchmarks/grpo_phases.py (tiny model, vLLM, 8 prompts x 8 samples, <= 16 new
tokens, one thread per worker), in deep mode (RLPR only scores deep samples), with `unfinished="close"`
so that every sample is scored: a random tiny policy almost never closes its think block in 16 tokens, and
with the default (`"zero"`) RLPR would skip those samples and cost nothing. Baseline r' is cached (the
default); every step brings new prompts, so each step also computes its 8 baselines (the first epoch's cost).
"without": rewards = [exact_match]; "with": [exact_match, rlpr].

Harnesses:
- `driver`: `rlkit.drivers.grpo.run_grpo` twice (Ray actors; rlpr reaches the policy actor through
  `resources.policy`).
- `local`: the same phases in this process (vLLM engine + PolicyWorker + RewardScorer, rlpr through
  `WorkerPolicyAccess`), alternating a step without and a step with RLPR on the same engine and worker,
  so both see the same machine load.
- `auto` (default): `driver` when the patch is present, else `local` (the output says which ran).

Prints medians per phase after `--warmup` steps and writes JSON (default
benchmarks/results/rlpr_overhead-<model>-<harness>.json).
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

PHASES = ("rollout_s", "reward_s", "update_s", "sync_s", "step_s")
RLPR_KWARGS = {"unfinished": "close"}


def driver_patched() -> bool:
    import rlkit.drivers.grpo

    return hasattr(rlkit.drivers.grpo, "PolicyLogprobs")


# ------------------------------------------------------------------------------------------------- driver
def run_driver(args) -> dict[str, list[dict]]:
    from rlkit.config import GRPOConfig, load_config
    from rlkit.drivers.grpo import run_grpo

    source = "easy_vqa" if args.model == "vlm" else "arithmetic"
    runs = {}
    for variant, rewards in (("without", "[{name: exact_match}]"),
                             ("with", "[{name: exact_match}, {name: rlpr, kwargs: {unfinished: close}}]")):
        out_dir = tempfile.mkdtemp(prefix=f"rlkit-rlpr-bench-{variant}-")
        cfg = load_config(GRPOConfig, None, [
            f"output_dir={out_dir}", f"max_steps={args.warmup + args.steps}", f"model.path=tiny:{args.model}",
            f"data.source={source}", f"rollout.engine={args.engine}", f"rollout.n={args.n}",
            f"rollout.max_tokens={args.max_tokens}", f"trainer.prompts_per_step={args.prompts}",
            "logging.progress=false", "logging.log_samples=false", "rollout.temperature=1.0", "modes.deep_ratio=1.0",
            "reward_timeout_s=120", f"rewards={rewards}",
        ])
        run_grpo(cfg)
        rows = [json.loads(line) for line in pathlib.Path(out_dir, "metrics.jsonl").read_text().splitlines()]
        runs[variant] = [{**{p: r[f"time/{p}"] for p in PHASES}, "rlpr_policy_s": r.get("rlpr/policy_s", 0.0),
                          "tokens": r["tokens/sampled"]} for r in rows[args.warmup:]]
    return runs


# ------------------------------------------------------------------------------------------------- local
def run_local(args) -> dict[str, list[dict]]:
    import random
    import types

    import torch

    from rewards import RewardScorer, RewardSpec
    from rewards.rlpr import DEFAULT_STATE, WorkerPolicyAccess  # importing it registers `rlpr`
    from rlkit.algorithms import get_advantage_fn
    from rlkit.data import load_source, open_image, to_row
    from rlkit.models.loading import build_tiny, load_processor
    from rlkit.step.modes import render_prompt
    from rlkit.records import TrainItem
    from rlkit.policy.worker import PolicyWorker
    from rollout import RolloutRequest, SamplingConfig, make_engine

    source = "easy_vqa" if args.model == "vlm" else "arithmetic"
    ds = load_source(source, "train", seed=0)
    texts = list(ds["prompt"]) + [str(a) for a in ds["answer"]]
    model_path = str(build_tiny(args.model, tempfile.mkdtemp(prefix="rlkit-rlpr-bench-model-"), texts=texts))
    processor = load_processor(model_path)
    engine = make_engine(args.engine, model_path=model_path, max_model_len=1024, kv_cache_gib=1.0, seed=0) \
        if args.engine == "vllm" else make_engine("hf", model_path=model_path)
    worker = PolicyWorker(model_path, lr=1e-4, micro_batch_size=64, seed=0, num_threads=1)
    torch.set_num_threads(1)
    scorers = {
        "without": RewardScorer([RewardSpec(name="exact_match")], timeout_s=120),
        "with": RewardScorer([RewardSpec(name="exact_match"), RewardSpec(name="rlpr", kwargs=RLPR_KWARGS)],
                             timeout_s=120, resources=types.SimpleNamespace(policy=WorkerPolicyAccess(worker))),
    }
    for s in scorers.values():
        s.start()
    adv_fn = get_advantage_fn("grpo")
    order = list(range(len(ds)))
    random.Random(0).shuffle(order)
    position = 0
    runs: dict[str, list[dict]] = {"without": [], "with": []}
    for step in range(1, args.warmup + args.steps + 1):
        for variant in (("without", "with") if step % 2 else ("with", "without")):
            rows = []
            for idx in order[position:position + args.prompts]:
                row = to_row(idx, ds[idx])
                row.images = [open_image(im, idx) for im in row.images]
                rows.append(row)
            position += args.prompts
            t0, c0 = time.perf_counter(), time.process_time()
            texts = [render_prompt(processor, row, "deep") for row in rows]
            outs = engine.generate([RolloutRequest(prompt=t, images=r.images, n=args.n) for t, r in zip(texts, rows)],
                                   SamplingConfig(temperature=1.0, max_tokens=args.max_tokens, n=args.n, seed=step))
            samples = [(g, rows[g], texts[g], c) for g, group in enumerate(outs) for c in group]
            t_rollout, c_rollout = time.perf_counter() - t0, time.process_time() - c0
            t0, c0 = time.perf_counter(), time.process_time()
            result = scorers[variant]([r.prompt for _, r, _, _ in samples], [c.text for *_, c in samples], {
                "answer": [r.answer for _, r, _, _ in samples], "mode": ["deep"] * len(samples),
                "completion_ids": [list(c.token_ids) for *_, c in samples], "images": [r.images for _, r, _, _ in samples],
                "prompt_text": [t for _, _, t, _ in samples]})
            t_reward, c_reward = time.perf_counter() - t0, time.process_time() - c0
            if result.failures:
                raise RuntimeError(str(result.failures[0]))
            adv = adv_fn(torch.tensor(result.total), torch.tensor([g for g, *_ in samples])).tolist()
            t0, c0 = time.perf_counter(), time.process_time()
            worker.train_step([TrainItem(t, r.images, list(c.token_ids), a, list(c.logprobs))
                               for (_, r, t, c), a in zip(samples, adv)])
            t_update, c_update = time.perf_counter() - t0, time.process_time() - c0
            t0, c0 = time.perf_counter(), time.process_time()
            engine.update_weights(worker.state_dict())
            t_sync, c_sync = time.perf_counter() - t0, time.process_time() - c0
            rlpr_policy_s = 0.0
            if variant == "with":
                rlpr_policy_s = DEFAULT_STATE.metrics()["rlpr/policy_s"]
            if step > args.warmup:
                runs[variant].append({"rollout_s": t_rollout, "reward_s": t_reward, "update_s": t_update,
                                      "sync_s": t_sync, "step_s": t_rollout + t_reward + t_update + t_sync,
                                      "rlpr_policy_s": rlpr_policy_s,
                                      "cpu": {"rollout_s": c_rollout, "reward_s": c_reward, "update_s": c_update,
                                              "sync_s": c_sync, "step_s": c_rollout + c_reward + c_update + c_sync},
                                      "tokens": sum(len(c.token_ids) for *_, c in samples)})
    for s in scorers.values():
        s.close()
    return runs


# ------------------------------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=("vlm", "text"), default="vlm")
    ap.add_argument("--engine", choices=("vllm", "hf"), default="vllm")
    ap.add_argument("--harness", choices=("auto", "driver", "local"), default="auto")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--out", default="")
    args = ap.parse_args()

    harness = args.harness
    if harness == "auto":
        harness = "driver" if driver_patched() else "local"
    if harness == "driver" and not driver_patched():
        print("rlpr_overhead: the GRPO driver has no RLPR support yet "
              "use --harness local", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    runs = run_driver(args) if harness == "driver" else run_local(args)
    wall = time.perf_counter() - t0

    med = {v: {k: statistics.median(r[k] for r in rows) for k in (*PHASES, "rlpr_policy_s", "tokens")}
           for v, rows in runs.items()}
    base, rlpr = med["without"], med["with"]
    result = {
        "model": args.model, "engine": args.engine, "harness": harness, "prompts": args.prompts, "n": args.n,
        "max_tokens": args.max_tokens, "mode": "deep", "rlpr_kwargs": RLPR_KWARGS, "steps_measured": args.steps,
        "warmup": args.warmup, "wall_s_total": wall, "without": base, "with": rlpr,
        "reward_delta_s": rlpr["reward_s"] - base["reward_s"],
        "overhead_reward_phase": (rlpr["reward_s"] - base["reward_s"]) / base["step_s"],
        "overhead_step": rlpr["step_s"] / base["step_s"] - 1.0,
        "per_step": runs,
    }
    print(f"\nRLPR overhead ({harness} harness; median of {args.steps} steps after {args.warmup} warm-up), tiny "
          f"{args.model}, {args.engine}, {args.prompts} prompts x {args.n}, deep mode, <= {args.max_tokens} new tokens")
    print(f"{'phase (s)':<16}{'without':>10}{'with rlpr':>11}")
    for k in PHASES:
        print(f"{k[:-2]:<16}{base[k]:>10.4f}{rlpr[k]:>11.4f}")
    print(f"{'rlpr policy call':<16}{'':>10}{rlpr['rlpr_policy_s']:>11.4f}")
    print(f"reward phase adds {result['reward_delta_s']:.4f} s = {result['overhead_reward_phase']:.1%} of the step "
          f"without RLPR; step time ratio {1 + result['overhead_step']:.3f} ({result['overhead_step']:+.1%})")
    if all("cpu" in r for rows in runs.values() for r in rows):
        # CPU seconds of this one process (every phase runs in it, one thread each): insensitive to other
        # jobs on the machine, so this ratio is what a quiet machine's wall-clock ratio would be
        cpu = {v: {k: statistics.median(r["cpu"][k] for r in rows) for k in PHASES} for v, rows in runs.items()}
        result["cpu"] = cpu
        result["overhead_reward_phase_cpu"] = (cpu["with"]["reward_s"] - cpu["without"]["reward_s"]) / cpu["without"]["step_s"]
        print(f"{'CPU time (s)':<16}{'without':>10}{'with rlpr':>11}")
        for k in PHASES:
            print(f"{k[:-2]:<16}{cpu['without'][k]:>10.4f}{cpu['with'][k]:>11.4f}")
        print(f"in CPU time, the reward phase adds {result['overhead_reward_phase_cpu']:.1%} of the step without RLPR")
    out = pathlib.Path(args.out or f"benchmarks/results/rlpr_overhead-{args.model}-{harness}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
