"""RLAIF-V, iterated: sample -> score claims -> build pairs -> DPO -> the next round from the newest checkpoint.

Each round r (RLAIF-V, arXiv 2405.17220, samples with the newest model and continues from the best checkpoint;
rlkit continues from the newest, since choosing the best needs an evaluation set):
1. sample `rollout.n` responses per prompt from the round's model, same decoding settings for all
   (`rollout.temperature`, 0.7 as in the paper's scripts), with a rollout engine (`rollout.engine`);
2. score every response with the divide-and-conquer scorer (`rewards.rlaifv`): claims, yes/no questions,
   labeler verdicts; every intermediate goes to `round_r/audit.jsonl`;
3. build pairs (`preference.build_pairs`) and save them in TRL's columns to `round_r/pairs/`;
4. train DPO on them (`rlkit.dpo.run_dpo`, run directory `round_r/dpo/`), starting from the round's model,
   which is also the round's DPO reference; the next round starts from the final checkpoint.
A round is complete when `round_r/round.json` exists: a rerun skips complete rounds and continues. One
line per round goes to `output_dir/metrics.jsonl`.

The labeler is a `TransformersLabeler`: one forward pass of a transformers model per batch of questions,
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

import torch

from preference import Candidate, PromptInfo, build_pairs, pairs_to_dataset, save_dataset
from rewards.rlaifv import rlaifv_scores, write_audit
from rlkit.config import (ConfigError, DataConfig, LoggingConfig, ModelConfig, RolloutConfig, TrainerConfig,
                          dump_config)
from rlkit.data import DataError, PromptStream, load_source, map_columns, open_image, to_row
from rlkit.dpo import DPOConfig, DPODataConfig, DPOSection, check_dpo, run_dpo
from rlkit.models.loading import load_policy, load_processor, tokenizer_of
from rlkit.modes import render_prompt
from rlkit.rlaifv_checks import calibrate_verdicts, no_pairs_reason
from rlkit.rundir import CONFIG, RLAIFV_RESUMABLE, check_resume_config, claim_new
from rlkit.runlog import RunLog


# ----------------------------------------------------------------------------------------------- model access
class TransformersLabeler:
    """`rewards.rlaifv.Labeler` from a forward pass: (P(yes variants), P(no variants)) per question.

    model_or_path: a transformers id/folder, or a loaded model (then `processor` is required; a live policy
        works, its train/eval mode is restored after each call). Questions are rendered as one user turn
        (images first) with the chat template, thinking off, so the next token is the answer; prompts are
        left-padded so one forward pass with `logits_to_keep=1` gives every row's answer distribution (B, V).
    yes, no: the answer words; variants that are not a single token in this vocabulary are skipped (listed
        in `skipped`); at least one of each must remain. Ids are summed once each.
    """

    def __init__(self, model_or_path, processor=None, *, dtype: str = "float32", batch_size: int = 16,
                 yes=("yes", "Yes"), no=("no", "No"), system_prompt: str = ""):
        if isinstance(model_or_path, (str, os.PathLike)):
            model_or_path, processor, _ = load_policy(str(model_or_path), dtype)
        if processor is None:
            raise ValueError("TransformersLabeler needs the processor of a model object")
        self.model, self.processor, self.tokenizer = model_or_path, processor, tokenizer_of(processor)
        self.multimodal = hasattr(processor, "image_processor")
        self.batch_size, self.system_prompt, self.skipped = max(1, batch_size), system_prompt, []
        self.yes_ids, self.no_ids = self._ids(yes, "yes"), self._ids(no, "no")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def _ids(self, words, what: str) -> list[int]:
        ids = []
        for w in words:
            enc = self.tokenizer(w, add_special_tokens=False)["input_ids"]
            if len(enc) == 1:
                ids += [enc[0]] if enc[0] not in ids else []
            else:
                self.skipped.append(w)
        if not ids:
            raise ValueError(f"none of the labeler's {what} words {list(words)} is a single token of its tokenizer")
        return ids

    def render(self, question: str, n_images: int) -> str:
        content = [{"type": "image"}] * n_images + [{"type": "text", "text": question}]
        messages = ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else []) + [
            {"role": "user", "content": content if self.multimodal else question}]
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                  enable_thinking=False)

    @torch.no_grad()
    def yes_no_probs(self, questions: list[str], images: list[list]) -> list[tuple[float, float]]:
        was = self.model.training
        self.model.eval()
        out: list[tuple[float, float]] = []
        try:
            for s in range(0, len(questions), self.batch_size):
                qs, ims = questions[s:s + self.batch_size], [list(x or []) for x in images[s:s + self.batch_size]]
                texts = [self.render(q, len(im)) for q, im in zip(qs, ims)]
                flat = [open_image(im) for row in ims for im in row]
                if flat and not self.multimodal:
                    raise ValueError("the labeler is a text-only model but the questions come with images")
                kw = dict(padding=True, padding_side="left", return_tensors="pt", add_special_tokens=False)
                enc = (self.processor(text=texts, images=flat or None, **kw) if self.multimodal
                       else self.tokenizer(texts, **kw))
                enc = {k: v.to(self.model.device) for k, v in enc.items()}
                logits = self.model(**enc, logits_to_keep=1, use_cache=False).logits[:, -1].float()
                probs = torch.softmax(logits, dim=-1)
                p_yes, p_no = probs[:, self.yes_ids].sum(-1), probs[:, self.no_ids].sum(-1)
                out += list(zip(p_yes.tolist(), p_no.tolist()))
        finally:
            self.model.train(was)
        return out


class EngineTextLM:
    """`rewards.rlaifv.TextLM` over a rollout engine: each prompt as one user turn, greedy, thinking off."""

    def __init__(self, engine, processor, max_tokens: int = 256):
        self.engine, self.processor, self.max_tokens = engine, processor, max_tokens

    def complete(self, prompts: list[str]) -> list[str]:
        from rollout import RolloutRequest, SamplingConfig

        reqs = [RolloutRequest(self.processor.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                                  add_generation_prompt=True, enable_thinking=False))
                for p in prompts]
        outs = self.engine.generate(reqs, SamplingConfig(temperature=0.0, max_tokens=self.max_tokens, n=1))
        return [o[0].text for o in outs]


# ----------------------------------------------------------------------------------------------- config
@dataclasses.dataclass
class LabelerConfig:
    path: str = "policy"  # the labeler model: "policy" (each round's own model) or a transformers id/path
    dtype: str = "float32"  # labeler dtype: float32 | bfloat16 | float16
    batch_size: int = 16  # questions per forward pass
    yes: list = dataclasses.field(default_factory=lambda: ["yes", "Yes"])  # answer words summed as P(yes)
    no: list = dataclasses.field(default_factory=lambda: ["no", "No"])  # answer words summed as P(no)
    accept_odds: float = 1.0  # a claim is accepted when P(yes) > accept_odds * P(no) (1: the paper's rule)
    calibrate: bool = False  # rounds only: accept_odds := each round's median claim odds (an untrained labeler)
    splitter: str = "rule"  # claims from "rule" (deterministic, offline) or "lm" (a language model, prompt in a file)
    questioner: str = "rule"  # yes/no questions from "rule" (templates) or "lm"
    lm_path: str = ""  # model for "lm" splitting/questioning ("": the labeler's model)
    lm_engine: str = "hf"  # engine serving it: "hf" or "vllm"
    lm_max_tokens: int = 256  # reply budget of the splitting/questioning model
    split_prompt_file: str = ""  # prompt for "lm" splitting ({question}, {answer}); "": built-in SPLIT_PROMPT
    question_prompt_file: str = ""  # prompt for "lm" questions ({claims}); "": built-in QUESTION_PROMPT
    max_claims: int = 16  # claims checked per response (more are counted, not checked)
    short_answer_words: int = 3  # claims this short are asked together with the prompt (answer template)


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


@dataclasses.dataclass
class LabelerResources:
    """The `resources` object of the `rlaifv` reward: `.labeler`, and `.claim_lm` for LM splitting/questions."""

    labeler: TransformersLabeler
    claim_lm: EngineTextLM | None = None

    def close(self) -> None:
        if self.claim_lm is not None:
            self.claim_lm.engine.close()
            self.claim_lm = None


def labeler_config(cfg: LabelerConfig | dict) -> LabelerConfig:
    """`cfg`, checked; a dict (e.g. GRPO's `labeler:` section) is built like a config section. ConfigError names the key."""
    if isinstance(cfg, dict):
        from rlkit.config import _build

        cfg = _build(LabelerConfig, cfg, "labeler.")
        if cfg.calibrate:  # a dict is GRPO's `labeler:` section; calibration is per RLAIF-V round
            raise ConfigError("config key 'labeler.calibrate': only `rlkit rlaifv` rounds calibrate; the rlaifv "
                              "reward uses labeler.accept_odds")
    check_labeler(cfg)
    return cfg


def labeler_resources(cfg: LabelerConfig | dict, policy_path: str,
                      engine_kwargs: dict | None = None) -> LabelerResources:
    """Load the labeler (and the splitting/questioning LM) that `cfg` names; "policy" means `policy_path`.

    `cfg` may be a dict (e.g. GRPO's `labeler:` section): it is validated like a config section.
    """
    from rollout import make_engine

    cfg = labeler_config(cfg)
    path = policy_path if cfg.path == "policy" else cfg.path
    res = LabelerResources(TransformersLabeler(path, dtype=cfg.dtype, batch_size=cfg.batch_size, yes=tuple(cfg.yes),
                                               no=tuple(cfg.no)))
    if "lm" in (cfg.splitter, cfg.questioner):
        lm_path = cfg.lm_path or path
        kw = (engine_kwargs or {}) if cfg.lm_engine == "vllm" else {}
        engine = make_engine(cfg.lm_engine, model_path=lm_path, **kw)
        res.claim_lm = EngineTextLM(engine, load_processor(lm_path), cfg.lm_max_tokens)
    return res


def check_labeler(L: LabelerConfig, prefix: str = "labeler.") -> None:
    for key, value, choices in (("dtype", L.dtype, ("float32", "bfloat16", "float16")),
                                ("splitter", L.splitter, ("rule", "lm")), ("questioner", L.questioner, ("rule", "lm")),
                                ("lm_engine", L.lm_engine, ("hf", "vllm"))):
        if value not in choices:
            raise ConfigError(f"config key '{prefix}{key}': {value!r} is not one of {', '.join(choices)}")
    for key, ok in (("batch_size", L.batch_size >= 1), ("accept_odds", L.accept_odds > 0),
                    ("max_claims", L.max_claims >= 1), ("yes", bool(L.yes)), ("no", bool(L.no))):
        if not ok:
            raise ConfigError(f"config key '{prefix}{key}': {getattr(L, key)!r} is out of range")


def check_rlaifv(cfg: RLAIFVConfig) -> None:
    for key, ok in (("rounds", cfg.rounds >= 1), ("prompts_per_round", cfg.prompts_per_round >= 1),
                    ("rollout.n", cfg.rollout.n >= 2), ("pairs.threshold", cfg.pairs.threshold > 0),
                    ("pairs.k", cfg.pairs.k >= 0)):
        if not ok:
            raise ConfigError(f"config key '{key}' is out of range (rollout.n needs at least 2 responses to pair)")
    for key, value, choices in (("prompt_mode", cfg.prompt_mode, ("fast", "deep")),
                                ("pairs.length_unit", cfg.pairs.length_unit, ("words", "tokens", "chars"))):
        if value not in choices:
            raise ConfigError(f"config key '{key}': {value!r} is not one of {', '.join(choices)}")
    check_labeler(cfg.labeler)
    check_dpo(DPOConfig(dpo=cfg.dpo, data=DPODataConfig(path="<each round's pairs>")))


# ----------------------------------------------------------------------------------------------- driver
def _engine_kwargs(cfg: RLAIFVConfig) -> dict:
    r = cfg.rollout
    return dict(max_model_len=r.max_model_len, seed=cfg.seed, kv_cache_gib=r.kv_cache_gib,
                gpu_memory_utilization=r.gpu_memory_utilization)


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
    from rollout import RolloutRequest, SamplingConfig, make_engine

    engine = make_engine(cfg.rollout.engine, model_path=model,
                         **(_engine_kwargs(cfg) if cfg.rollout.engine == "vllm" else {}))
    try:
        sampling = SamplingConfig(temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                                  max_tokens=cfg.rollout.max_tokens, n=cfg.rollout.n, seed=cfg.seed * 1009 + r)
        outs = engine.generate([RolloutRequest(t, row.images, request_id=i) for i, (t, row) in enumerate(zip(texts, rows))],
                               sampling)
    finally:
        engine.close()
    t_sample = time.perf_counter() - t0

    t0 = time.perf_counter()
    L = cfg.labeler
    res = resources or labeler_resources(L, model, _engine_kwargs(cfg))
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
    odds = calibrate_verdicts(scores) if L.calibrate else None  # rlkit/rlaifv_checks.py
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
    from rlkit.grpo import resolve_model

    check_rlaifv(cfg)
    out = pathlib.Path(cfg.output_dir)
    if overwrite or not (out / CONFIG).exists():
        claim_new(out, overwrite)
    else:  # a rerun continues the run in out (rlkit/rundir.py)
        check_resume_config(out, cfg, RLAIFV_RESUMABLE, flag="rerun")
    out.mkdir(parents=True, exist_ok=True)
    ds = map_columns(load_source(cfg.data.source, cfg.data.split, limit=cfg.data.limit, seed=cfg.seed,
                                 **cfg.data.source_kwargs), dict(cfg.data.columns))
    model = resolve_model(cfg, ds, out)
    dump_config(cfg, out / "config.yaml")
    shared = None if cfg.labeler.path == "policy" else labeler_resources(cfg.labeler, model, _engine_kwargs(cfg))
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
