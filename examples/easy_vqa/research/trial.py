"""One trial of an easy-VQA demo design: build -> cold start -> eval -> GRPO (with periodic evals) -> eval.

    OMP_NUM_THREADS=1 python examples/easy_vqa/research/trial.py --seed 0 --cold format --grpo-steps 600

Cold-start designs (`--cold`, a comma list of TYPE=LABELS[@LIMIT]; LABELS is `true` or `random`):
  color=true,shape=true,yesno=true    real labels on every type (the trial in ENVIRONMENT.md)
  color=random,shape=random,yesno=random
                every type, each label drawn uniformly from the answers of the question's type: teaches the
                answer format and vocabulary, leaves the policy at chance within each type
  color=true,shape=true,yesno=random@2000
                open questions with real labels; 2,000 yes/no questions with coin-flip labels (format only)
  shorthands: format (all random), true (all true), none (no cold start),
  demo (rlkit.data.easy_vqa.load_easy_vqa_cold_start: all colour + 2,000 shape questions with real labels,
  2,000 yes/no questions with coin-flip labels; the recommended design)
Prints one JSON line per evaluation and a final summary line (also appended to --out).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from grpo_min import GRPOSettings, grpo_step  # noqa: E402

from rlkit.data.easy_vqa import ANSWERS_BY_TYPE, load_easy_vqa  # noqa: E402
from rlkit.models.tiny import TinySpec, build_vlm_model, make_vlm_processor  # noqa: E402
from rlkit.models.tokenizers import train_small_tokenizer  # noqa: E402
from rlkit.drivers.sft import SFTConfig, load_image, sft  # noqa: E402
from rlkit.drivers.vqa_eval import evaluate_vqa, make_hf_generate_fn  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cold", default="format")
    ap.add_argument("--cold-steps", type=int, default=150)
    ap.add_argument("--cold-lr", type=float, default=1e-3)
    ap.add_argument("--cold-batch", type=int, default=32)
    ap.add_argument("--grpo-steps", type=int, default=400)
    ap.add_argument("--grpo-seconds", type=float, default=None)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--B", type=int, default=8)
    ap.add_argument("--G", type=int, default=8)
    ap.add_argument("--temp", type=float, default=1.0)
    ap.add_argument("--max-new", type=int, default=4)
    ap.add_argument("--drgrpo", action="store_true")
    ap.add_argument("--grpo-types", default="all", help="comma list of types GRPO trains on, or all")
    ap.add_argument("--image-size", type=int, default=84)
    ap.add_argument("--vision-depth", type=int, default=2)
    ap.add_argument("--vision-hidden", type=int, default=64)
    ap.add_argument("--vision-init-std", type=float, default=0.0)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--n-eval", type=int, default=1000)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--grpo-pool", default="", help="comma list TYPE[@LIMIT]: GRPO rows per type (overrides --grpo-types)")
    ap.add_argument("--dev", action="store_true", help="evaluate on a dev slice of the TRAIN split (images with "
                    "image_id % 10 == 0, held out of cold start and GRPO) instead of the test split: for design choices")
    ap.add_argument("--dev-yesno", type=int, default=5000, help="--dev: yes/no questions among the dev slice's "
                    "rows before the image filter (every colour and shape question is kept)")
    ap.add_argument("--tag", default="")
    ap.add_argument("--out", default="examples/easy_vqa/research/results.jsonl")
    a = ap.parse_args()
    torch.set_num_threads(1)
    T: dict[str, float] = {}

    t = time.perf_counter()
    train = load_easy_vqa("train", seed=a.seed)
    test = load_easy_vqa("test", seed=0, limit=a.n_eval or None)  # the same fixed 1,000 questions for every run
    if a.dev:  # design choices are made on a slice of the train split, never on the test split
        dev = load_easy_vqa("train", seed=0, counts={"color": None, "shape": None, "yesno": a.dev_yesno})
        test = dev.select([i for i, m in enumerate(dev["image_id"]) if m % 10 == 0][: a.n_eval or None])
        train = train.select([i for i, m in enumerate(train["image_id"]) if m % 10 != 0])
    cache: dict[str, object] = {}

    def rows_of(ds):
        out = []
        for r in ds:
            p = r["image"]
            if p not in cache:
                cache[p] = load_image(p)
            out.append({**r, "image": cache[p]})
        return out

    train_rows = rows_of(train)
    test_rows = rows_of(test)
    texts = list(load_easy_vqa("train", seed=None)["prompt"]) + [w for ws in ANSWERS_BY_TYPE.values() for w in ws]
    tok = train_small_tokenizer(texts, 512)
    spec = TinySpec(
        hidden_size=a.hidden, num_layers=a.layers, vision_depth=a.vision_depth,
        vision_hidden_size=a.vision_hidden, image_size=a.image_size,
    )
    model = build_vlm_model(tok, spec, a.seed)
    if a.vision_init_std:
        from rlkit.models.tiny import reinit_vision

        reinit_vision(model, a.vision_init_std, a.seed)
    proc = make_vlm_processor(tok, a.image_size)
    nparams = sum(p.numel() for p in model.parameters())
    T["build_s"] = time.perf_counter() - t

    gen = make_hf_generate_fn(model, proc, max_new_tokens=a.max_new)

    from PIL import Image

    blank = Image.new("RGB", (64, 64), (240, 235, 235))  # the background without a shape
    blind_rows = [{**r, "image": blank} for r in test_rows]

    def ev(tag, blind=False):
        t0 = time.perf_counter()
        res = evaluate_vqa(gen, test_rows)
        dt = time.perf_counter() - t0
        line = {"tag": tag, "acc": round(res["accuracy"], 4),
                **{k: round(v["accuracy"], 4) for k, v in res["by_type"].items()}, "eval_s": round(dt, 1)}
        if blind:
            b = evaluate_vqa(gen, blind_rows)
            res["blind"] = {"acc": b["accuracy"], **{k: v["accuracy"] for k, v in b["by_type"].items()}}
            line["blind"] = {k: round(v, 4) for k, v in res["blind"].items()}
        print(json.dumps(line), flush=True)
        return res, dt

    # ---- cold start
    spec_s = {"format": "color=random,shape=random,yesno=random", "true": "color=true,shape=true,yesno=true",
              "none": "", "demo": ""}.get(a.cold, a.cold)
    labels: dict[str, str] = {}
    cold_rows = []
    for part in filter(None, spec_s.split(",")):
        typ, _, rest = part.partition("=")
        how, _, lim = rest.partition("@")
        assert typ in ANSWERS_BY_TYPE and how in ("true", "random"), part
        labels[typ] = how
        rows_t = [r for r in train_rows if r["type"] == typ]
        cold_rows += rows_t[: int(lim)] if lim else rows_t
    random.Random(a.seed).shuffle(cold_rows)
    if a.cold == "demo":
        from rlkit.data.easy_vqa import load_easy_vqa_cold_start

        labels = {"color": "true", "shape": "true", "yesno": "true"}  # answers already randomised where meant
        cold_rows = rows_of(load_easy_vqa_cold_start(seed=a.seed))

    def label_fn(row, rng):
        if labels[row["type"]] == "true":
            return row["answer"]
        return rng.choice(ANSWERS_BY_TYPE[row["type"]])

    t = time.perf_counter()
    if cold_rows and a.cold_steps > 0:
        res_sft = sft(model, proc, cold_rows, SFTConfig(lr=a.cold_lr, batch_size=a.cold_batch, max_steps=a.cold_steps,
                                                         seed=a.seed, warmup_steps=10), label_fn=label_fn)
        print(json.dumps({"sft_steps": res_sft.steps, "sft_loss_first": res_sft.losses[0],
                          "sft_loss_last": sum(res_sft.losses[-10:]) / 10}), flush=True)
    T["cold_s"] = time.perf_counter() - t
    before, T["eval_before_s"] = ev("before", blind=True)

    # ---- GRPO
    s = GRPOSettings(prompts_per_step=a.B, group_size=a.G, temperature=a.temp, max_new_tokens=a.max_new,
                     lr=a.lr, std_normalise=not a.drgrpo)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.0)
    pool = train_rows if a.grpo_types == "all" else [r for r in train_rows if r["type"] in a.grpo_types.split(",")]
    if a.grpo_pool:
        pool = []
        for part in a.grpo_pool.split(","):
            typ, _, lim = part.partition("@")
            rows_t = [r for r in train_rows if r["type"] == typ]
            pool += rows_t[: int(lim)] if lim else rows_t
    rng = random.Random(a.seed + 1)
    order: list[int] = []
    curve = []
    grpo_s = 0.0
    step = 0
    agg: dict[str, float] = {}
    while step < a.grpo_steps and (a.grpo_seconds is None or grpo_s < a.grpo_seconds):
        if len(order) < a.B:
            perm = list(range(len(pool)))
            rng.shuffle(perm)
            order.extend(perm)
        batch = [pool[i] for i in order[: a.B]]
        del order[: a.B]
        t0 = time.perf_counter()
        st = grpo_step(model, proc, opt, batch, s)
        grpo_s += time.perf_counter() - t0
        step += 1
        for k, v in st.items():
            agg[k] = agg.get(k, 0.0) + v
        if a.eval_every and step % a.eval_every == 0 and step < a.grpo_steps:
            print(json.dumps({"step": step, "grpo_s": round(grpo_s, 1),
                              **{k: round(v / a.eval_every, 3) for k, v in agg.items()}}), flush=True)
            agg = {}
            res, _ = ev(f"step{step}")
            curve.append({"step": step, "grpo_s": round(grpo_s, 1), "acc": res["accuracy"],
                          **{k: v["accuracy"] for k, v in res["by_type"].items()}})
    T["grpo_s"] = grpo_s
    after, T["eval_after_s"] = ev("after", blind=True)
    summary = {
        "tag": a.tag, "args": vars(a), "params": nparams, "grpo_steps_done": step,
        "s_per_step": grpo_s / max(1, step),
        "before": {"acc": before["accuracy"], **{k: v["accuracy"] for k, v in before["by_type"].items()}},
        "after": {"acc": after["accuracy"], **{k: v["accuracy"] for k, v in after["by_type"].items()}},
        "blind_before": before["blind"], "blind_after": after["blind"],
        "times": {k: round(v, 1) for k, v in T.items()}, "total_s": round(sum(T.values()), 1), "curve": curve,
    }
    print(json.dumps({k: summary[k] for k in ("before", "after", "times", "total_s", "s_per_step")}), flush=True)
    with open(a.out, "a") as f:
        f.write(json.dumps(summary) + "\n")


if __name__ == "__main__":
    main()
