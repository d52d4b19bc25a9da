"""Held-out curves of a finished GRPO run from its checkpoints, for the ablation.

The GRPO driver evaluates in the loop (`trainer.eval_every`) when the held-out rows come from `data.source`.
When `ablation.eval.source` names another source, the ablation saves a checkpoint every `eval.every` steps
instead and `checkpoint_curve` loads each into one engine in place and evaluates it with
`rlkit.drivers.evaluate.evaluate_modes`, writing records with the same names as the in-loop ones (`step`,
`tokens_sampled_total`, `eval/{mode}/accuracy`, `eval/{mode}/tokens_mean`).
"""
from __future__ import annotations

import json
import pathlib
from typing import Any, Callable, Sequence

from rlkit.drivers.evaluate import evaluate_modes
from rlkit.records import PromptRow


def reward_rows_score_fn(reward: Callable) -> Callable:
    """A `rlkit.drivers.evaluate` score_fn from a plain reward function `fn(prompts, completions, answer=, mode=)`."""

    def score(rows: Sequence[PromptRow], mode: str, texts: list[str], ids: list[list[int]]) -> list:
        return reward([r.prompt for r in rows], texts, answer=[r.answer for r in rows], mode=[mode] * len(rows))

    return score


def prompt_rows(rows: Sequence[dict[str, Any]]) -> list[PromptRow]:
    """Dict rows (`prompt`, `answer`, optional `image`) as the PromptRows rlkit.drivers.evaluate takes."""
    return [PromptRow(i, r["prompt"], [r["image"]] if r.get("image") is not None else [], r.get("answer"), {})
            for i, r in enumerate(rows)]


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

    from rlkit.run import checkpoint as ckpt
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
        res = evaluate_modes(engine, processor, prompt_rows(rows), modes=modes, score_fn=reward_rows_score_fn(score_fn),
                             max_tokens=max_tokens, system_prompt=system_prompt)
        records.append(eval_record(step, int(tokens.get(step) or 0), res))
    return records
