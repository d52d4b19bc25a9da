"""The main job: a tiny vision-language policy learns easy-VQA from reward, and the RL gain needs the image.

    make demo                       # both seeds, < 10 minutes on 2 idle CPU cores
    .venv/bin/python examples/easy_vqa/run_demo.py --seeds 0 --grpo-steps 100   # quicker look

Per seed:
1. build a tiny Qwen2.5-VL-style policy (2-layer vision tower, projector, 2-layer language model) with a
   BPE vocabulary trained on the easy-VQA text;
2. cold start (150 supervised steps) on 1,400 colour and 2,000 shape questions with their real labels and
   2,000 yes/no questions with coin-flip labels: it teaches the answer format of every type, leaves colour
   only partly learned (the vision path grounded, far from what supervision reaches) and yes/no at chance;
3. held-out accuracy per question type (2,000 fixed test questions: 600 colour, 600 shape, 800 yes/no;
   greedy, vLLM), also with blank images (the control: what can be answered without looking);
4. GRPO with the exact-match reward on a question mix about the image (every colour and shape question,
   3,000 yes/no ones) (rlkit's loop: vLLM rollout actor, policy actor, in-place weight sync);
5. held-out accuracy again, and per type the gain with images and with blank images (+- s.e.): a gain
   that needs the image is one above 2 s.e. with images and not with blank ones.
See docs/demo.md for what this shows and why it is designed so.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

from rlkit.runtime_env import apply_defaults  # noqa: E402  (before torch/vLLM/Ray)

apply_defaults(TRANSFORMERS_VERBOSITY="error", HF_HUB_DISABLE_PROGRESS_BARS="1", VLLM_LOGGING_LEVEL="ERROR", RAY_DEDUP_LOGS="1")

HERE = pathlib.Path(__file__).resolve().parent
# The held-out set, fixed before any design run: the first 600 colour, 600 shape and 800 yes/no questions of the
# seed-0 permutation of easy-VQA's test split (the same for every seed and design), graded by exact match.
EVAL_COUNTS = "color=600,shape=600,yesno=800"


def evaluate(model_dir: str, rows: list[dict], max_tokens: int) -> dict:
    """Greedy accuracy with the vLLM engine, on the real images and on blank ones."""
    from PIL import Image

    from rlkit.drivers.evaluate import engine_generate_fn
    from rlkit.drivers.vqa_eval import evaluate_vqa
    from rlkit.models.loading import load_processor
    from rollout import make_engine

    engine = make_engine("vllm", model_path=model_dir, max_model_len=512, seed=0)
    try:
        gen = engine_generate_fn(engine, load_processor(model_dir), max_tokens=max_tokens)
        real = evaluate_vqa(gen, rows)
        blank = Image.new("RGB", (64, 64), (255, 255, 255))
        blind = evaluate_vqa(gen, [{**r, "image": blank} for r in rows])
    finally:
        engine.close()
    return {"real": real, "blind": blind}


def cold_start(base: str, out: str, steps: int, lr: float, seed: int, counts: dict) -> str:
    """Supervised cold start on the demo split (`load_easy_vqa_cold_start`): real labels for colour and shape,
    coin-flip labels for yes/no questions (format only)."""
    import torch

    from rlkit.data.easy_vqa import load_easy_vqa_cold_start
    from rlkit.drivers.sft import SFTConfig, sft
    from rlkit.models.loading import load_policy

    model, processor, _ = load_policy(base)
    torch.manual_seed(seed)
    rows = [dict(r) for r in load_easy_vqa_cold_start(seed=seed, counts=counts or None)]
    sft(model, processor, rows, SFTConfig(lr=lr, batch_size=32, max_steps=steps, seed=seed, warmup_steps=10),
        output_dir=out)
    return out


def fmt(res: dict) -> str:
    by = res["by_type"]
    return f"{res['accuracy']:.3f}   " + "  ".join(f"{t} {by[t]['accuracy']:.3f}" for t in ("color", "shape", "yesno"))


def run_seed(seed: int, args) -> dict:
    from rlkit.config import GRPOConfig, load_config
    from rlkit.console import run_console
    from rlkit.data.easy_vqa import load_easy_vqa
    from rlkit.drivers.grpo import run_grpo
    from rlkit.models.loading import build_tiny
    from rlkit.run.rundir import claim_new

    out = pathlib.Path(args.output_dir) / f"seed_{seed}"
    out.mkdir(parents=True, exist_ok=True)
    T = {}
    t = time.perf_counter()
    train = load_easy_vqa("train", seed=seed)
    test_rows = [dict(r) for r in load_easy_vqa("test", seed=0, counts=parse_counts(args.eval_counts))]  # same every seed
    base = build_tiny("vlm", out / "base_model", texts=list(train["prompt"]) + list(train["answer"]), seed=seed,
                      vision_init_std=args.vision_init_std)
    T["build"] = time.perf_counter() - t

    t = time.perf_counter()
    cold = cold_start(str(base), str(out / "cold_start"), args.cold_steps, args.cold_lr, seed, parse_counts(args.cold_counts))
    T["cold_start"] = time.perf_counter() - t

    t = time.perf_counter()
    before = evaluate(cold, test_rows, args.max_tokens)
    T["eval_before"] = time.perf_counter() - t

    t = time.perf_counter()
    cfg = load_config(GRPOConfig, HERE / "grpo.yaml", [
        f"output_dir={out / 'grpo'}", f"seed={seed}", f"model.path={cold}", f"max_steps={args.grpo_steps}",
        f"rollout.max_tokens={args.max_tokens}", *args.overrides])
    claim_new(cfg.output_dir, overwrite=True)  # a rerun of the demo: an earlier grpo/ run is moved aside
    with run_console(cfg, "grpo") as run:  # vLLM's and Ray's output to output_dir/logs/, a summary at the end
        summary = run["summary"] = run_grpo(cfg)
    T["grpo"] = time.perf_counter() - t

    t = time.perf_counter()
    after = evaluate(summary["checkpoint"], test_rows, args.max_tokens)
    T["eval_after"] = time.perf_counter() - t
    result = {"seed": seed, "before": before, "after": after, "seconds": T, "checkpoint": summary["checkpoint"]}
    (out / "demo_result.json").write_text(json.dumps(result, indent=1))
    return result


def parse_counts(text: str) -> dict[str, int | None]:
    """"color=600,shape=600,yesno=800" -> {"color": 600, ...}; "all" as a count keeps every row of the type."""
    out: dict[str, int | None] = {}
    for part in filter(None, text.split(",")):
        t, _, v = part.partition("=")
        out[t.strip()] = None if v.strip() == "all" else int(v)
    return out


def report(results: list[dict], args) -> None:
    from rlkit.drivers.vqa_report import (
        binomial_se,
        image_gains,
        mean_se,
        with_merged_type,
    )

    types = ("color", "shape", "yesno")
    ev = results[0]["before"]["real"]
    counts = ", ".join(f"{ev['by_type'][t]['n']} {t}" for t in types)
    print(f"\neasy-VQA held-out accuracy ({ev['n']} fixed test questions: {counts}; greedy; exact match)")
    print(f"{'seed':<6}{'stage':<30}{'overall':<10}per type (binomial s.e. of each accuracy <= "
          f"{max(binomial_se(0.5, ev['by_type'][t]['n']) for t in types):.3f})")
    for r in results:
        for stage in ("before", "after"):
            label = "after cold start" if stage == "before" else f"after GRPO ({args.grpo_steps} steps)"
            print(f"{r['seed']:<6}{label:<30}{fmt(r[stage]['real'])}")
            print(f"{'':<6}{'  same, blank images':<30}{fmt(r[stage]['blind'])}")
        print(f"{'':<6}{'time':<30}" + ", ".join(f"{k} {v:.0f}s" for k, v in r["seconds"].items()))
    print("\nGRPO gain per question type (after - before, +- s.e.), with images and with blank images "
          "(image: colour and shape questions together):")
    merged = [{st: {k: with_merged_type(r[st][k], "image", ("color", "shape")) for k in ("real", "blind")}
               for st in ("before", "after")} for r in results]
    types = (*types, "image")
    gains = [image_gains(m["before"], m["after"], types) for m in merged]
    for t in types:
        cells = [f"seed {r['seed']}: {g[t]['real']['gain']:+.3f} +- {g[t]['real']['se']:.3f} "
                 f"(blank {g[t]['blind']['gain']:+.3f})" for r, g in zip(results, gains)]
        m, se = mean_se([g[t]["real"]["gain"] for g in gains])
        mb, _ = mean_se([g[t]["blind"]["gain"] for g in gains])
        print(f"  {t:<7}" + "; ".join(cells) + (f"; mean {m:+.3f} +- {se:.3f} over seeds (blank {mb:+.3f})"
                                                 if len(gains) > 1 else ""))
    img = [t for t in types if all(g[t]["needs_image"] for g in gains)]
    if img:
        print(f"GRPO raised {' and '.join(img)} accuracy by more than 2 s.e. with images and not with blank images, "
              f"on every seed: that gain needs the image")
    else:
        print("WARNING: no question type gained more than 2 s.e. with images (and not with blank ones) on every seed")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--output-dir", default="runs/easy_vqa_demo")
    ap.add_argument("--cold-steps", type=int, default=150, help="supervised cold-start steps (batch 32)")
    ap.add_argument("--cold-counts", default="", help="cold-start rows per type, e.g. color=1400,shape=2000,yesno=2000 "
                    "(colour and shape with real labels, yes/no with coin flips; default: DEMO_COLD_START_COUNTS)")
    ap.add_argument("--vision-init-std", type=float, default=0.2, help="std of the tiny vision tower's weights")
    ap.add_argument("--cold-lr", type=float, default=1e-3)
    ap.add_argument("--grpo-steps", type=int, default=250)
    ap.add_argument("--max-tokens", type=int, default=4)
    ap.add_argument("--eval-counts", default=EVAL_COUNTS,
                    help="held-out questions per type (the first ones of the seed-0 permutation of the test split)")
    ap.add_argument("overrides", nargs="*", help="GRPO config overrides, e.g. trainer.lr=1e-4")
    args = ap.parse_args()
    t0 = time.perf_counter()
    results = [run_seed(s, args) for s in args.seeds]
    report(results, args)
    print(f"total {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
