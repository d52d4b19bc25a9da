"""RLAIF-V, iterated: sample -> score claims -> build pairs -> DPO -> the next round from the newest checkpoint.

Each round r (RLAIF-V, arXiv 2405.17220, samples with the newest model and continues from the best checkpoint;
rlkit continues from the newest, since choosing the best needs an evaluation set):
1. sample `rollout.n` responses per prompt from the round's model, same decoding settings for all
   (`rollout.temperature`, 0.7 as in the paper's scripts), with a rollout engine (`rollout.engine`);
2. score every response with the divide-and-conquer scorer (`rewards.rlaifv`): claims, yes/no questions,
   labeler verdicts; every intermediate goes to `round_r/audit.jsonl`;
3. build pairs (`preference.build_pairs`) and save them in TRL's columns to `round_r/pairs/`;
4. train DPO on them (`rlkit.drivers.dpo.run_dpo`, run directory `round_r/dpo/`), starting from the round's model,
   which is also the round's DPO reference; the next round starts from the final checkpoint.
A round is complete when `round_r/round.json` exists: a rerun skips complete rounds and continues. One
line per round goes to `output_dir/metrics.jsonl`.

The labeler is a `TransformersLabeler` (rlkit/run/labeler.py): one forward pass of a transformers model per batch of questions,
reading P(yes variants) and P(no variants) from the next-token distribution at the answer position. Why
not vLLM: rlkit's engines report the sampled token's logprob only, and top-k logprobs can miss a variant;
a forward pass gives every variant's exact probability at the cost of one prefill per question, which is
all a yes/no verdict needs. `labeler.path: policy` makes the round's own model the labeler (self-feedback);
any transformers id or path names another one.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import os
import pathlib
import time

from preference import Candidate, PromptInfo, build_pairs, pairs_to_dataset, save_dataset
from rewards.rlaifv import rlaifv_scores, write_audit
from rlkit.config import (ConfigError, DataConfig, LoggingConfig, ModelConfig, RolloutConfig, TrainerConfig,
                          check_ranges, dump_config)
from rlkit.data import DataError, PromptStream, load_source, map_columns, open_image, prompt_too_long, to_row
from rlkit.drivers.dpo import DPOConfig, DPODataConfig, DPOSection, check_dpo, run_dpo
from rlkit.models.loading import load_processor
from rlkit.step.modes import render_prompt
from rlkit.drivers.rlaifv_checks import calibrate_verdicts, no_pairs_reason
from rlkit.run.rundir import CONFIG, RLAIFV_RESUMABLE, check_resume_config, claim_new
from rlkit.run.build import local_engine, resolve_model, row_texts
from rlkit.run.labeler import (EngineTextLM, LabelerConfig, LabelerResources, TransformersLabeler,  # noqa: F401
                               check_labeler, labeler_config, labeler_resources)
from rlkit.run.runlog import RunLog


# ----------------------------------------------------------------------------------------------- config
@dataclasses.dataclass
class PairsConfig:
    threshold: float = 1.0  # minimum score difference of a pair (higher score chosen); closer scores are ties
    k: int = 2  # pairs kept per prompt (0: all), drawn at random (seeded)
    length_balance: bool = True  # drop pairs so chosen and rejected average lengths match (RLAIF-V's filter)
    length_unit: str = "words"  # length for the balance: words | tokens | chars


@dataclasses.dataclass
class RLAIFVConfig:
    output_dir: str = "runs/rlaifv"  # run directory: metrics.jsonl and round_<r>/ (audit, pairs, dpo run)
    seed: int = 0  # seed for prompt order, sampling, pair choice
    rounds: int = 2  # sample -> score -> pairs -> DPO iterations
    prompts_per_round: int = 64  # prompts sampled each round (fresh prompts each round, cycling the data)
    prompt_mode: str = "fast"  # render prompts with thinking "fast" (off) or "deep" (on); claims come from the answer part
    train: bool = True  # false: sample, score and save pairs only (no DPO; every round samples the starting model)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)  # the prompts (an answer column is not needed)
    rollout: RolloutConfig = dataclasses.field(default_factory=lambda: RolloutConfig(n=4, temperature=0.7, max_tokens=64))
    labeler: LabelerConfig = dataclasses.field(default_factory=LabelerConfig)
    pairs: PairsConfig = dataclasses.field(default_factory=PairsConfig)
    dpo: DPOSection = dataclasses.field(default_factory=DPOSection)
    trainer: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)
    logging: LoggingConfig = dataclasses.field(default_factory=LoggingConfig)


def check_rlaifv(cfg: RLAIFVConfig) -> None:
    check_ranges(cfg)  # numeric ranges (rlkit/config_ranges.py)
    if cfg.rollout.n < 2:
        raise ConfigError(f"config key 'rollout.n': {cfg.rollout.n} is out of range (allowed: >= 2: pairs need two "
                          "responses)")
    for key, changed in (("rollout.max_staleness", cfg.rollout.max_staleness != 0),
                         ("rollout.stream_chunks", cfg.rollout.stream_chunks != 1)):
        if changed:  # GRPO-only options in the shared rollout section: a round samples once, then trains DPO
            raise ConfigError(f"config key '{key}': a GRPO option; `rlkit rlaifv` rounds sample all their responses "
                              f"before DPO trains (leave it at its default)")
    for key, value, choices in (("prompt_mode", cfg.prompt_mode, ("fast", "deep")),
                                ("pairs.length_unit", cfg.pairs.length_unit, ("words", "tokens", "chars"))):
        if value not in choices:
            raise ConfigError(f"config key '{key}': {value!r} is not one of {', '.join(choices)}")
    check_labeler(cfg.labeler)
    check_dpo(DPOConfig(dpo=cfg.dpo, data=DPODataConfig(path="<each round's pairs>")))


# ----------------------------------------------------------------------------------------------- driver
def _rows(cfg: RLAIFVConfig, ds, round_index: int) -> list:
    """This round's prompt rows: the next `prompts_per_round` of a seeded stream (bad rows: data.on_bad_row)."""
    stream = PromptStream(ds, seed=cfg.seed, shuffle=cfg.data.shuffle,
                          position=(round_index - 1) * cfg.prompts_per_round)
    rows, skipped = [], 0
    while len(rows) < cfg.prompts_per_round:
        for idx, raw in stream.take(cfg.prompts_per_round - len(rows)):
            try:
                row = to_row(idx, raw)
                row.images = [open_image(im, idx) for im in row.images]
                rows.append(row)
            except DataError:
                if cfg.data.on_bad_row == "error":
                    raise
                skipped += 1
                if skipped > 100 * cfg.prompts_per_round:
                    raise
    return rows


