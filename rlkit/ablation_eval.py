"""STUB: the held-out evaluation the ablation needs, until the eval work of issue 6 lands on main.

Another branch adds `rlkit.evaluate.evaluate_modes` and in-run evaluation (`trainer.eval_every`, records
`eval/{mode}/accuracy`, `eval/{mode}/tokens_mean` with `step` and the sampled-token count in
`output_dir/metrics.jsonl`). Until then this module provides the same function by the same name and
signature, and `checkpoint_curve`, which computes the same records after a run from the checkpoints it saved
every `every` steps. `rlkit.ablation` imports `evaluate_modes` from `rlkit.evaluate` when it exists and from here
otherwise, and uses in-run records when the GRPO config has `trainer.eval_every`. Once that lands, this
`evaluate_modes` can go; `checkpoint_curve` stays for held-out rows from a source other than data.source
(`ablation.eval.source`), which in-run evaluation does not cover.
"""
from __future__ import annotations

import json
import pathlib
from typing import Any, Callable, Sequence

from rlkit.records import MODES, PromptRow


def evaluate_modes(engine, processor, rows: Sequence[dict[str, Any]], *, modes: Sequence[str], score_fn: Callable,
                   max_tokens: int, system_prompt: str = "") -> dict[str, dict[str, float]]:
    """Greedy answers to `rows` (dicts with `prompt`, `answer`, optional `image`) in each of `modes`, scored with
    `score_fn(prompts, completions, answer=[...], mode=[...]) -> list[float | None]` (a reward function).

    Returns {mode: {"accuracy": mean score (None counts 0), "tokens_mean": mean completion tokens, "n": rows}}.
    """
    from rlkit.data import open_image
    from rlkit.modes import render_prompt
    from rollout import RolloutRequest, SamplingConfig

    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ValueError(f"evaluation modes must be among {MODES}, got {bad}")
    sampling = SamplingConfig(temperature=0.0, max_tokens=max_tokens, n=1, seed=0)
    out = {}
    for mode in modes:
        requests = []
        for i, r in enumerate(rows):
            images = [open_image(r["image"])] if r.get("image") is not None else []
            row = PromptRow(i, r["prompt"], images, r.get("answer"), {})
            requests.append(RolloutRequest(prompt=render_prompt(processor, row, mode, system_prompt), images=images))
        completions = [group[0] for group in engine.generate(requests, sampling)]
        scores = score_fn([r["prompt"] for r in rows], [c.text for c in completions],
                          answer=[r.get("answer") for r in rows], mode=[mode] * len(rows))
        n = max(1, len(rows))
        out[mode] = {"accuracy": sum(float(s or 0.0) for s in scores) / n,
                     "tokens_mean": sum(len(c.token_ids) for c in completions) / n, "n": len(rows)}
    return out


def eval_record(step: int, tokens_sampled_total: int, result: dict[str, dict[str, float]]) -> dict:
    """One metrics line in the eval branch's names: step, tokens_sampled_total, eval/{mode}/{accuracy,tokens_mean}."""
    rec: dict = {"step": step, "tokens_sampled_total": tokens_sampled_total}
    for mode, r in result.items():
        rec[f"eval/{mode}/accuracy"] = r["accuracy"]
        rec[f"eval/{mode}/tokens_mean"] = r["tokens_mean"]
    return rec


def checkpoint_curve(run_dir: str | pathlib.Path, engine, processor, rows, *, modes: Sequence[str], score_fn: Callable,
                     max_tokens: int, system_prompt: str = "", start: dict | None = None) -> list[dict]:
    """Eval records of a finished GRPO run, one per complete checkpoint (`checkpoints/step_N`), in step order.

    `engine` is any rollout engine already holding the run's initial weights; each checkpoint's weights are
    loaded into it in place (`update_weights`). `start`, when given, is the step-0 record (the initial policy's
    evaluation, shared by runs that start from the same checkpoint) and is put first. The sampled-token count
    of step N is read from the run's metrics.jsonl (`tokens/sampled_total`).
    """
    import safetensors.torch

    from rlkit import checkpoint as ckpt

    run_dir = pathlib.Path(run_dir)
    tokens = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        tokens[rec["step"]] = rec.get("tokens/sampled_total", rec.get("tokens_sampled_total"))
    records = [start] if start else []
    for path in sorted(ckpt.complete_checkpoints(run_dir), key=lambda p: int(p.name.split("_")[1])):
        step = int(path.name.split("_")[1])
        state = {}
        for f in sorted(path.glob("*.safetensors")):
            state.update(safetensors.torch.load_file(str(f)))
        engine.update_weights(state)
        res = evaluate_modes(engine, processor, rows, modes=modes, score_fn=score_fn, max_tokens=max_tokens,
                             system_prompt=system_prompt)
        records.append(eval_record(step, int(tokens.get(step) or 0), res))
    return records
