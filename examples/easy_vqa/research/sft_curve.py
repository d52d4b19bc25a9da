"""Calibration: how fast does supervised learning (true labels) learn each question type of easy-VQA?

    python examples/easy_vqa/research/sft_curve.py --types color --steps 200 --every 25
"""
import argparse
import json
import os
import sys
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch
from rlkit.data.easy_vqa import ANSWERS_BY_TYPE, load_easy_vqa
from rlkit.models.tiny import TinySpec, build_vlm_model, make_vlm_processor
from rlkit.models.tokenizers import train_small_tokenizer
from rlkit.drivers.sft import SFTConfig, load_image, sft
from rlkit.drivers.vqa_eval import evaluate_vqa, make_hf_generate_fn

ap = argparse.ArgumentParser()
ap.add_argument("--types", default="color")
ap.add_argument("--steps", type=int, default=200)
ap.add_argument("--every", type=int, default=25)
ap.add_argument("--lr", type=float, default=5e-4)
ap.add_argument("--batch", type=int, default=32)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--image-size", type=int, default=84)
ap.add_argument("--vision-depth", type=int, default=2)
ap.add_argument("--vision-hidden", type=int, default=64)
ap.add_argument("--vision-init-std", type=float, default=0.0)
a = ap.parse_args()
torch.set_num_threads(1)
types = a.types.split(",")
cache = {}


def rows_of(ds):
    out = []
    for r in ds:
        if r["image"] not in cache:
            cache[r["image"]] = load_image(r["image"])
        out.append({**r, "image": cache[r["image"]]})
    return out


train = rows_of(load_easy_vqa("train", seed=a.seed, types=types))
test = rows_of(load_easy_vqa("test", seed=0, types=types, limit=400))
texts = list(load_easy_vqa("train", seed=None)["prompt"]) + [w for ws in ANSWERS_BY_TYPE.values() for w in ws]
tok = train_small_tokenizer(texts, 512)
spec = TinySpec(image_size=a.image_size, vision_depth=a.vision_depth, vision_hidden_size=a.vision_hidden)
model = build_vlm_model(tok, spec, a.seed)
if a.vision_init_std:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from rlkit.models.tiny import reinit_vision
    reinit_vision(model, a.vision_init_std, a.seed)
proc = make_vlm_processor(tok, a.image_size)
gen = make_hf_generate_fn(model, proc, max_new_tokens=4)
done, secs = 0, 0.0
while done < a.steps:
    r = sft(model, proc, train, SFTConfig(lr=a.lr, batch_size=a.batch, max_steps=a.every, seed=a.seed + done))
    done += r.steps
    secs += r.seconds
    res = evaluate_vqa(gen, test)
    print(json.dumps({"step": done, "sft_s": round(secs, 1), "loss": round(sum(r.losses[-5:]) / 5, 3),
                      **{k: v["accuracy"] for k, v in res["by_type"].items()}}), flush=True)