def drop_unfit(cfg: RLAIFVConfig, r: int, rows: list, texts: list, outs: list) -> tuple[list, list, list]:
    """The round's prompts without those the engine refused as longer than rollout.max_model_len (their n
    completions are empty: labelled, they would only cost the labeler): data.on_bad_row 'error' stops with one line
    naming the first row, 'skip' says how many were left out."""
    unfit = [g for g, group in enumerate(outs) if group and group[0].finish_reason == "prompt_too_long"]
    if not unfit:
        return rows, texts, outs
    first = prompt_too_long(rows[unfit[0]].index, cfg.rollout.max_model_len)
    if cfg.data.on_bad_row == "error":
        raise DataError(f"{first} (data.on_bad_row=skip leaves such rows out)")
    print(f"rlkit: round {r}: {len(unfit)} row(s) left out, their prompt longer than rollout.max_model_len; "
          f"first: {first}")
    keep = [g for g in range(len(outs)) if g not in set(unfit)]
    return [rows[g] for g in keep], [texts[g] for g in keep], [outs[g] for g in keep]


def run_round(cfg: RLAIFVConfig, r: int, model: str, ds, resources: LabelerResources | None = None) -> dict:
    """One round from `model`; returns its summary (metrics and the new checkpoint, or None without pairs).

    `resources`: a labeler shared by all rounds; None loads one for this round (labeler.path: policy).
    """
    rdir = pathlib.Path(cfg.output_dir) / f"round_{r}"
    rdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    processor = load_processor(model)
    rows = _rows(cfg, ds, r)
    texts = [render_prompt(processor, row, cfg.prompt_mode, cfg.data.system_prompt) for row in rows]
    from rollout import RolloutRequest, SamplingConfig

    engine = local_engine(cfg.rollout, cfg.seed, model)
    try:
        sampling = SamplingConfig(temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                                  max_tokens=cfg.rollout.max_tokens, n=cfg.rollout.n, seed=cfg.seed * 1009 + r)
        outs = engine.generate([RolloutRequest(t, row.images, request_id=i) for i, (t, row) in enumerate(zip(texts, rows))],
                               sampling)
    finally:
        engine.close()
    rows, texts, outs = drop_unfit(cfg, r, rows, texts, outs)
    t_sample = time.perf_counter() - t0

    t0 = time.perf_counter()
    L = cfg.labeler
    res = resources or labeler_resources(L, model, cfg.rollout, cfg.seed)
    flat = [(g, c) for g, group in enumerate(outs) for c in group]
    try:
        scores = rlaifv_scores([rows[g].prompt for g, _ in flat], [c.text for _, c in flat], labeler=res.labeler,
                               images=[rows[g].images for g, _ in flat], splitter=L.splitter, questioner=L.questioner,
                               lm=res.claim_lm, split_prompt_file=L.split_prompt_file or None,
                               question_prompt_file=L.question_prompt_file or None, max_claims=L.max_claims,
                               short_answer_words=L.short_answer_words, accept_odds=L.accept_odds)
    finally:
        if resources is None:  # this round's own labeler (the round's policy): freed before DPO
            res.close()
            del res
            gc.collect()
    odds = calibrate_verdicts(scores) if L.calibrate else None  # rlkit/drivers/rlaifv_checks.py
    audit = rdir / "audit.jsonl"
    audit.unlink(missing_ok=True)
    write_audit(scores, audit, [{"round": r, "row": rows[g].index, "group": g, "tokens": len(c.token_ids)}
                                for g, c in flat])
    t_score = time.perf_counter() - t0

    groups, k = [], 0
    for group in outs:
        groups.append([Candidate(c.text, scores[k + j].score, list(c.token_ids)) for j, c in enumerate(group)])
        k += len(group)
    pairs, stats = build_pairs(groups, threshold=cfg.pairs.threshold, k=cfg.pairs.k,
                               balance_length=cfg.pairs.length_balance, length_unit=cfg.pairs.length_unit,
                               seed=cfg.seed * 1009 + r)
    infos = [PromptInfo(row.prompt, row.images, t, row.index) for row, t in zip(rows, texts)]
    pairs_dir = save_dataset(pairs_to_dataset(infos, groups, pairs, round_index=r), rdir / "pairs")
    valued = [s.score for s in scores if s.score is not None]
    summary = {"round": r, "model": model, "pairs_dir": str(pairs_dir), **stats,
               "score/mean": sum(valued) / len(valued) if valued else float("nan"),
               "score/none_frac": 1 - len(valued) / max(1, len(scores)),
               "claims/mean": sum(len(s.claims) for s in scores) / max(1, len(scores)),
               "claims/rejected_frac": (sum(s.rejected for s in scores) / max(1, sum(len(s.claims) for s in scores))),
               **({"labeler/calibrated_odds": odds} if odds is not None else {}),
               "time/sample_s": t_sample, "time/score_s": t_score}

    t0 = time.perf_counter()
    checkpoint = None
    if pairs and cfg.train:
        dpo_cfg = DPOConfig(output_dir=str(rdir / "dpo"), seed=cfg.seed,
                            model=dataclasses.replace(cfg.model, path=model),
                            data=DPODataConfig(path=str(pairs_dir)), dpo=cfg.dpo, trainer=cfg.trainer,
                            logging=cfg.logging)
        result = run_dpo(dpo_cfg, overwrite=True)  # a DPO run left by an unfinished attempt at this round: moved aside
        checkpoint = result.get("checkpoint")
        summary.update({f"dpo/{k[5:]}": v for k, v in result.items() if k.startswith("eval/")})
    elif not pairs:
        why = no_pairs_reason(scores, groups, stats, threshold=cfg.pairs.threshold, calibrate=L.calibrate,
                              accept_odds=L.accept_odds)
        summary["no_pairs_reason"] = why
        print(f"rlkit: round {r} produced no preference pairs: {why}; the next round starts from the same model")
    summary.update({"checkpoint": checkpoint, "time/dpo_s": time.perf_counter() - t0})
    tmp = rdir / "round.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1))
    os.replace(tmp, rdir / "round.json")  # the round is complete once this exists
    return summary


