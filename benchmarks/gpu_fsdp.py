"""trainer.strategy fsdp2 against replicate on one device: same weights after a few steps, time, peak memory.

    python benchmarks/gpu_fsdp.py [--device cuda|cpu] [--sizes tiny,s] [--steps 3] [--dtype bfloat16] [--out FILE]

Why: the 2-rank FSDP2 tests run on CPU with gloo (tests/test_fsdp.py); this script is what runs the same code on
a GPU, where FSDP2 uses NCCL (all-gather, reduce-scatter) and bf16, in the few minutes of GPU time we get. No
Ray: one process forms a 1-rank group (NCCL on CUDA, gloo on CPU; file rendezvous), so nothing is actually
split, but every FSDP2 path runs: `fully_shard` of blocks, vision tower and root, DTensor parameters and AdamW
state, the vision tower called before the root (rlkit/policy/vision.py), reduce-scatter with divide factor 1, global
norm clipping over DTensor gradients, the full state dict and full optimizer state of a checkpoint.

Per size (Qwen2.5-VL-shaped, randomly initialised, the sizes of benchmarks/gpu_worker.py), the same initial
weights and the same GRPO-like batch (prompts x n sequences, each image shared by its n samples) train for
`--steps` steps once with strategy replicate and once with fsdp2; the table gives, per strategy, the median
step time, the peak memory and the relative update of all weights together (the steps moved the
weights: the comparison is not vacuous; lr 1e-3 so bf16 weights move), and between them the largest relative difference (in norm) of any weight
tensor and of any AdamW moment (from the fsdp2 checkpoint's trainer_state.pt against replicate's optimizer),
and the per-step gradient norms (before clipping). Replicate runs twice: the difference between its
two runs is the noise floor (CUDA kernels that add with atomics are not bitwise deterministic, and Adam turns
a last-bit difference in a near-zero gradient into a visible one on small tensors such as zero-initialised
biases); `--deterministic` turns on torch.use_deterministic_algorithms. JSON to benchmarks/results/gpu_fsdp.json. `--device cpu --sizes tiny` is a smoke
run of the script itself (tests/test_fsdp.py runs it).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import tempfile
import time
import traceback

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from gpu_worker import SIZES, make_items, swap_model  # noqa: E402


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def run_strategy(strategy, model_dir, spec, init, args, items_seed=0):
    """Train `args.steps` steps with `strategy` from the weights `init`; returns (row, worker)."""
    import torch

    from rlkit.models.loading import tokenizer_of
    from rlkit.models.tiny import TinySpec, build_vlm_model
    from rlkit.policy.worker import PolicyWorker

    spec = dict(spec)
    micro = spec.pop("micro")
    w = PolicyWorker(str(model_dir), dtype=args.dtype, micro_batch_size=micro, device=args.device, lr=args.lr,
                     strategy=strategy)
    if init is not None:  # a bigger model built on the device (writing it to disk would dominate the run)
        dtype = getattr(torch, args.dtype)
        torch.set_default_dtype(dtype)
        with torch.device(w.device):
            model = build_vlm_model(tokenizer_of(w.processor), TinySpec(**spec))
        torch.set_default_dtype(torch.float32)
        model.load_state_dict(init)
        swap_model(w, model)
        w.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    if strategy == "fsdp2":
        rdv = pathlib.Path(tempfile.mkdtemp(prefix="rlkit-fsdp-")) / "rendezvous"
        w.join_group(f"file://{rdv}", 0, 0, 1)  # backend: NCCL on CUDA, gloo on CPU
    items = make_items(w, args.prompts, args.n, args.tokens, spec["image_size"], seed=items_seed)
    cuda = w.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    before = {k: v.detach().float().cpu() for k, v in w.state_dict().items()}
    times, losses, norms = [], [], []
    for _ in range(args.steps):
        _sync(w.device)
        t = time.perf_counter()
        m = w.train_step(items)
        _sync(w.device)
        times.append(time.perf_counter() - t)
        losses.append(m["train/loss"])
        norms.append(m["train/grad_norm"])
    row = {"strategy": strategy, "step_s_median": statistics.median(times), "step_s": times, "losses": losses,
           "grad_norms": norms, "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"),
           "params_b": sum(p.numel() for p in w.model.parameters()) / 1e9,
           "rel_update": global_rel_diff(w.state_dict(), before)}  # the steps moved the weights: not vacuous
    return row, w


def rel_diff(a, b) -> float:
    a, b = a.float().cpu(), b.float().cpu()
    return float((a - b).norm() / b.norm().clamp(min=1e-12))


def global_rel_diff(a: dict, b: dict) -> float:
    """||a - b|| / ||b|| over all tensors together."""
    num = sum(float((a[k].float().cpu() - b[k].float().cpu()).norm()) ** 2 for k in b)
    return (num / max(sum(float(b[k].float().norm()) ** 2 for k in b), 1e-24)) ** 0.5


def run_size(name, args, work, texts):
    import torch

    from rlkit.models.loading import build_tiny

    spec = dict(SIZES[name])
    model_dir = build_tiny("vlm", work / name, texts=texts, image_size=spec["image_size"])
    init = None
    if name != "tiny":  # the same random weights for both strategies, built once on the CPU
        from rlkit.models.loading import load_processor, tokenizer_of
        from rlkit.models.tiny import TinySpec, build_vlm_model

        s = {k: v for k, v in spec.items() if k != "micro"}
        init = build_vlm_model(tokenizer_of(load_processor(str(model_dir))), TinySpec(**s)).state_dict()
    runs = []
    for _ in range(2):  # twice: the second run measures the noise floor (CUDA kernels with atomics)
        rep, wr = run_strategy("replicate", model_dir, spec, init, args)
        runs.append(({k: v.detach().float().cpu() for k, v in wr.state_dict().items()},
                     {i: {k: v.float().cpu() for k, v in s.items() if k != "step"}
                      for i, s in wr.optimizer.state_dict()["state"].items()}))
        del wr
        if args.device == "cuda":
            torch.cuda.empty_cache()
    (ref_w, ref_opt), (again_w, again_opt) = runs
    fs, wf = run_strategy("fsdp2", model_dir, spec, init, args)
    got_w = wf.state_dict()
    ck = work / f"{name}-ck"
    wf.save(str(ck))  # the checkpoint's format: full weights, full optimizer state
    saved = torch.load(ck / "trainer_state.pt", weights_only=False, map_location="cpu")["optimizer"]["state"]
    wf.leave_group()
    del wf
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return {"size": name, "dtype": args.dtype, "params_b": rep["params_b"], "steps": args.steps,
            "sequences": args.prompts * args.n, "replicate": rep, "fsdp2": fs,
            "max_rel_weight_diff": max(rel_diff(got_w[k], ref_w[k]) for k in ref_w),
            "worst_tensor": max(ref_w, key=lambda k: rel_diff(got_w[k], ref_w[k])),
            "rel_weight_diff": global_rel_diff(got_w, ref_w),
            "max_rel_adam_diff": max(rel_diff(saved[i][k], v) for i, s in ref_opt.items() for k, v in s.items()),
            "noise_max_rel_weight_diff": max(rel_diff(again_w[k], ref_w[k]) for k in ref_w),
            "noise_rel_weight_diff": global_rel_diff(again_w, ref_w),
            "noise_max_rel_adam_diff": max(rel_diff(again_opt[i][k], v) for i, s in ref_opt.items()
                                           for k, v in s.items()),
            "same_keys": set(got_w) == set(ref_w)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda", help="cuda (NCCL) or cpu (gloo; a smoke run with --sizes tiny)")
    ap.add_argument("--sizes", default="tiny,s")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--lr", type=float, default=1e-3, help="large enough to move bf16 weights")
    ap.add_argument("--deterministic", action="store_true", help="torch.use_deterministic_algorithms (CUDA)")
    ap.add_argument("--out", default="benchmarks/results/gpu_fsdp.json")
    args = ap.parse_args()

    import torch
    import transformers

    env = {"torch": torch.__version__, "transformers": transformers.__version__, "cuda": torch.cuda.is_available(),
           "device": torch.cuda.get_device_name(0) if args.device == "cuda" and torch.cuda.is_available() else "cpu"}
    print(json.dumps(env), flush=True)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_fsdp: no CUDA device visible (--device cpu for a smoke run)", file=sys.stderr)
        return 2
    if args.device == "cpu":
        torch.set_num_threads(1)
    if args.deterministic:
        import os

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    texts = [f"what is in the image? {w}" for w in "red blue green circle square triangle yes no".split()]
    work = pathlib.Path(tempfile.mkdtemp(prefix="rlkit-gpu-fsdp-"))
    result = {"env": env, "args": vars(args), "rows": [], "errors": {}}
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.sizes.split(","):
        try:
            row = run_size(name, args, work, texts)
            result["rows"].append(row)
            print(json.dumps(row), flush=True)
        except Exception:
            result["errors"][name] = traceback.format_exc()
            print(result["errors"][name], file=sys.stderr, flush=True)
        out.write_text(json.dumps(result, indent=1))
    print(f"\nfsdp2 (1-rank group, {'NCCL' if args.device == 'cuda' else 'gloo'}) vs replicate on {env['device']}, "
          f"{args.dtype}, {args.prompts} prompts x {args.n}, {args.tokens} completion tokens, {args.steps} steps")
    print("| size | params (B) | replicate step s | fsdp2 step s | replicate peak GiB | fsdp2 peak GiB "
          "| rel update | rel weight diff (all / worst tensor) | max rel AdamW diff "
          "| replicate twice: same three | grad norms replicate / fsdp2 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        a, b = r["replicate"], r["fsdp2"]
        print(f"| {r['size']} | {r['params_b']:.3g} | {a['step_s_median']:.3g} | {b['step_s_median']:.3g} "
              f"| {a['peak_gib']:.3g} | {b['peak_gib']:.3g} | {a['rel_update']:.2e} "
              f"| {r['rel_weight_diff']:.1e} / {r['max_rel_weight_diff']:.1e} | {r['max_rel_adam_diff']:.1e} "
              f"| {r['noise_rel_weight_diff']:.1e} / {r['noise_max_rel_weight_diff']:.1e} / "
              f"{r['noise_max_rel_adam_diff']:.1e} | {', '.join(f'{x:.4g}' for x in a['grad_norms'])} / "
              f"{', '.join(f'{x:.4g}' for x in b['grad_norms'])} |")
    print(f"JSON: {out}")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
