"""A rollout engine and the policy worker sharing one GPU: what `rollout.sleep` gives back, and that it is exact.

    python benchmarks/gpu_colocate.py [--sizes s,m] [--prompts 8] [--n 8] [--tokens 64] [--out FILE]
    python benchmarks/gpu_colocate.py --device cpu --sizes tiny     # dry run of the script itself

Why: `ray.placement: colocate` puts rollout worker i and policy rank i on one device, and `rollout.sleep` makes the
engine free its memory while the rank trains. vLLM's sleep mode needs vLLM's CUDA build, which the lent GPU
machine does not have, so this script checks the same contract on the transformers (`hf`) engine, in one
process without Ray: a policy worker and an `HFEngine` on one CUDA device, bf16, Qwen2.5-VL-shaped random
models (benchmarks/gpu_worker.py's sizes). Per size it measures

- memory held while the engine is awake vs asleep (`torch.cuda.memory_allocated`);
- the train step's peak memory with the engine awake vs asleep, and the step time either way;
- the cost of sleeping and of waking through `update_weights` (the weight sync wakes the engine);

and checks that sleeping changes nothing: an engine woken by `generate` holds bitwise the weights it had and
samples what it sampled before (same seed; where sampling repeats at all on the device: bf16 sampling on a
GPU need not, so a control run without sleep is reported beside it), and an engine woken by `update_weights`
holds bitwise the synced weights. Prints a table; writes JSON (default
benchmarks/results/gpu_colocate.json).
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from gpu_worker import make_items, run_sizes, swap_model  # noqa: E402


def _gib(device) -> float:
    import torch

    if device.type != "cuda":
        return float("nan")
    torch.cuda.synchronize()
    return torch.cuda.memory_allocated() / 2**30


def _equal(model, reference: dict) -> bool:
    """Every tensor of `model`'s state dict bitwise equal to `reference`'s (compared on the CPU)."""
    import torch

    state = model.state_dict()
    return all(torch.equal(state[k].detach().cpu(), v.detach().cpu()) for k, v in reference.items())


def _train(worker, items) -> tuple[float, float]:
    """One train step: (seconds, peak GiB allocated during it; NaN off CUDA)."""
    import torch

    cuda = worker.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    worker.train_step(items)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t, torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")


def _requests(items, n):
    from rollout import RolloutRequest

    return [RolloutRequest(prompt=it.prompt_text, images=list(it.images), n=n) for it in items[::n]]


def run_size(name, spec, args, tiny_dir, texts):
    import torch

    from rlkit.models.loading import build_tiny, tokenizer_of
    from rlkit.models.tiny import TinySpec, build_vlm_model
    from rlkit.policy.worker import PolicyWorker
    from rollout import SamplingConfig
    from rollout.hf_engine import HFEngine

    spec.pop("micro")
    model_dir = build_tiny("vlm", pathlib.Path(tiny_dir) / name, texts=texts, image_size=spec["image_size"])
    worker = PolicyWorker(str(model_dir), dtype="bfloat16", micro_batch_size=8, device=args.device)
    dev = worker.device
    if name != "tiny":
        torch.set_default_dtype(torch.bfloat16)
        with torch.device(dev):
            swap_model(worker, build_vlm_model(tokenizer_of(worker.processor), TinySpec(**spec)))
            engine_model = build_vlm_model(tokenizer_of(worker.processor), TinySpec(**spec))
        torch.set_default_dtype(torch.float32)
    else:
        engine_model = str(model_dir)
    engine = HFEngine(engine_model, worker.processor, device=dev, dtype=torch.bfloat16)
    engine.update_weights(worker.state_dict())  # the engine starts from the policy's weights
    items = make_items(worker, args.prompts, args.n, args.tokens, spec["image_size"])
    reqs = _requests(items, args.n)
    sampling = SamplingConfig(max_tokens=args.tokens, temperature=1.0, seed=0)
    ids = lambda out: [c.token_ids for group in out for c in group]  # noqa: E731
    row = {"size": name, "params_b": sum(p.numel() for p in worker.model.parameters()) / 1e9}

    t = time.perf_counter()
    before = ids(engine.generate(reqs, sampling))
    row["generate_s"] = time.perf_counter() - t
    # control: is sampling itself repeatable on this device (same seed, same weights, never slept)?
    row["repeatable_without_sleep"] = ids(engine.generate(reqs, sampling)) == before
    worker.train_step(items)  # the first step creates the optimizer state; compare steps that both have it
    row["train_awake_s"], row["peak_train_awake_gib"] = _train(worker, items)  # engine awake

    weights = {k: v.detach().cpu().clone() for k, v in engine.model.state_dict().items()}
    row["held_awake_gib"] = _gib(dev)
    t = time.perf_counter()
    row["slept"] = engine.sleep()
    row["sleep_s"] = time.perf_counter() - t
    row["held_asleep_gib"] = _gib(dev)
    row["train_asleep_s"], row["peak_train_asleep_gib"] = _train(worker, items)  # engine asleep

    # exactness 1: woken by generate -> the very same weights, and (where sampling repeats) the same samples
    after = ids(engine.generate(reqs, sampling))
    row["weights_exact_after_generate_wake"] = _equal(engine.model, weights)
    row["same_samples_after_generate_wake"] = after == before
    # exactness 2: woken by update_weights -> exactly the synced weights
    sd = worker.state_dict()
    engine.sleep()
    t = time.perf_counter()
    engine.update_weights(sd)
    row["wake_update_s"] = time.perf_counter() - t
    row["weights_exact_after_update_wake"] = _equal(engine.model, sd)
    row["weights_changed_by_training"] = not _equal(engine.model, weights)  # not vacuous
    del worker, engine
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return row


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="s,m")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--out", default="benchmarks/results/gpu_colocate.json")
    ap.add_argument("--device", default="cuda", help="cpu: a dry run of the script itself (use --sizes tiny)")
    args = ap.parse_args()

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_colocate: no CUDA device visible (--device cpu for a dry run)", file=sys.stderr)
        return 2
    torch.set_num_threads(1 if args.device == "cpu" else torch.get_num_threads())
    env = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"}
    texts = [f"what is in the image? {w}" for w in "red blue green circle square triangle yes no".split()]
    tiny_dir = tempfile.mkdtemp(prefix="rlkit-colocate-")
    result = {"env": env, "args": vars(args), "rows": [], "errors": {}}
    run_sizes(run_size, args, tiny_dir, texts, result)
    cols = ("size", "params_b", "held_awake_gib", "held_asleep_gib", "peak_train_awake_gib", "peak_train_asleep_gib",
            "train_awake_s", "train_asleep_s", "sleep_s", "wake_update_s", "weights_exact_after_generate_wake",
            "weights_exact_after_update_wake", "weights_changed_by_training", "repeatable_without_sleep",
            "same_samples_after_generate_wake")
    print(f"\nhf engine + policy worker on one device ({env['device']}), bf16, {args.prompts} prompts x {args.n}, "
          f"{args.tokens} tokens")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in result["rows"]:
        print("| " + " | ".join(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    ok = all(r["weights_exact_after_generate_wake"] and r["weights_exact_after_update_wake"]
             and r["weights_changed_by_training"]
             and (r["same_samples_after_generate_wake"] or not r["repeatable_without_sleep"]) for r in result["rows"])
    return 0 if ok and not result["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
