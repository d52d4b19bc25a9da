"""Analysis after `rlkit ablation` (not used for any choice): held-out accuracy by row kind (easy facts / hard
chains) and mode, for each seed's cold start and both runs' final checkpoints.

    PYTHONPATH=. python examples/ablation/per_kind.py --config examples/ablation/ablation.yaml --run runs/ablation

Writes per_kind.json and per_kind.md in the run folder.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

from rlkit.runtime_env import apply_defaults

apply_defaults(TRANSFORMERS_VERBOSITY="error", VLLM_LOGGING_LEVEL="ERROR", HF_HUB_DISABLE_PROGRESS_BARS="1")
KINDS = ("easy", "hard")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="examples/ablation/ablation.yaml")
    ap.add_argument("--run", default="runs/ablation")
    args = ap.parse_args()
    import safetensors.torch
    import torch

    torch.set_num_threads(1)
    from rewards.registry import get_reward
    from rlkit.drivers.ablation import load_ablation_config
    from rlkit.drivers.cold_start import load_rows
    from rlkit.drivers.ablation_eval import prompt_rows, reward_rows_score_fn
    from rlkit.drivers.evaluate import evaluate_modes
    from rlkit.models.loading import load_processor
    from rollout import make_engine

    grpo, abl = load_ablation_config(args.config)
    rows = load_rows(grpo, abl.eval.source, abl.eval.split, abl.eval.limit)
    score = reward_rows_score_fn(get_reward(abl.eval.reward))
    run = pathlib.Path(args.run)
    out = {}
    for s in abl.seeds:
        res = json.loads((run / f"seed_{s}" / "ablation.json").read_text())
        cold = res["cold_start"]["checkpoint"]
        proc = load_processor(cold)
        engine = make_engine("vllm", model_path=cold, max_model_len=grpo.rollout.max_model_len, seed=0)
        out[s] = {}
        for name, path in (("cold start", None), *((n, res["runs"][n]["checkpoint"]) for n in ("deep_only", "hybrid"))):
            if path:
                state = {}
                for f in sorted(pathlib.Path(path).glob("*.safetensors")):
                    state.update(safetensors.torch.load_file(str(f)))
                engine.update_weights(state)
            out[s][name] = {k: {m: v["accuracy"] for m, v in evaluate_modes(
                engine, proc, prompt_rows([r for r in rows if r["kind"] == k]), modes=["fast", "deep"], score_fn=score,
                max_tokens=abl.eval.max_tokens or grpo.rollout.max_tokens).items()} for k in KINDS}
            print(s, name, out[s][name], flush=True)
        engine.close()
    (run / "per_kind.json").write_text(json.dumps(out, indent=1))
    lines = ["| seed | policy | fast, easy | fast, hard | deep, easy | deep, hard |", "| --- | --- | --- | --- | --- | --- |"]
    for s, d in out.items():
        for name, r in d.items():
            lines.append(f"| {s} | {name} | {r['easy']['fast']:.3f} | {r['hard']['fast']:.3f} | "
                         f"{r['easy']['deep']:.3f} | {r['hard']['deep']:.3f} |")
    n = len(out)
    for name in ("cold start", "deep_only", "hybrid"):
        m = {(k, mode): sum(out[s][name][k][mode] for s in out) / n for k in KINDS for mode in ("fast", "deep")}
        lines.append(f"| mean | {name} | {m['easy', 'fast']:.3f} | {m['hard', 'fast']:.3f} | {m['easy', 'deep']:.3f} | "
                     f"{m['hard', 'deep']:.3f} |")
    (run / "per_kind.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
