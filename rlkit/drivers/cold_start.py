"""The supervised cold start before RL (`cold_start:` in a GRPO config; the ablation's `ablation.cold_start`).

Why: GRPO learns only from groups whose samples differ in reward, so a policy that never answers right (a random
tiny model, or one that does not know the task's format) gives it nothing to learn from. MiniCPM-V 4.5's recipe
starts RL from a supervised cold start that teaches the answer formats (fast: the answer; deep: a think block
with worked steps, then the answer); this module is that stage, shared by `rlkit grpo` and `rlkit ablation`.

The checkpoint lives inside the run directory (`<output_dir>/cold_start`), so it belongs to its run: a rerun
into the same directory is refused or moves the whole run aside (rlkit/run/rundir.py), and `--resume` reuses it
only when its stamp (every cold-start, model and data setting, the seed and the row count) is equal.
"""
from __future__ import annotations

import json
import pathlib

from rlkit.config import ColdStartSection, ConfigError, GRPOConfig, to_dict
from rlkit.records import DEEP

MARKER = "COLD_START.json"  # written last: a cold start without it is incomplete and is redone


def load_rows(cfg: GRPOConfig, source: str, split: str, limit: int) -> list[dict]:
    """Rows of `source` (empty: data.source) and `split`, with data.columns mapped when it is data.source."""
    from rlkit.data import load_source, map_columns

    ds = load_source(source or cfg.data.source, split, limit=limit, seed=cfg.seed,
                     **(cfg.data.source_kwargs if not source else {}))
    if not source or source == cfg.data.source:
        ds = map_columns(ds, dict(cfg.data.columns))
    return [dict(r) for r in ds]


def cold_rows(cfg: GRPOConfig, cs: ColdStartSection, train: list[dict], prefix: str = "cold_start.") -> list[dict]:
    """The rows the cold start trains on (cold_start.source/split, or the training rows), checked: a deep-mode
    cold start needs the reasoning column in every row, else one line naming the column, the row and the data."""
    rows = load_rows(cfg, cs.source, cs.split or cfg.data.split, cs.limit) if cs.source or cs.split else \
        (train[: cs.limit] if cs.limit else train)
    where = f"{cs.source or cfg.data.source} (split {cs.split or cfg.data.split!r})"
    if not rows:
        raise ConfigError(f"config key '{prefix}steps': {cs.steps} supervised steps, but {where} has no rows")
    if DEEP in cs.modes:
        col = cs.reasoning_column
        bad = next((i for i, r in enumerate(rows) if not str(r.get(col) or "").strip()), None)
        if bad is not None:
            raise ConfigError(f"config key '{prefix}reasoning_column': row {bad} of {where} has no {col!r} "
                              f"(a deep-mode cold start writes it inside the think block); add the column, "
                              f"name another, or set {prefix}modes: [fast]")
    return rows


def stamp(cfg: GRPOConfig, cs: ColdStartSection, n_rows: int) -> dict:
    """What a cold start depends on; an existing checkpoint is reused only when its stamp is equal."""
    d = cfg.data
    return {**to_dict(cs), "model": to_dict(cfg.model), "data": [d.source, d.split, d.limit, d.source_kwargs, d.columns],
            "seed": cfg.seed, "rows": n_rows}


def run_cold_start(cfg: GRPOConfig, cs: ColdStartSection, rows: list[dict], train: list[dict],
                   out: pathlib.Path, who: str = "rlkit") -> str:
    """The checkpoint RL starts from: model.path (a tiny one is built with a vocabulary that covers the
    cold-start targets), after `cs.steps` supervised steps in each of `cs.modes`, written to `out/cold_start`
    and reused when already written there with the same stamp. A model whose chat template lacks the
    `enable_thinking` switch gets rlkit's (Qwen2-VL image placeholders + Qwen3's switch) in the checkpoint."""
    from rlkit.drivers.sft import SFTConfig, mode_rows, sft
    from rlkit.models.loading import load_policy
    from rlkit.run.build import resolve_model

    targets = mode_rows(rows, modes=cs.modes, reasoning_column=cs.reasoning_column) if cs.steps else []
    base_path = resolve_model(cfg.model, out, lambda: [r["prompt"] for r in train] + [str(r["answer"]) for r in train]
                              + [r["answer"] for r in targets])
    if not cs.steps:
        return base_path
    target = out / "cold_start"
    want = stamp(cfg, cs, len(targets))
    marker = target / MARKER
    if marker.exists() and json.loads(marker.read_text()) == want:
        print(f"{who}: reusing the cold start in {target}")
        return str(target)
    import torch

    print(f"{who}: cold start, {cs.steps} supervised steps on {len(rows)} rows x {len(cs.modes)} mode(s) -> {target}",
          flush=True)
    model, processor, _ = load_policy(base_path, cfg.model.dtype)
    ensure_thinking_template(processor, who)
    torch.manual_seed(cfg.seed)
    res = sft(model, processor, targets, SFTConfig(lr=cs.lr, batch_size=cs.batch_size, max_steps=cs.steps,
                                                   seed=cfg.seed, warmup_steps=cs.warmup_steps,
                                                   log_every=max(1, cs.steps // 5)), output_dir=target)
    (target / "cold_start_losses.json").write_text(json.dumps({"steps": res.steps, "seconds": res.seconds,
                                                              "losses": res.losses}))
    marker.write_text(json.dumps(want))
    return str(target)


def ensure_thinking_template(processor, who: str = "rlkit") -> None:
    """Give a processor without the `enable_thinking` switch (e.g. Qwen2.5-VL's) rlkit's chat template, which
    renders the same Qwen2-VL image placeholders and adds the switch; a template that has it is kept."""
    from rlkit.models.chat_template import CHAT_TEMPLATE
    from rlkit.models.loading import tokenizer_of
    from rlkit.step.modes import supports_thinking_switch

    tok = tokenizer_of(processor)
    if supports_thinking_switch(str(getattr(processor, "chat_template", None) or "")):
        return
    print(f"{who}: the model's chat template has no enable_thinking switch; the cold-start checkpoint "
          "gets rlkit's (rlkit/models/chat_template.py)")
    processor.chat_template = CHAT_TEMPLATE
    tok.chat_template = CHAT_TEMPLATE
