"""DPO on the full multimodal policy: `DPOWorker` (the GRPO policy worker plus a pair step) and `run_dpo`.

Why reuse the policy worker: DPO needs exactly what GRPO's update needs, the log-probabilities of sampled
completion tokens under the full multimodal policy (vision tower, projector, language model), batched with
their images. `DPOWorker` lays chosen and rejected completions of a micro-batch of pairs out as GRPO items
(`[left pad][prompt][completion][right pad]`, one processor call per prompt shared by both completions),
sums each completion's token log-probabilities (B,), and hands them to a DPO loss from
`rlkit.algorithms.dpo.DPO_LOSSES` with the reference model's sums.

Reference log-probabilities: `reference="cached"` (default) computes them once, before the first update,
with the policy itself (it *is* the reference then: no second model in memory) and stores them in
`output_dir/ref_logps.json`, which a resumed run reuses; `"on_the_fly"` keeps a frozen reference model
(`dpo.reference_path`, default the starting model) and scores every micro-batch with it.

Ray is not used: DPO on one machine is one worker in this process (`run_dpo` builds it directly). The run
directory is GRPO's: config.yaml, metrics.jsonl (one line per step; `eval/*` lines score every training
pair at step 0, every `dpo.eval_every` steps and at the end), checkpoints/step_N written aside and renamed.

    cfg = load_config(DPOConfig, "examples/rlaifv/dpo.yaml", ["dpo.beta=0.1"])
    summary = run_dpo(cfg)      # {"step": ..., "eval/rewards/accuracies": ..., "checkpoint": ...}
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import pathlib
import random
import time

import torch
from tqdm import tqdm

from preference import EncodedPair, column_text, encode_rows, load_preference_dataset
from rlkit.run import checkpoint as ckpt
from rlkit.algorithms.dpo import DPO_LOSSES, get_dpo_loss
from rlkit.config import ConfigError, LoggingConfig, ModelConfig, TrainerConfig, check_ranges, dump_config
from rlkit.models.loading import load_policy, load_processor
from rlkit.records import TrainItem
from rlkit.run.rundir import dpo_resumable, open_run
from rlkit.policy.settings import WorkerSettings
from rlkit.run.build import resolve_model, worker_settings
from rlkit.run.runlog import RunLog
from rlkit.policy.worker import PolicyWorker

REF_CACHE = "ref_logps.json"
DPO_STATE = "dpo_state.pt"
SCHEDULES = ("constant", "constant_with_warmup", "cosine", "linear")


# ----------------------------------------------------------------------------------------------- config
@dataclasses.dataclass
class DPODataConfig:
    path: str = ""  # preference data: a save_to_disk folder, a json/jsonl/parquet file, or a hub data set name
    split: str = "train"  # split, for a DatasetDict folder or a hub data set
    limit: int = 0  # use at most this many pairs (0: all)
    shuffle: bool = True  # reshuffle the pairs every epoch (seeded)


@dataclasses.dataclass
class DPOSection:
    loss: str = "sigmoid"  # DPO loss by registered name: sigmoid | ipo | hinge
    beta: float = 0.1  # strength of the implicit KL to the reference (paper and TRL default: 0.1)
    loss_opts: dict = dataclasses.field(default_factory=dict)  # extra keyword arguments of the loss (label_smoothing, length_normalize)
    reference: str = "cached"  # reference log-probs: "cached" (computed once before training) or "on_the_fly"
    reference_path: str = ""  # the reference model ("": the starting model)
    epochs: int = 1  # passes over the pairs
    max_steps: int = 0  # optimizer steps (0: epochs x ceil(pairs / batch_size))
    batch_size: int = 8  # pairs per optimizer step
    lr_schedule: str = "cosine"  # transformers schedule: constant | constant_with_warmup | cosine | linear
    warmup_ratio: float = 0.05  # share of the steps spent warming up (RLAIF-V: 5%)
    enable_thinking: bool = False  # prompts rendered from messages (rows without prompt_text) get thinking on/off
    eval_every: int = 0  # score every training pair each N steps (0: at the start and the end only)


@dataclasses.dataclass
class DPOConfig:
    output_dir: str = "runs/dpo"  # run directory: config.yaml, metrics.jsonl, ref_logps.json, checkpoints/
    seed: int = 0  # seed for the pair order and the weights of a tiny model
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DPODataConfig = dataclasses.field(default_factory=DPODataConfig)
    dpo: DPOSection = dataclasses.field(default_factory=DPOSection)
    trainer: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)  # prompts_per_step and num_cpus are unused
    logging: LoggingConfig = dataclasses.field(default_factory=LoggingConfig)  # log_samples is unused


def check_dpo(cfg: DPOConfig) -> None:
    """Cross-field checks, with the key in every message."""
    d = cfg.dpo
    if d.loss not in DPO_LOSSES:
        raise ConfigError(f"config key 'dpo.loss': unknown DPO loss {d.loss!r}; "
                          f"registered: {', '.join(DPO_LOSSES.names())}")
    if d.reference not in ("cached", "on_the_fly"):
        raise ConfigError(f"config key 'dpo.reference': {d.reference!r} is not one of cached, on_the_fly")
    if d.lr_schedule not in SCHEDULES:
        raise ConfigError(f"config key 'dpo.lr_schedule': {d.lr_schedule!r} is not one of {', '.join(SCHEDULES)}")
    check_ranges(cfg)  # numeric ranges (rlkit/config_ranges.py), for a config built in code
    if not cfg.data.path:
        raise ConfigError("config key 'data.path': give the preference data (a save_to_disk folder or a file)")


# ----------------------------------------------------------------------------------------------- worker
class DPOWorker(PolicyWorker):
    """The policy worker plus `dpo_step(pairs)`; see the module docstring. Plain class (no Ray)."""

    def __init__(self, model_path: str, settings: WorkerSettings | None = None, *, loss: str = "sigmoid",
                 beta: float = 0.1, loss_opts: dict | None = None, reference_path: str | None = None,
                 lr_schedule: str = "constant", warmup_steps: int = 0, total_steps: int = 1, **overrides):
        """`reference_path`: load a frozen reference model from there (on-the-fly reference log-probs, or a
        cached reference that differs from the starting weights); None: the current policy is the reference
        for `reference_logps`, and `dpo_step` needs the cached values. `settings` and other keywords: the
        policy worker's (rlkit/policy/settings.py)."""
        super().__init__(model_path, settings, temperature=1.0, kl_coef=0.0, **overrides)
        from transformers import get_scheduler

        self.dpo_loss = get_dpo_loss(loss)
        self.beta, self.dpo_opts = beta, dict(loss_opts or {})
        if reference_path:
            self.ref_model, _, _ = load_policy(reference_path, self.settings.dtype)
            self.ref_model.to(self.device).eval().requires_grad_(False)
        self.scheduler = get_scheduler(lr_schedule, self.optimizer, num_warmup_steps=warmup_steps,
                                       num_training_steps=max(1, total_steps))

    def _sequence_logps(self, model, pairs: list[EncodedPair]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(chosen (b,), rejected (b,), lengths (2b,)): summed completion log-probs, chosen rows first."""
        items = [TrainItem(p.prompt_text, p.images, p.chosen_ids, 0.0, []) for p in pairs]
        items += [TrainItem(p.prompt_text, p.images, p.rejected_ids, 0.0, []) for p in pairs]
        batch = self._batch(items, self.encode_prompts(items))
        logp, _ = self._logprobs(model, batch)
        seq = (logp * batch["mask"]).sum(-1)
        b = len(pairs)
        return seq[:b], seq[b:], batch["mask"].sum(-1)

    def _chunks(self, pairs: list[EncodedPair]):
        per = max(1, self.micro_batch_size // 2)  # a micro-batch holds both completions of its pairs
        for s in range(0, len(pairs), per):
            yield pairs[s:s + per]

    @torch.no_grad()
    def reference_logps(self, pairs: list[EncodedPair]) -> list[tuple[float, float]]:
        """(chosen, rejected) summed log-probs under the reference: the frozen model, or the current policy."""
        model = self.ref_model if self.ref_model is not None else self.model
        was = self.model.training
        self.model.eval()
        out = []
        for chunk in self._chunks(pairs):
            c, r, _ = self._sequence_logps(model, chunk)
            out += list(zip(c.tolist(), r.tolist()))
        self.model.train(was)
        return out

    def _loss(self, chunk: list[EncodedPair], ref: list[tuple[float, float]] | None):
        c, r, lengths = self._sequence_logps(self.model, chunk)
        if ref is None:
            with torch.no_grad():
                rc, rr, _ = self._sequence_logps(self.ref_model, chunk)
        else:
            rc = torch.tensor([x[0] for x in ref], dtype=c.dtype, device=c.device)
            rr = torch.tensor([x[1] for x in ref], dtype=c.dtype, device=c.device)
        b = len(chunk)
        return self.dpo_loss(c, r, rc, rr, beta=self.beta, chosen_lengths=lengths[:b], rejected_lengths=lengths[b:],
                             **self.dpo_opts)

    def _check_ref(self, pairs, ref):
        if ref is None and self.ref_model is None:
            raise ValueError("no reference log-probs given and no reference model loaded (reference_path)")
        if ref is not None and len(ref) != len(pairs):
            raise ValueError(f"{len(ref)} reference log-prob pairs for {len(pairs)} pairs")

    def dpo_step(self, pairs: list[EncodedPair], ref: list[tuple[float, float]] | None = None) -> dict[str, float]:
        """One optimizer step on `pairs`; `ref[i]` = (chosen, rejected) reference log-probs (None: on the fly).

        The loss is the mean over all pairs: each micro-batch's mean is weighted by its share of the pairs.
        A non-finite loss or gradient skips the update. Returns `train/*` metrics (TRL's names).
        """
        self._check_ref(pairs, ref)
        t0 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        loss_total, start = 0.0, 0
        for chunk in self._chunks(pairs):
            loss, metrics = self._loss(chunk, None if ref is None else ref[start:start + len(chunk)])
            w = len(chunk) / len(pairs)
            (loss * w).backward()
            loss_total += float(loss.detach()) * w
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + float(v) * w
            start += len(chunk)
        params = [p for p in self.model.parameters() if p.requires_grad]
        max_norm = self.max_grad_norm if self.max_grad_norm > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        finite = math.isfinite(loss_total) and bool(torch.isfinite(grad_norm))
        lr = self.optimizer.param_groups[0]["lr"]
        if finite:
            self.optimizer.step()
        else:
            self.skipped_updates += 1
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        out = {f"train/{k}": v for k, v in totals.items()}
        out.update({"train/loss": loss_total, "train/grad_norm": float(grad_norm), "train/lr": lr,
                    "train/update_skipped": 0.0 if finite else 1.0,
                    "train/skipped_updates": float(self.skipped_updates),
                    "train/pairs": float(len(pairs)), "time/update_compute_s": time.perf_counter() - t0})
        self._encoded.clear()  # prompt encodings live for one step (PolicyWorker.encode_prompts)
        return out

    @torch.no_grad()
    def dpo_eval(self, pairs: list[EncodedPair], ref: list[tuple[float, float]] | None = None) -> dict[str, float]:
        """The loss and metrics on `pairs` without updating (`eval/*`)."""
        self._check_ref(pairs, ref)
        was = self.model.training
        self.model.eval()
        totals: dict[str, float] = {}
        start = 0
        for chunk in self._chunks(pairs):
            loss, metrics = self._loss(chunk, None if ref is None else ref[start:start + len(chunk)])
            w = len(chunk) / len(pairs)
            for k, v in {"loss": float(loss), **metrics}.items():
                totals[k] = totals.get(k, 0.0) + float(v) * w
            start += len(chunk)
        self.model.train(was)
        return {f"eval/{k}": v for k, v in totals.items()}

    def save(self, directory: str) -> None:
        super().save(directory)
        torch.save({"scheduler": self.scheduler.state_dict()}, pathlib.Path(directory) / DPO_STATE)

    def load_trainer_state(self, directory: str) -> None:
        super().load_trainer_state(directory)
        path = pathlib.Path(directory) / DPO_STATE
        if path.exists():
            self.scheduler.load_state_dict(torch.load(path, weights_only=False)["scheduler"])


# ----------------------------------------------------------------------------------------------- driver
def pair_texts(ds) -> list[str]:
    """Preference pairs' text for a tiny model's vocabulary: every prompt, chosen and rejected."""
    return [column_text(r[c], i, c) for i, r in enumerate(ds) for c in ("prompt", "chosen", "rejected")]


def _order(n: int, seed: int, epoch: int, shuffle: bool) -> list[int]:
    order = list(range(n))
    if shuffle:
        random.Random(f"{seed}-dpo-{epoch}").shuffle(order)
    return order


def run_dpo(cfg: DPOConfig, resume: bool = False, overwrite: bool = False) -> dict:
    """Train the policy with DPO on cfg.data.path; returns the last metrics and the final checkpoint path.
    A new run refuses an output_dir that holds another one unless `overwrite` (moved aside): rlkit/run/rundir.py."""
    check_dpo(cfg)
    out = pathlib.Path(cfg.output_dir)
    last_ckpt = open_run(cfg, resume=resume, overwrite=overwrite, allowed=dpo_resumable(cfg.dpo.lr_schedule))
    out.mkdir(parents=True, exist_ok=True)
    ds = load_preference_dataset(cfg.data.path, cfg.data.split, cfg.data.limit)
    base = resolve_model(cfg.model, out, lambda: pair_texts(ds))
    start_model = str(last_ckpt) if last_ckpt else base
    state = ckpt.read_run_state(last_ckpt) if last_ckpt else {}
    dump_config(cfg, out / "config.yaml")
    enc_stats: dict = {}
    pairs = encode_rows(ds, load_processor(base), enable_thinking=cfg.dpo.enable_thinking, stats=enc_stats)
    if enc_stats["retokenized"]:
        print(f"rlkit: {enc_stats['retokenized']} of {len(pairs)} pairs carry token ids of another tokenizer; "
              "they were re-rendered and re-tokenised from their text")

    d = cfg.dpo
    per_epoch = math.ceil(len(pairs) / d.batch_size)
    total = d.max_steps or d.epochs * per_epoch
    ref_model = d.reference_path or base
    cache = out / REF_CACHE
    ref = _read_cache(cache, pairs, ref_model) if d.reference == "cached" else None
    if d.reference == "cached" and ref is None and last_ckpt is not None:
        raise ValueError(f"{cache} is missing or stale: the cached reference log-probs of the starting model are "
                         "needed to resume (start again, or use dpo.reference: on_the_fly)")
    load_ref = d.reference == "on_the_fly" or (ref is None and ref_model != start_model)
    # DPO in this process, one rank, full fine-tuning (model.lora and trainer.strategy are GRPO's), one thread as before
    worker = DPOWorker(start_model, worker_settings(cfg, lora=None, strategy="replicate", num_threads=1), loss=d.loss, beta=d.beta, loss_opts=dict(d.loss_opts),
                       reference_path=ref_model if load_ref else None, lr_schedule=d.lr_schedule,
                       warmup_steps=math.ceil(total * d.warmup_ratio), total_steps=total)
    if d.reference == "cached" and ref is None:  # once, before any update; then the reference model is dropped
        ref = worker.reference_logps(pairs)
        cache.write_text(json.dumps({"model": ref_model, "fingerprint": _fingerprint(pairs), "logps": ref}))
        worker.ref_model = None
    start = state.get("step", 0)
    if last_ckpt:
        worker.load_trainer_state(str(last_ckpt))
    log = RunLog(out, tensorboard=cfg.logging.tensorboard, log_samples=False, resume_step=start if last_ckpt else None)
    last: dict = {"step": start}
    bar = tqdm(total=total, initial=start, disable=not cfg.logging.progress, desc="dpo", unit="step")
    try:
        if start == 0:
            last.update(worker.dpo_eval(pairs, ref))
            log.log_step(0, {**last, "data/pairs": float(len(pairs)),
                             "data/retokenized": float(enc_stats["retokenized"])}, [])
        for step in range(start + 1, total + 1):
            t0 = time.perf_counter()
            epoch, k = divmod(step - 1, per_epoch)
            idx = _order(len(pairs), cfg.seed, epoch, cfg.data.shuffle)[k * d.batch_size:(k + 1) * d.batch_size]
            metrics = worker.dpo_step([pairs[i] for i in idx], None if ref is None else [ref[i] for i in idx])
            metrics.update({"epoch": epoch + (k + 1) / per_epoch, "time/step_s": time.perf_counter() - t0})
            if step == total or (d.eval_every and step % d.eval_every == 0):
                metrics.update(worker.dpo_eval(pairs, ref))
            log.log_step(step, metrics, [])
            last = {"step": step, **metrics}
            bar.set_postfix(loss=f"{metrics['train/loss']:.3f}",
                            acc=f"{metrics.get('train/rewards/accuracies', 0):.2f}")
            bar.update(1)
            every = cfg.logging.save_every
            if step == total or (every and step % every == 0):
                with ckpt.naming_a_full_disk(out, step):
                    staging = ckpt.staging_dir(out, step)
                    worker.save(str(staging))
                    final = ckpt.finalize(out, step, staging, {"step": step, "base_model": base,
                                                               "pairs": len(pairs)}, keep=cfg.logging.keep_checkpoints)
                last["checkpoint"] = str(final)
    finally:
        bar.close()
        log.close()
    return last


def _fingerprint(pairs: list[EncodedPair]) -> str:
    """A digest of the pairs' prompts, token ids and image sizes: a cache written for other pairs is stale."""
    h = hashlib.sha1()
    for p in pairs:
        sizes = [getattr(im, "size", None) for im in p.images]
        h.update(json.dumps([p.prompt_text, p.chosen_ids, p.rejected_ids, sizes]).encode("utf-8", "replace"))
    return h.hexdigest()


def _read_cache(path: pathlib.Path, pairs: list[EncodedPair], model: str) -> list[tuple[float, float]] | None:
    """The cached reference log-probs when they were computed by `model` for exactly these pairs, else None."""
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    if saved.get("model") != model or saved.get("fingerprint") != _fingerprint(pairs):
        return None
    return [tuple(x) for x in saved["logps"]]
