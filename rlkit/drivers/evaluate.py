"""Held-out evaluation per thinking mode: greedy answers from a rollout engine, graded by a training reward.

- `evaluate_modes(engine, processor, rows, modes=..., score_fn=..., max_tokens=...)`: the reusable core. Every
  row is rendered in each mode exactly as the GRPO loop renders it, answered greedily (temperature 0, one
  answer, at most `max_tokens`), and scored by `score_fn(rows, mode, completion_texts, completion_ids)`.
  Returns `{mode: {"accuracy", "tokens_mean", "n"}}`: the mean score (None counts as 0), the mean number of
  completion tokens (the stop token included, as in the training metrics) and the number of rows.
- `reward_score_fn(scorer, reward, ...)`: the `score_fn` that grades like training: the named reward of the
  run's `RewardScorer`, with the row's columns (`rlkit.records.reward_columns`), so held-out accuracy and the
  `mode/<m>/accuracy` training metric never disagree about a right answer.
- `HeldOutEval`: the GRPO driver's in-loop evaluation (`trainer.eval_every`), on the rollout engine that
  already holds the current weights.
- `run_eval`: the `rlkit eval` command: a checkpoint in the config's rollout engine (in this process, no Ray),
  every mode of `trainer.eval_modes`, written to `eval.json`.

`engine_generate_fn(engine, processor)` (older, single mode) turns an engine into the `generate_fn(items)` that
`rlkit.drivers.vqa_eval.evaluate_vqa` takes.

Model output is untrusted text: it is only decoded and handed to the rewards, never evaluated.
"""
from __future__ import annotations

import json
import math
import os
import pathlib
import time
from typing import Any, Callable, Sequence

from rlkit.config import ConfigError, GRPOConfig
from rlkit.data import DataError, has_splits, load_source, map_columns, open_image, to_row
from rlkit.models.loading import ModelLoadError
from rlkit.step.modes import render_prompt
from rlkit.records import FAST, MODES, PromptRow, reward_columns
from rlkit.step.reward_health import step_failures
from rollout import RolloutRequest, SamplingConfig

ScoreFn = Callable[[list, str, list, list], list]  # (rows, mode, completion_texts, completion_ids) -> scores


def evaluate_modes(engine, processor, rows: Sequence[PromptRow], *, modes: Sequence[str], score_fn: ScoreFn,
                   max_tokens: int, system_prompt: str = "") -> dict[str, dict]:
    """`{mode: {"accuracy": float, "tokens_mean": float, "n": int}}` over `rows` answered greedily in each mode.

    engine: any `rollout.Engine` (`generate(requests, sampling)`); processor: the model's processor or
    tokenizer (its chat template renders the prompts); score_fn: see the module docstring; it must return
    one number (or None, counted as 0) per row.
    """
    rows = list(rows)
    if not rows:
        raise ValueError("evaluate_modes: no rows to evaluate")
    sampling = SamplingConfig(temperature=0.0, max_tokens=max_tokens, n=1, seed=0)
    out: dict[str, dict] = {}
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"evaluate_modes: unknown mode {mode!r} (use {', '.join(MODES)})")
        requests = [RolloutRequest(prompt=render_prompt(processor, row, mode, system_prompt),
                                   images=[open_image(im, row.index) for im in row.images], n=1)
                    for row in rows]
        groups = engine.generate(requests, sampling)
        if len(groups) != len(rows) or any(len(g) != 1 for g in groups):
            raise ValueError(f"evaluate_modes: the engine returned {[len(g) for g in groups]} answers for "
                             f"{len(rows)} prompts (one each expected)")
        texts = [g[0].text for g in groups]
        ids = [list(g[0].token_ids) for g in groups]
        scores = list(score_fn(rows, mode, texts, ids))
        if len(scores) != len(rows):
            raise ValueError(f"evaluate_modes: score_fn returned {len(scores)} scores for {len(rows)} rows ({mode})")
        values = [_number(v, row, mode) for v, row in zip(scores, rows)]
        out[mode] = {"accuracy": sum(values) / len(rows), "tokens_mean": sum(map(len, ids)) / len(rows),
                     "n": len(rows)}
        unfit = [row.index for row, g in zip(rows, groups) if g[0].finish_reason == "prompt_too_long"]
        if unfit:  # answered nothing: scored as the score_fn scores an empty answer (wrong), and said once
            out[mode]["prompt_too_long"] = len(unfit)
            print(f"rlkit: eval ({mode}): {len(unfit)} prompt(s) longer than rollout.max_model_len, answered "
                  f"with nothing (rows {', '.join(map(str, unfit[:5]))}{', ...' if len(unfit) > 5 else ''})")
    return out