def run_rlaifv(cfg: RLAIFVConfig, overwrite: bool = False) -> dict:
    """All rounds (complete ones are skipped on a rerun, which must keep the config but for RLAIFV_RESUMABLE
    keys; `overwrite` moves the earlier run aside instead); returns the last round's summary."""
    check_rlaifv(cfg)
    out = pathlib.Path(cfg.output_dir)
    if overwrite or not (out / CONFIG).exists():
        claim_new(out, overwrite)
    else:  # a rerun continues the run in out (rlkit/run/rundir.py)
        check_resume_config(out, cfg, RLAIFV_RESUMABLE, flag="rerun")
    out.mkdir(parents=True, exist_ok=True)
    ds = map_columns(load_source(cfg.data.source, cfg.data.split, limit=cfg.data.limit, seed=cfg.seed,
                                 **cfg.data.source_kwargs), dict(cfg.data.columns))
    model = resolve_model(cfg.model, out, lambda: row_texts(ds))
    dump_config(cfg, out / "config.yaml")
    shared = None if cfg.labeler.path == "policy" else labeler_resources(cfg.labeler, model, cfg.rollout, cfg.seed)
    log = RunLog(out, tensorboard=cfg.logging.tensorboard, log_samples=False, resume_step=None)
    summary: dict = {}
    try:
        for r in range(1, cfg.rounds + 1):
            done = out / f"round_{r}" / "round.json"
            if done.exists():  # completed by an earlier run: already logged
                summary = json.loads(done.read_text())
            else:
                summary = run_round(cfg, r, model, ds, shared)
                log.log_step(r, {k: v for k, v in summary.items() if isinstance(v, (int, float))}, [])
            model = summary.get("checkpoint") or model
    finally:
        log.close()
        if shared is not None:
            shared.close()
    return {**summary, "model": model}
