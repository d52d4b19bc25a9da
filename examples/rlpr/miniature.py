"""RLPR in miniature: does the policy's probability of a free-form reference teach more than exact match?

    .venv/bin/python examples/rlpr/miniature.py                       # both seeds, every arm (docs/rlpr.md)
    .venv/bin/python examples/rlpr/miniature.py --seeds 0 --arms exact_match rlpr --steps 20   # a quicker look

Per seed, one command runs (all on CPU, offline):
1. data (fixed, seed-independent): 3,000 generated questions (examples/rlpr/make_data.py), split by a hash of
   the prompt text (`split_rows`): ~70 % of the distinct prompts train, the rest are the held-out questions,
   each once. Every training row has worked steps (`reasoning`) and the reference (`answer`).
2. a tiny text policy (tiny:text, 2 layers, hidden 128, BPE on the training text) and a supervised cold start
   in deep mode on the training rows. Its target writes the reference in FREE FORM: `<think>\\nsteps\\n</think>
   \\n\\n` + one of PARAPHRASES ("Monday", "It is Monday.", "The answer is Monday.", "Monday, I think."), drawn
   per row. So the policy answers in paraphrases, exact match is wrong on 3 of 4 correct answers, and RLPR's
   probability of the reference after the policy's reasoning is still informative: the RLPR setting.
3. from that one cold start, with the same prompts, steps and seed, GRPO arms (ARMS): exact match (the rule
   reward, 0.9 exact + 0.1 format), RLPR as the paper (debiased r - r', std filter), RLPR without debiasing,
   RLPR without the std filter; and "cold_start" (no RL).
4. held-out score: greedy deep-mode answers judged by examples/rlpr/grade.py (accepted paraphrases after
   normalisation; neither training reward; fixed before any run).
Writes OUT/results/seed<S>_<arm>.json as each arm finishes (a rerun skips arms already there, so an
interrupted run resumes; --force reruns), then OUT/rlpr_miniature.{json,md,png} over every result present.
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import random
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
HERE = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT), str(HERE)]

from rlkit.runtime_env import apply_defaults  # noqa: E402  (before torch/vLLM/Ray)

apply_defaults(TRANSFORMERS_VERBOSITY="error", HF_HUB_DISABLE_PROGRESS_BARS="1", VLLM_LOGGING_LEVEL="ERROR",
               RAY_DEDUP_LOGS="1")

import grade  # noqa: E402
import make_data  # noqa: E402

PARAPHRASES = ["{a}", "It is {a}.", "The answer is {a}.", "{a}, I think."]
ROWS, DATA_SEED, HELD_PERCENT = 3000, 0, 30
RLPR = {"name": "rlpr", "weight": 1.0, "kwargs": {"aggregation": "mean_prob", "baseline": "cached",
                                                  "w_prob": 0.9, "w_format": 0.1}}
STD_FILTER = {"group_filter": "std_ema",
              "group_filter_opts": {"beta": 0.5, "ema": 0.99, "ema_start_step": 6, "filter_start_step": 11}}
NO_FILTER = {"group_filter": "none", "group_filter_opts": {}}
LOGGED = {"name": "exact_match", "weight": 0.0}  # logged in the RLPR arms, weight 0
ARMS = {  # arm -> (rewards, algorithm keys)
    "exact_match": ([{"name": "exact_match", "weight": 0.9}, {"name": "format", "weight": 0.1}], NO_FILTER),
    "rlpr": ([RLPR, LOGGED], STD_FILTER),
    "rlpr_no_debias": ([{**RLPR, "kwargs": {**RLPR["kwargs"], "baseline": "none"}}, LOGGED], STD_FILTER),
    "rlpr_no_filter": ([RLPR, LOGGED], NO_FILTER),
}
ORDER = ["cold_start", *ARMS]


def build_data(out: pathlib.Path) -> tuple[list[dict], list[dict]]:
    """(training rows, held-out rows); the training file is written to OUT/data/train.jsonl for GRPO."""
    rows = make_data.make(ROWS, DATA_SEED, columns=None)
    train, held = make_data.split_rows(rows, HELD_PERCENT)
    (out / "data").mkdir(parents=True, exist_ok=True)
    path = out / "data" / "train.jsonl"
    text = "".join(json.dumps({k: r[k] for k in ("prompt", "answer", "type")}) + "\n" for r in train)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return train, held


def cold_rows(train: list[dict], seed: int) -> list[dict]:
    """Cold-start rows: the training rows with the reference written as a paraphrase drawn per row."""
    rng = random.Random(f"rlpr-miniature-paraphrase-{seed}")
    return [{"prompt": r["prompt"], "reasoning": r["reasoning"],
             "answer": rng.choice(PARAPHRASES).format(a=r["answer"])} for r in train]


def base_config(out: pathlib.Path, seed: int, steps: int):
    """The GRPO config all arms share (examples/rlpr/grpo_rlpr.yaml with the miniature's settings)."""
    import yaml

    from rlkit.config import GRPOConfig, _build
    from rlkit.run.checks import check_grpo

    tree = yaml.safe_load((HERE / "grpo_rlpr.yaml").read_text())
    tree.update(output_dir=str(out / f"seed{seed}"), seed=seed, max_steps=steps)
    tree.pop("cold_start", None)  # the arms start from the miniature's own paraphrase cold start (run_seed)
    tree["data"] = {"source": str(out / "data" / "train.jsonl")}
    tree["model"] = {"path": "tiny:text", "seed": seed}  # weight initialisation differs per seed too
    tree["rollout"].update(max_tokens=48, max_model_len=256)
    tree["trainer"].update(lr=1.0e-4)  # the ablation's GRPO rate on a cold-started tiny policy (3e-4 was unstable)
    tree["logging"] = {"progress": True, "log_samples": False}
    cfg = _build(GRPOConfig, tree, "")
    check_grpo(cfg)
    return cfg


def arm_config(base, arm: str, start_model: str):
    from rlkit.config import GRPOConfig, _build, to_dict
    from rlkit.run.checks import check_grpo

    rewards, algo = ARMS[arm]
    tree = to_dict(base)
    tree.update(output_dir=str(pathlib.Path(base.output_dir) / arm), rewards=rewards)
    tree["model"]["path"] = start_model
    tree["algorithm"].update(algo)
    cfg = _build(GRPOConfig, tree, "")
    check_grpo(cfg)
    return cfg


class Judge:
    """The held-out score function: grade.judge, keeping the last call's texts and scores for the report."""

    def __init__(self, held: list[dict]):
        self.ref = {r["prompt"]: r["answer"] for r in held}
        self.last: dict = {}

    def __call__(self, prompts, completions, *, answer, **kwargs):
        from rewards.basic import exact_match

        scores = grade.judge(prompts, completions, answer=answer)
        self.last = {"texts": list(completions), "judge": scores,
                     "exact_match": exact_match(prompts, completions, answer=[self.ref[p] for p in prompts])}
        return scores


def summarise(held: list[dict], judge: Judge, wall: float, extra: dict) -> dict:
    last = judge.last
    by_type: dict = {}
    for r, s in zip(held, last["judge"]):
        by_type.setdefault(r["type"], []).append(s)
    n = len(held)
    return {"n": n, "accuracy": sum(last["judge"]) / n, "exact_match": sum(last["exact_match"]) / n,
            "by_type": {t: sum(v) / len(v) for t, v in sorted(by_type.items())},
            "samples": [{"prompt": r["prompt"], "text": t, "judge": s}
                        for r, t, s in list(zip(held, last["texts"], last["judge"]))[:12]],
            "wall_s": wall, **extra}


def train_metrics(run_dir: pathlib.Path) -> dict:
    from rlkit.drivers.ablation import read_jsonl

    steps = [m for m in read_jsonl(run_dir / "metrics.jsonl") if "reward/mean" in m]
    keys = sorted({k for m in steps for k in m if k.startswith("reward/") and k.endswith("/mean")})
    return {"steps": len(steps), **{f"{k}@first": steps[0].get(k) for k in keys},
            **{f"{k}@last5": _mean([m.get(k) for m in steps[-5:]]) for k in keys}}


def _mean(v):
    v = [x for x in v if x is not None]
    return sum(v) / len(v) if v else None


def run_seed(seed: int, arms: list[str], args, train: list[dict], held: list[dict]) -> None:
    from rlkit.config import ColdStartSection
    from rlkit.drivers.ablation import EvalSection, _cold_start, _Evaluator, fresh_run_dir
    from rlkit.drivers.grpo import run_grpo

    out = pathlib.Path(args.out)
    res_dir = out / "results"
    res_dir.mkdir(parents=True, exist_ok=True)
    todo = [a for a in arms if args.force or not (res_dir / f"seed{seed}_{a}.json").exists()]
    if not todo:
        print(f"rlpr miniature: seed {seed}: every arm already in {res_dir}")
        return
    base = base_config(out, seed, args.steps)
    cs = ColdStartSection(steps=args.cold_steps, lr=1e-3, batch_size=32, warmup_steps=10, modes=["deep"])
    t = time.perf_counter()
    start_model = _cold_start(base, cs, cold_rows(train, seed), cold_rows(train, seed), pathlib.Path(base.output_dir))
    t_cold = time.perf_counter() - t
    judge = Judge(held)
    ev = EvalSection(modes=["deep"], max_tokens=base.rollout.max_tokens)
    evaluator = _Evaluator(start_model, [{"prompt": r["prompt"], "answer": {"accepted": r["accepted"],
                                                                             "distractors": r["distractors"]}}
                                         for r in held], ev, judge, ev.max_tokens, base)
    try:
        t = time.perf_counter()
        evaluator.evaluate_start()
        cold = summarise(held, judge, t_cold, {"eval_wall_s": time.perf_counter() - t})
        if "cold_start" in todo:
            _write(res_dir / f"seed{seed}_cold_start.json", {"seed": seed, "arm": "cold_start", **cold})
        for arm in [a for a in todo if a != "cold_start"]:
            cfg = arm_config(base, arm, start_model)
            moved = fresh_run_dir(cfg.output_dir)
            if moved:
                print(f"rlpr miniature: the previous {arm} run was moved to {moved}")
            print(f"rlpr miniature: seed {seed}, {arm}: {cfg.max_steps} GRPO steps -> {cfg.output_dir}", flush=True)
            t = time.perf_counter()
            run_grpo(cfg)
            wall = time.perf_counter() - t
            t = time.perf_counter()
            evaluator.checkpoint_curve(pathlib.Path(cfg.output_dir), None)
            res = summarise(held, judge, wall, {"eval_wall_s": time.perf_counter() - t,
                                                "train": train_metrics(pathlib.Path(cfg.output_dir))})
            _write(res_dir / f"seed{seed}_{arm}.json", {"seed": seed, "arm": arm, **res})
            print(f"rlpr miniature: seed {seed}, {arm}: held-out {res['accuracy']:.3f} "
                  f"(cold start {cold['accuracy']:.3f})", flush=True)
    finally:
        evaluator.close()


def _write(path: pathlib.Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)


# ------------------------------------------------------------------------------------------------ report
def aggregate(results: list[dict]) -> dict:
    """{arm: {seeds, per_seed, mean, se, exact_match, by_type}}: se = sqrt(sum_s p_s(1-p_s)/n) / S, the binomial
    standard error of the mean over seeds (each seed's held-out accuracy is a mean of n 0/1 judgements)."""
    arms: dict = {}
    for r in sorted(results, key=lambda r: r["seed"]):
        arms.setdefault(r["arm"], []).append(r)
    out = {}
    for arm in [a for a in ORDER if a in arms] + [a for a in arms if a not in ORDER]:
        rs = arms[arm]
        s = len(rs)
        mean = sum(r["accuracy"] for r in rs) / s
        se = math.sqrt(sum(r["accuracy"] * (1 - r["accuracy"]) / r["n"] for r in rs)) / s
        types = sorted({t for r in rs for t in r["by_type"]})
        out[arm] = {"seeds": [r["seed"] for r in rs], "per_seed": [r["accuracy"] for r in rs], "mean": mean,
                    "se": se, "n": rs[0]["n"], "exact_match": sum(r["exact_match"] for r in rs) / s,
                    "by_type": {t: _mean([r["by_type"].get(t) for r in rs]) for t in types},
                    "grpo_wall_s": _mean([r["wall_s"] for r in rs]) if arm != "cold_start" else None}
    return out


def compare(agg: dict, a: str, b: str) -> str:
    if a not in agg or b not in agg:
        return ""
    d = agg[a]["mean"] - agg[b]["mean"]
    se = math.sqrt(agg[a]["se"] ** 2 + agg[b]["se"] ** 2)
    return f"{a} - {b}: {d:+.3f} (s.e. {se:.3f}, {d / se if se else float('inf'):+.1f} s.e.)"


def report(out: pathlib.Path, wall: float | None = None) -> dict:
    results = [json.loads(p.read_text()) for p in sorted((out / "results").glob("seed*.json"))]
    agg = aggregate(results)
    report_obj = {"arms": agg, "results": results, "wall_s_this_command": wall}
    (out / "rlpr_miniature.json").write_text(json.dumps(report_obj, indent=1))
    types = sorted({t for a in agg.values() for t in a["by_type"]})
    lines = ["| arm | seeds | held-out (judge), mean ± s.e. | per seed | held-out exact match | "
             + " | ".join(types) + " | GRPO wall time |", "| --- " * (6 + len(types)) + "|"]
    for arm, a in agg.items():
        lines.append(f"| {arm} | {','.join(map(str, a['seeds']))} | {a['mean']:.3f} ± {a['se']:.3f} | "
                     + ", ".join(f"{p:.3f}" for p in a["per_seed"]) + f" | {a['exact_match']:.3f} | "
                     + " | ".join(f"{a['by_type'].get(t, 0):.2f}" for t in types)
                     + f" | {'-' if a['grpo_wall_s'] is None else format(a['grpo_wall_s'], '.0f') + ' s'} |")
    cmp = [c for c in (compare(agg, "rlpr", "exact_match"), compare(agg, "rlpr", "cold_start"),
                       compare(agg, "exact_match", "cold_start"), compare(agg, "rlpr", "rlpr_no_debias"),
                       compare(agg, "rlpr", "rlpr_no_filter")) if c]
    n = next(iter(agg.values()))["n"] if agg else 0
    text = (f"# RLPR in miniature\n\nHeld-out: {n} questions (prompts never trained on), greedy deep mode, judged by "
            "examples/rlpr/grade.py. s.e.: binomial, of the mean over seeds.\n\n" + "\n".join(lines) + "\n\n"
            + "\n".join(f"- {c}" for c in cmp) + "\n\n![held-out score per arm](rlpr_miniature.png)\n")
    (out / "rlpr_miniature.md").write_text(text)
    if agg:
        write_plot(agg, out / "rlpr_miniature.png")
    print(text)
    return report_obj


def write_plot(agg: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(agg)
    fig, ax = plt.subplots(figsize=(1.4 * len(names) + 2, 3.8))
    ax.bar(range(len(names)), [agg[a]["mean"] for a in names], yerr=[2 * agg[a]["se"] for a in names],
           color=["gray" if a == "cold_start" else "tab:orange" if a == "exact_match" else "tab:blue" for a in names],
           alpha=0.7, capsize=4, label="mean ± 2 s.e.")
    for i, a in enumerate(names):
        ax.plot([i] * len(agg[a]["per_seed"]), agg[a]["per_seed"], "k.", markersize=8)
    ax.set_xticks(range(len(names)), names, rotation=15, fontsize=8)
    ax.set_ylabel("held-out accuracy (judge)")
    ax.set_title(f"RLPR in miniature: {agg[names[0]]['n']} held-out questions, dots = seeds", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--arms", nargs="+", default=ORDER, choices=ORDER)
    ap.add_argument("--steps", type=int, default=60, help="GRPO steps per arm (the std filter starts at step 11)")
    ap.add_argument("--cold-steps", type=int, default=300, help="supervised cold-start steps")
    ap.add_argument("--out", default="runs/rlpr_miniature")
    ap.add_argument("--force", action="store_true", help="rerun arms whose result file exists")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    out = pathlib.Path(args.out)
    t = time.perf_counter()
    if not args.report_only:
        train, held = build_data(out)
        print(f"rlpr miniature: {len(train)} training rows ({len({r['prompt'] for r in train})} prompts), "
              f"{len(held)} held-out questions", flush=True)
        for seed in args.seeds:
            run_seed(seed, args.arms, args, train, held)
    report(out, time.perf_counter() - t)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