def _number(v, row: PromptRow, mode: str) -> float:
    if v is None:
        return 0.0
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"evaluate_modes: score of row {row.index} ({mode}) must be a finite number or None, "
                         f"got {v!r}")
    return float(v)


def reward_score_fn(scorer, reward: str, processor, system_prompt: str = "") -> ScoreFn:
    """A `score_fn` grading with the reward named `reward` of `scorer` (a `rewards.RewardScorer`), given the
    same columns as in training; failures are summarised (one line) and score None (0)."""

    def score(rows, mode, texts, ids):
        prompt_texts = [render_prompt(processor, r, mode, system_prompt) for r in rows]
        cols = reward_columns(list(rows), [mode] * len(rows), ids, prompt_texts)
        result = scorer([r.prompt for r in rows], list(texts), cols, only=[reward])
        for failed in step_failures(result).values():  # one line per call, not per row
            print(f"rlkit: eval ({mode}): {failed.describe()}")
        return result.per_reward[reward]

    return score


def accuracy_reward_name(configured: str, names: Sequence[str]) -> str:
    """The reward graded as accuracy: `trainer.accuracy_reward`, or the first reward listed when empty."""
    if not configured:
        return names[0]
    if configured not in names:
        raise ConfigError(f"config key 'trainer.accuracy_reward': {configured!r} is not a configured reward "
                          f"(rewards: {', '.join(names)})")
    return configured


def load_eval_rows(cfg: GRPOConfig, split: str | None = None, limit: int | None = None) -> list[PromptRow]:
    """The held-out rows: `data.eval_source` (or `data.source`), split `data.eval_split`, the first
    `data.eval_limit`, mapped with `data.columns` and validated like training rows (`data.on_bad_row`)."""
    d = cfg.data
    source = d.eval_source or d.source
    split = d.eval_split if split is None else split
    limit = d.eval_limit if limit is None else limit
    if not d.eval_source and not has_splits(source):
        raise ConfigError(f"config key 'data.eval_source': data.source {source} is a local file or folder, which "
                          f"has no splits, so data.eval_split={split!r} cannot select held-out rows; name the "
                          "held-out file with data.eval_source")
    kwargs = dict(d.source_kwargs) if source == d.source else {}
    try:
        ds = load_source(source, split, limit=limit, seed=cfg.seed, **kwargs)
    except DataError:
        raise
    except (ValueError, KeyError) as e:
        raise ConfigError(f"config key 'data.eval_split': cannot load split {split!r} of {source}: {e}") from e
    ds = map_columns(ds, dict(d.columns))
    if "answer" not in ds.column_names:
        raise DataError(f"held-out data {source} ({split}) has no 'answer' column (has {', '.join(ds.column_names)})")
    rows, skipped = [], 0
    for idx in range(len(ds)):
        try:
            row = to_row(idx, ds[idx], cfg.modes.mode_column)
            row.images = [open_image(im, idx) for im in row.images]
            if row.answer is None:
                raise DataError(f"row {idx}: 'answer' is missing or empty")
            rows.append(row)
        except DataError as e:
            if d.on_bad_row == "error":
                raise DataError(f"held-out data {source} ({split}): {e}") from e
            skipped += 1
            print(f"rlkit: eval: skipping bad row: {e}")
    if not rows:
        raise DataError(f"held-out data {source} ({split}) has no usable rows ({skipped} skipped)")
    return rows


class HeldOutEval:
    """The GRPO driver's in-loop evaluation (`trainer.eval_every > 0`): `due(step)` says when (step 0, every
    `eval_every` steps, the last step); `run(tokens_sampled_total)` returns the metrics record
    (`eval/{m}/accuracy`, `eval/{m}/tokens_mean`, `eval/{m}/n`, `tokens_sampled_total`, `time/eval_s`)."""

    def __init__(self, cfg: GRPOConfig, rows: list[PromptRow], engine, processor, score_fn: ScoreFn):
        self.cfg, self.rows, self.engine, self.processor, self.score_fn = cfg, rows, engine, processor, score_fn

    def due(self, step: int) -> bool:
        return step == self.cfg.max_steps or step % self.cfg.trainer.eval_every == 0

    def run(self, tokens_sampled_total: int) -> dict:
        t0 = time.perf_counter()
        res = evaluate_modes(self.engine, self.processor, self.rows, modes=self.cfg.trainer.eval_modes,
                             score_fn=self.score_fn, max_tokens=self.cfg.rollout.max_tokens,
                             system_prompt=self.cfg.data.system_prompt)
        record = {f"eval/{m}/{k}": v for m, r in res.items() for k, v in r.items()}
        return {**record, "tokens_sampled_total": tokens_sampled_total, "time/eval_s": time.perf_counter() - t0}


