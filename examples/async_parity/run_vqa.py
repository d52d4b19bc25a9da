"""Learning parity of asynchronous GRPO on easy-VQA (issue 19 point 4; design in docs/async.md, "Learning parity").

Per seed: the easy-VQA demo's base model and cold start (examples/easy_vqa/run_demo.py: `build_tiny`,
`cold_start`, reused when already written), then one GRPO run per k in --ks with `rollout.max_staleness: k`
(examples/easy_vqa/grpo.yaml, same seed, prompts and steps), each scored after its last step by the demo's
held-out evaluation (`evaluate`: 2,000 fixed test questions, greedy, exact match, with real and blank images).
Every arm writes OUT/seed_<s>/k<k>.json when it ends; a rerun skips the arms whose JSON exists with the same
settings. At the end OUT/parity.json and parity.md (and with --doc the table in that file between
`<!-- parity-vqa:begin -->` and `<!-- parity-vqa:end -->`).

    PYTHONPATH=. .venv/bin/python examples/async_parity/run_vqa.py --steps 100
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def _load(name: str, path: pathlib.Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


demo = _load("easy_vqa_run_demo", ROOT / "examples/easy_vqa/run_demo.py")  # its runtime defaults come first
LoadSampler = _load("async_parity_run", ROOT / "examples/async_parity/run.py").LoadSampler

from rlkit.config import to_dict  # noqa: E402
from rlkit.drivers.ablation import fresh_run_dir, read_jsonl  # noqa: E402
from parity_stats import async_summary, compare, parity_table  # noqa: E402


def score(res: dict, kind: str) -> float:
    """"overall": accuracy on every held-out question; "image": on the colour and shape ones together."""
    if kind == "overall":
        return res["accuracy"]
    by = res["by_type"]
    n = by["color"]["n"] + by["shape"]["n"]
    return (by["color"]["accuracy"] * by["color"]["n"] + by["shape"]["accuracy"] * by["shape"]["n"]) / n


def run_seed(seed: int, args, out: pathlib.Path) -> dict:
    from rlkit.config import GRPOConfig, load_config
    from rlkit.data.easy_vqa import load_easy_vqa
    from rlkit.drivers.grpo import run_grpo
    from rlkit.models.loading import build_tiny

    sdir = out / f"seed_{seed}"
    sdir.mkdir(parents=True, exist_ok=True)
    test_rows = [dict(r) for r in load_easy_vqa("test", seed=0, counts=demo.parse_counts(args.eval_counts))]
    cold, done = sdir / "cold_start", sdir / "cold_start.json"
    if not done.exists():
        t, load = time.perf_counter(), LoadSampler()
        train = load_easy_vqa("train", seed=seed)
        base = build_tiny("vlm", sdir / "base_model", texts=list(train["prompt"]) + list(train["answer"]), seed=seed,
                          vision_init_std=0.2)
        demo.cold_start(str(base), str(cold), args.cold_steps, 1e-3, seed, {})
        wall = time.perf_counter() - t
        before = demo.evaluate(str(cold), test_rows, 4)
        done.write_text(json.dumps({"wall_s": wall, "load": load.stop(), "before": before}, indent=1))
    cold_info = json.loads(done.read_text())
    arms = {}
    for k in args.ks:
        cfg = load_config(GRPOConfig, ROOT / "examples/easy_vqa/grpo.yaml", [
            f"output_dir={sdir / f'k{k}'}", f"seed={seed + args.grpo_seed_offset}", f"model.path={cold}", f"max_steps={args.steps}",
            "rollout.max_tokens=4", "logging.progress=false"])
        cfg = dataclasses.replace(cfg, rollout=dataclasses.replace(cfg.rollout, max_staleness=k),
                                  algorithm=dataclasses.replace(cfg.algorithm, loss_opts={
                                      **cfg.algorithm.loss_opts, "correction": args.correction}))
        stamp = json.loads(json.dumps({"grpo": to_dict(cfg), "eval_counts": args.eval_counts,
                                       "cold_steps": args.cold_steps}))
        path = sdir / f"k{k}.json"
        if path.exists() and json.loads(path.read_text()).get("stamp") == stamp:
            print(f"async parity (easy-VQA): seed {seed} k={k} already done ({path})")
            arms[k] = json.loads(path.read_text())
            continue
        fresh_run_dir(cfg.output_dir)
        print(f"async parity (easy-VQA): seed {seed} k={k}, {args.steps} steps (load average {os.getloadavg()[0]:.1f})",
              flush=True)
        t, load = time.perf_counter(), LoadSampler()
        summary = run_grpo(cfg)
        wall = time.perf_counter() - t
        ld = load.stop()
        after = demo.evaluate(summary["checkpoint"], test_rows, 4)
        arms[k] = {"k": k, "seed": seed, "stamp": stamp, "steps": summary.get("step"), "wall_s": wall, "load": ld,
                   "after": after, "before": cold_info["before"], "cold_start_wall_s": cold_info["wall_s"],
                   "async": async_summary(read_jsonl(pathlib.Path(cfg.output_dir) / "metrics.jsonl"))}
        path.write_text(json.dumps(arms[k], indent=1))
    return arms


def control_table(per_seed: dict, control: dict) -> str:
    """Two on-policy runs from one checkpoint (GRPO seeds s and s + offset), overall and image questions."""
    from parity_stats import diff_se

    lines = ["| seed | score | on-policy final | on-policy, other GRPO seed | d (SE) | within 2 SE |",
             "| --- | --- | --- | --- | --- | --- |"]
    for s in sorted(control):
        for kind in ("overall", "image"):
            a, c = per_seed[s][0]["after"]["real"], control[s]["after"]["real"]
            n = a["n"] if kind == "overall" else a["by_type"]["color"]["n"] + a["by_type"]["shape"]["n"]
            p0, pc = score(a, kind), score(c, kind)
            se = diff_se(p0, pc, n)
            lines.append(f"| {s} | {kind} | {p0:.3f} | {pc:.3f} | {pc - p0:+.3f} ({se:.3f}, {(pc - p0) / se:+.1f} SE) | "
                         f"{'yes' if abs(pc - p0) <= 2 * se else 'no'} |")
    return "\n".join(lines) + "\n"


def report(per_seed: dict, args) -> str:
    seeds = sorted(per_seed)
    any_arm = per_seed[seeds[0]][0]
    n_all = any_arm["after"]["real"]["n"]
    by = any_arm["after"]["real"]["by_type"]
    n_img = by["color"]["n"] + by["shape"]["n"]
    lines = []
    for kind, n in (("overall", n_all), ("image", n_img)):
        finals = {s: {k: score(a["after"]["real"], kind) for k, a in per_seed[s].items()} for s in seeds}
        label = "all held-out questions" if kind == "overall" else "colour and shape questions (the image ones)"
        crit = " (the criterion)" if kind == "overall" else " (secondary)"
        lines += [f"Held-out accuracy after {args.steps} steps, {label}, n = {n}{crit}:", "", parity_table(finals, n), ""]
    lines += ["| seed | k | cold start (overall, image) | wall s | load avg (min-max, mean) | staleness histogram "
              "| masked share | mismatch, stale steps | wait s/step | train reward | overall, blank images |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    f = (lambda v: "n/a" if v is None else f"{v:.4f}")
    pct = (lambda v: "n/a" if v is None else f"{v:.3%}")
    for s in seeds:
        for k, a in sorted(per_seed[s].items()):
            y, ld, b = a["async"], a["load"], a["before"]["real"]
            hist = ", ".join(f"{int(v)}" for v in y["staleness_hist"].values()) or "-"
            lines.append(f"| {s} | {k} | {score(b, 'overall'):.3f}, {score(b, 'image'):.3f} | {a['wall_s']:.0f} | "
                         f"{ld['min']:.1f}-{ld['max']:.1f}, {ld['mean']:.1f} | {hist} | {pct(y['masked_frac'])} | "
                         f"{f(y['mismatch_stale_steps'])} | {f(y['wait_s_mean'])} | {f(y['reward_mean'])} | "
                         f"{a['after']['blind']['accuracy']:.3f} |")
    control = {s: json.loads((pathlib.Path(args.control) / f"seed_{s}" / "k0.json").read_text()) for s in seeds
               if args.control and (pathlib.Path(args.control) / f"seed_{s}" / "k0.json").exists()}
    if control:
        lines += ["", "Control (two on-policy runs from the same checkpoint, GRPO seed s and s + offset):", "",
                  control_table(per_seed, control)]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/async_parity_vqa")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--ks", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--correction", default="icepop")
    ap.add_argument("--cold-steps", type=int, default=150, help="the demo's cold start (a smoke test: fewer)")
    ap.add_argument("--eval-counts", default=demo.EVAL_COUNTS, help="held-out questions per type (the demo's)")
    ap.add_argument("--doc", default="")
    ap.add_argument("--control", default="", help="output folder of a --grpo-seed-offset run with --ks 0 (tabulated)")
    ap.add_argument("--grpo-seed-offset", type=int, default=0, help="the GRPO runs use seed + this (the cold start: "
                    "seed); a control: another on-policy trajectory from the same checkpoint")
    args = ap.parse_args(argv)
    if 0 not in args.ks:
        ap.error("--ks must include 0 (the on-policy reference)")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    per_seed = {s: run_seed(s, args, out) for s in args.seeds}
    body = report(per_seed, args)
    finals = {s: {k: a["after"]["real"]["accuracy"] for k, a in per_seed[s].items()} for s in per_seed}
    n = per_seed[args.seeds[0]][0]["after"]["real"]["n"]
    (out / "parity.json").write_text(json.dumps({"steps": args.steps, "correction": args.correction, "finals": finals,
                                                 "comparison": compare(finals, n), "per_seed": per_seed}, indent=1,
                                                default=str))
    (out / "parity.md").write_text(body)
    if args.doc:
        begin, end = "<!-- parity-vqa:begin -->", "<!-- parity-vqa:end -->"
        doc = pathlib.Path(args.doc)
        text, block = doc.read_text(), f"{begin}\n{body}\n{end}"
        text = (text[: text.index(begin)] + block + text[text.index(end) + len(end):] if begin in text and end in text
                else text.rstrip("\n") + "\n\n" + block + "\n")
        doc.write_text(text)
    print(body)
    return {"finals": finals}


if __name__ == "__main__":
    main()
