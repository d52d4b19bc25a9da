"""The policy worker on a GPU: bf16 training steps, the RLPR-style scoring pass and memory, per model size.

    python benchmarks/gpu_worker.py [--sizes tiny,s,m,l] [--prompts 8] [--n 8] [--tokens 256] [--out FILE]

Why: CI and the development machine have no GPU, so this script is what checks that the worker trains on
CUDA in bf16 (model, batches and optimizer on the device) and what it costs as the model grows. Models are
Qwen2.5-VL-shaped, randomly initialised from configs (no hub), with the project's small 512-token
vocabulary (so the output head is cheap and the figures are the body's cost):

    size  language model (hidden x layers)   vision tower (hidden x depth)   image
    tiny  128 x 2                            64 x 2                          84 px  (9 tokens)
    s     896 x 24   (Qwen2.5-0.5B's body)   1280 x 8                        448 px (256 tokens)
    m     1536 x 28  (Qwen2.5-1.5B's body)   1280 x 32 (Qwen2.5-VL's tower)  448 px (256 tokens)
    l     2048 x 36  (Qwen2.5-3B's body)     1280 x 32                       448 px (256 tokens)

Per size, a GRPO batch (prompts x n sequences, each image shared by its n samples, `--tokens` completion
tokens): `train_step` (one optimizer step, micro-batches accumulate) and `compute_logprobs` (the no-grad pass
RLPR and the KL reward use), median of 3 after a warm-up, peak memory, and the train step with every image
encoded per sequence (rlkit/policy/vision.py off) for comparison. Checks on the tiny model: CUDA fp32 logprobs equal
CPU fp32 ones; bf16 ones are close. Prints a table and writes JSON (default benchmarks/results/gpu_worker.json).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import random
import statistics
import sys
import tempfile
import time
import traceback

SIZES = {
    "tiny": dict(hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=256,
                 vision_depth=2, vision_hidden_size=64, vision_heads=4, image_size=84, micro=64),
    "s": dict(hidden_size=896, num_layers=24, num_heads=14, num_kv_heads=2, intermediate_size=4864,
              vision_depth=8, vision_hidden_size=1280, vision_heads=16, image_size=448, micro=32),
    "m": dict(hidden_size=1536, num_layers=28, num_heads=12, num_kv_heads=2, intermediate_size=8960,
              vision_depth=32, vision_hidden_size=1280, vision_heads=16, image_size=448, micro=16),
    "l": dict(hidden_size=2048, num_layers=36, num_heads=16, num_kv_heads=2, intermediate_size=11008,
              vision_depth=32, vision_hidden_size=1280, vision_heads=16, image_size=448, micro=8),
}


def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeats=3):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        _sync()
        t = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def make_items(worker, prompts, n, tokens, image_size, seed=0):
    from PIL import Image

    from rlkit.step.modes import render_prompt
    from rlkit.records import PromptRow, TrainItem

    rng = random.Random(seed)
    pool = worker.tokenizer(" the red circle is above a blue square and yes no 12 + 7 = 19 so", add_special_tokens=False)["input_ids"]
    items = []
    for p in range(prompts):
        img = Image.new("RGB", (image_size, image_size), tuple(rng.randrange(256) for _ in range(3)))
        for x in range(0, image_size, 16):  # some structure, so images differ
            img.putpixel((x, (x * (p + 3)) % image_size), (255, 255, 255))
        row = PromptRow(p, f"Question {p}: what is in the image?", [img], "a", {})
        text = render_prompt(worker.processor, row, "deep")
        for _ in range(n):
            items.append(TrainItem(text, [img], [rng.choice(pool) for _ in range(tokens)], rng.gauss(0, 1), []))
    return items


def swap_model(worker, model, gradient_checkpointing=False):
    """Put a model built directly on the device into a worker (writing multi-GB random weights to disk and
    reading them back would dominate the run)."""
    import torch

    if gradient_checkpointing:  # as PolicyWorker.__init__ does
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    worker.model = model.train()
    worker.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    worker._encoded.clear()


def run_size(name, spec, args, tiny_dir, texts):
    import torch

    import rlkit.policy.worker as W
    from rlkit.models.loading import build_tiny, tokenizer_of
    from rlkit.models.tiny import TinySpec, build_vlm_model

    micro = spec.pop("micro")
    model_dir = build_tiny("vlm", pathlib.Path(tiny_dir) / name, texts=texts, image_size=spec["image_size"])
    worker = W.PolicyWorker(str(model_dir), dtype="bfloat16", micro_batch_size=micro, device=args.device,
                            gradient_checkpointing=args.gradient_checkpointing)
    if name != "tiny":
        torch.set_default_dtype(torch.bfloat16)
        with torch.device(args.device):
            model = build_vlm_model(tokenizer_of(worker.processor), TinySpec(**spec))
        torch.set_default_dtype(torch.float32)
        swap_model(worker, model, args.gradient_checkpointing)
    params = sum(p.numel() for p in worker.model.parameters())
    items = make_items(worker, args.prompts, args.n, args.tokens, spec["image_size"])
    cuda = worker.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    train = timed(lambda: worker.train_step(items))
    peak_train = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    score = timed(lambda: worker.compute_logprobs(items))
    orig = W.image_inputs
    W.image_inputs = lambda m, pv, g, k, **_: {"pixel_values": pv, "image_grid_thw": g}
    try:
        train_plain = timed(lambda: worker.train_step(items), repeats=2)
    finally:
        W.image_inputs = orig
    seq_tokens = sum(len(worker.encode_prompts([it])[0]["ids"]) + len(it.completion_ids) for it in items)
    worker = None  # freed before the next model is built
    if cuda:
        torch.cuda.empty_cache()
    return {"size": name, "gradient_checkpointing": args.gradient_checkpointing, "params_b": params / 1e9, "micro_batch": micro, "sequences": len(items),
            "tokens": seq_tokens, "train_step_s": train, "score_pass_s": score, "score_over_train": score / train,
            "train_step_no_dedup_s": train_plain, "dedup_speedup": train_plain / train,
            "train_tokens_per_s": seq_tokens / train, "peak_gib": peak_train}


def run_sizes(run_size, args, tiny_dir, texts, result: dict) -> None:
    """`run_size` for each of args.sizes: rows (or the traceback) into `result`, written to args.out after each,
    so a size that crashes or a run cut short keeps what was measured."""
    for name in args.sizes.split(","):
        try:
            row = run_size(name, dict(SIZES[name]), args, tiny_dir, texts)
            result["rows"].append(row)
            print(json.dumps(row), flush=True)
        except Exception:
            result["errors"][name] = traceback.format_exc()
            print(result["errors"][name], file=sys.stderr, flush=True)
        out = pathlib.Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))


def check_tiny(tiny_dir, texts, device):
    """CUDA fp32 logprobs equal CPU fp32 ones; bf16 within bf16 precision."""
    from rlkit.models.loading import build_tiny
    from rlkit.policy.worker import PolicyWorker

    d = build_tiny("vlm", pathlib.Path(tiny_dir) / "check", texts=texts)
    out = {}
    ref = PolicyWorker(str(d), device="cpu")
    items = make_items(ref, 3, 2, 12, 84)
    base = ref.compute_logprobs(items)
    for dtype in ("float32", "bfloat16"):
        w = PolicyWorker(str(d), device=device, dtype=dtype)
        got = w.compute_logprobs(items)
        out[f"max_abs_diff_cuda_{dtype}_vs_cpu_fp32"] = max(abs(a - b) for u, v in zip(got, base) for a, b in zip(u, v))
        m = w.train_step(items)
        out[f"train_step_finite_{dtype}"] = all(v == v for v in m.values())
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="tiny,s,m,l")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--out", default="benchmarks/results/gpu_worker.json")
    ap.add_argument("--gradient-checkpointing", action="store_true", help="trainer.gradient_checkpointing on")
    ap.add_argument("--skip-checks", action="store_true", help="skip the tiny-model CUDA/CPU comparison")
    ap.add_argument("--device", default="cuda", help="cpu: a dry run of the script itself (use --sizes tiny)")
    args = ap.parse_args()

    import torch
    import transformers

    from rlkit.policy.vision import supports_dedup  # noqa: F401  (import check)

    env = {"torch": torch.__version__, "transformers": transformers.__version__, "cuda": torch.cuda.is_available(),
           "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    print(json.dumps(env))
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_worker: no CUDA device visible (--device cpu for a dry run)", file=sys.stderr)
        return 2
    torch.set_num_threads(1 if args.device == "cpu" else torch.get_num_threads())
    texts = [f"what is in the image? {w}" for w in "red blue green circle square triangle yes no".split()]
    tiny_dir = tempfile.mkdtemp(prefix="rlkit-gpu-")
    result = {"env": env, "args": vars(args), "rows": [], "errors": {}}
    try:
        if not args.skip_checks:
            result["checks"] = check_tiny(tiny_dir, texts, args.device)
            print(json.dumps(result["checks"]))
    except Exception:
        result["errors"]["checks"] = traceback.format_exc()
        print(result["errors"]["checks"], file=sys.stderr)
    run_sizes(run_size, args, tiny_dir, texts, result)
    cols = ("size", "gradient_checkpointing", "params_b", "micro_batch", "tokens", "train_step_s", "score_pass_s", "score_over_train",
            "train_step_no_dedup_s", "dedup_speedup", "train_tokens_per_s", "peak_gib")
    print(f"\npolicy worker on {env['device'] if args.device == 'cuda' else 'cpu'}, bf16, {args.prompts} prompts x {args.n}, {args.tokens} completion tokens")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in result["rows"]:
        print("| " + " | ".join(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