def resolve_checkpoint(path: str | os.PathLike) -> pathlib.Path:
    """The model folder to evaluate: `path` itself when it holds a model (a `checkpoints/step_N` folder written
    by `rlkit grpo`, or any transformers folder), else the newest complete checkpoint of a run directory or of
    its `checkpoints/` folder. ModelLoadError naming the path otherwise."""
    from rlkit.run import checkpoint as ckpt
    p = pathlib.Path(path).expanduser()
    if not p.exists():
        raise ModelLoadError(f"checkpoint not found: {path}")
    if (p / "config.json").is_file():
        return p
    if p.is_dir():
        run_dir = p.parent if p.name == "checkpoints" else p
        newest = ckpt.latest(run_dir)
        if newest is not None:
            return newest
    raise ModelLoadError(f"checkpoint {path} is not a model folder (no config.json) nor a run directory with a "
                         "complete checkpoint under checkpoints/")


def run_eval(cfg: GRPOConfig, checkpoint: str, *, out: str | None = None, split: str | None = None,
             limit: int | None = None) -> dict:
    """`rlkit eval`: evaluate `checkpoint` in every mode of `trainer.eval_modes` on the held-out split and
    write `eval.json` (default: `<checkpoint>/eval.json`). Returns what it wrote."""
    from rlkit.config import to_dict
    from rlkit.run.checks import check_grpo
    from rlkit.models.loading import load_processor
    from rlkit.run.build import local_engine, reward_scorer

    check_grpo(cfg)
    if limit is not None and limit < 0:
        raise ConfigError(f"--limit: must be >= 0 (0: all rows), got {limit}")
    model_dir = resolve_checkpoint(checkpoint)
    scorer = reward_scorer(cfg, strict=cfg.strict_rewards)
    try:
        name = accuracy_reward_name(cfg.trainer.accuracy_reward, scorer.names)
        needs = next(p.needs for p in scorer.plans if p.name == name)
        if needs:
            raise ConfigError(f"config key 'trainer.accuracy_reward': reward {name!r} needs {', '.join(needs)} "
                              "(model access), which `rlkit eval` does not provide; grade with a rule reward")
        split = cfg.data.eval_split if split is None else split
        rows = load_eval_rows(cfg, split, limit)
        processor = load_processor(str(model_dir))
        engine = local_engine(cfg.rollout, cfg.seed, str(model_dir))
        try:
            results = evaluate_modes(engine, processor, rows, modes=cfg.trainer.eval_modes,
                                     score_fn=reward_score_fn(scorer, name, processor, cfg.data.system_prompt),
                                     max_tokens=cfg.rollout.max_tokens, system_prompt=cfg.data.system_prompt)
        finally:
            engine.close()
    finally:
        scorer.close()
    report = {"checkpoint": str(model_dir), "split": split, "source": cfg.data.eval_source or cfg.data.source,
              "n": len(rows), "accuracy_reward": name, "modes": results, "config": to_dict(cfg)}
    target = pathlib.Path(out) if out else pathlib.Path(checkpoint).expanduser() / "eval.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1))
    os.replace(tmp, target)
    report["path"] = str(target)
    return report


def engine_generate_fn(engine, processor, *, mode: str = FAST, max_tokens: int = 8,
                       system_prompt: str = "") -> Callable[[Sequence[dict[str, Any]]], list[str]]:
    sampling = SamplingConfig(temperature=0.0, max_tokens=max_tokens, n=1, seed=0)

    def generate(items: Sequence[dict[str, Any]]) -> list[str]:
        requests = []
        for i, it in enumerate(items):
            images = [open_image(it["image"])] if it.get("image") is not None else []
            row = PromptRow(i, it["prompt"], images, None, {})
            requests.append(RolloutRequest(prompt=render_prompt(processor, row, mode, system_prompt), images=images))
        return [group[0].text for group in engine.generate(requests, sampling)]

    return generate
