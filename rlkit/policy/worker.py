"""The policy worker: holds the full multimodal policy and its optimizer; scores and updates on batches.

Plain class (no Ray import): the GRPO driver wraps it in a Ray actor, tests use it directly. The whole
model is trainable by default (vision tower, projector and language model); `freeze` keeps parts fixed.

Batch layout, chosen so one forward pass yields exactly the logits that are needed:

    [left pad][prompt (images expanded)][completion][right pad]
                                      ^ every completion starts in the same column P

so `logits_to_keep = Tc + 1` returns the (B, Tc+1, V) logits that predict the completion tokens and nothing
for the prompt (a large saving when the vocabulary is big and prompts are long). Within one step, the n
completions of a prompt share one processor call (image decode + patching).

Several optimizer steps per rollout batch: `ppo_epochs` passes over mini-batches of `mini_batch_size`
sequences (0: the whole batch), one optimizer step each. With `shuffle_minibatches` and more than one
mini-batch, every epoch cuts a fresh permutation of the items, drawn from (seed, step, epoch) (`_order`), so
a resumed run (which restores `step`) draws the same ones. With exactly one step in all, the "old" logprobs
equal the current ones detached (ratio 1) and no extra forward pass is spent on them; with more, they are
computed once, in one no-grad pass over the first epoch's layout, before the first update, and kept per item
(not per batch position), so later epochs' permuted mini-batches gather the right rows. Micro-batches
accumulate gradients; each micro-batch's loss is rescaled so that the sum equals the loss of its whole
mini-batch under the configured aggregation (see `_aggregation_scale`).

Several ranks (`join_group`, trainer.num_ranks): every rank receives the whole rollout batch; each
mini-batch's rows are cut into `world_size` contiguous slices and a rank runs forward/backward on its slice
only, each micro-batch's loss scaled as its share of the WHOLE mini-batch (`_aggregation_scale` with the
slice's offset), so gradients are SUMMED over ranks; metrics are merged, and every rank takes the same step
(and the same decision on non-finite values). trainer.strategy picks who holds what (rlkit/policy/sharding.py):
"replicate" (a full replica of model and AdamW per rank, gradients all-reduced in one flat buffer: DDP written
out) or "fsdp2" (FSDP2 shards weights, gradients and AdamW moments per layer; forwards all-gather, backward
reduce-scatters; every rank runs the same passes, padded with zero-loss ones; full state dicts are gathered
on rank 0 for the sync and the checkpoint, whose format is the same under both strategies).

KL to the reference policy: in the loss (`kl_coef * aggregation(k)`, default), or, with `kl_in_reward`, as a
k1 penalty the driver subtracts from each reward before advantages (`reference_kl`, `kl_penalized_rewards`).
The reference is a frozen copy loaded from `reference_path`, except with LoRA when only adapters train and the
reference is the model the adapters sit on: then it is the policy itself with its adapters switched off
(`ref_adapters_off`, no second model in memory; see `rlkit.policy.lora.adapters_off_is_reference`).
"""
from __future__ import annotations

import hashlib
import math
import os
import pathlib
import time
from typing import Any

import torch

from rlkit.algorithms import aggregate, get_kl_estimator, get_policy_loss
from rlkit.algorithms.kl import sequence_k1
from rlkit.policy.batching import (_aggregation_scale, _gather, _length_mask, _per_item, _weights, build_batch, encode_prompt,
                            add_to_accumulator, image_digest, new_accumulator, step_metrics)
from rlkit.policy.lora import (ADAPTER_DIR, adapter_base_path, adapters_off, adapters_off_is_reference, apply_lora, load_lora,
                        lora_settings, merged_state_dict, save_lora)
from rlkit.policy.lora import trainable_counts as lora_trainable_counts
from rlkit.models.loading import apply_freeze, load_policy, resolve_device, tokenizer_of
from rlkit.policy.settings import WorkerSettings, settings_with
from rlkit.records import TrainItem
from rlkit.policy.streaming import StreamedUpdate
from rlkit.policy.sharding import (all_reduce_grads, check_strategy, full_optimizer_state, full_state_dict, global_norm,
                            init_group, merge_metrics, pass_counts, rebuild_optimizer, shard_optimizer_state,
                            shard_policy)
from rlkit.policy.vision import image_inputs

TRAINER_STATE = "trainer_state.pt"


class PolicyWorker:
    def __init__(self, model_path: str, settings: WorkerSettings | None = None, **overrides):
        """`settings`: rlkit/policy/settings.py; keywords override single fields (`PolicyWorker(path, lr=1e-3)`)."""
        self.settings = cfg = settings_with(settings, **overrides)
        dtype, lora, model_path = cfg.dtype, cfg.lora, str(model_path)
        torch.set_num_threads(cfg.num_threads)
        torch.manual_seed(cfg.seed)
        self.device = resolve_device(cfg.device)
        self.lora = lora_settings(lora)
        check_strategy(cfg.strategy, lora=bool(self.lora))
        self.strategy, self.sharded = cfg.strategy, False  # fsdp2: sharded when join_group forms the group
        resume_base = adapter_base_path(model_path) if self.lora else None
        self.model, self.processor, self.is_vlm = load_policy(resume_base or model_path, dtype)
        self.tokenizer = tokenizer_of(self.processor)
        self.trainable = apply_freeze(self.model, list(cfg.freeze or []))
        if self.lora:  # only adapter weights train; a checkpoint's adapter is resumed on its base model
            self.model = (load_lora(self.model, pathlib.Path(model_path) / ADAPTER_DIR) if resume_base
                          else apply_lora(self.model, self.lora))
            self.trainable = lora_trainable_counts(self.model)
        if cfg.gradient_checkpointing:  # recompute activations in backward: memory for compute (GPU-sized models)
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if self.lora:  # frozen embeddings: make the checkpointed blocks' inputs require grad
                self.model.enable_input_require_grads()
        self.model.to(self.device).train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("model.freeze leaves no trainable parameter")
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas),
                                           eps=cfg.adam_eps)
        self.max_grad_norm = cfg.max_grad_norm
        self.micro_batch_size = max(1, cfg.micro_batch_size)
        if cfg.mini_batch_size < 0 or cfg.ppo_epochs < 1:
            raise ValueError(f"mini_batch_size must be >= 0 (0: the whole batch) and ppo_epochs >= 1, "
                             f"got {cfg.mini_batch_size} and {cfg.ppo_epochs}")
        self.mini_batch_size = cfg.mini_batch_size  # sequences per optimizer step (0: the whole rollout batch)
        self.ppo_epochs, self.seed = cfg.ppo_epochs, cfg.seed
        self.shuffle_minibatches = cfg.shuffle_minibatches  # a fresh item order per epoch (>1 mini-batches)
        self.update_log: list[dict] = []  # per optimizer step of the last train_step: epoch, mini_batch, metrics
        self.loss_fn = get_policy_loss(cfg.policy_loss)
        self.loss_opts = dict(cfg.loss_opts or {})
        self.aggregation = self.loss_opts.get("aggregation", "token_mean")
        self.kl_coef = kl_coef = cfg.kl_coef
        self.kl_in_reward = cfg.kl_in_reward  # True: k1 penalty in the reward (reference_kl), none in the loss
        self.kl_fn = get_kl_estimator(cfg.kl_estimator)
        self.temperature = cfg.temperature
        self.ref_model = None
        # LoRA, only adapters train, their base is the reference: the policy with adapters off (no second model)
        self.ref_adapters_off = kl_coef > 0 and bool(self.lora) and adapters_off_is_reference(
            self.model, cfg.reference_path or model_path, resume_base or model_path)
        if kl_coef > 0 and not self.ref_adapters_off:
            self.ref_model, _, _ = load_policy(cfg.reference_path or model_path, dtype)
            self.ref_model.to(self.device).eval().requires_grad_(False)
        self.step = 0
        self.skipped_updates = 0
        self.rank, self.world_size = 0, 1  # join_group sets them for trainer.num_ranks > 1
        self._encoded: dict[tuple, dict] = {}  # prompt encodings of the current step (see encode_prompts)
        self.stream = StreamedUpdate(self)  # a step whose batch arrives in parts (train_part, train_finish)

    # ------------------------------------------------------------------------------------------ encoding
    def encode_prompts(self, items: list[TrainItem]) -> list[dict]:
        """Tokenise each distinct prompt once: input_ids (1-D) plus image tensors for VLMs.

        Encodings are kept (keyed by prompt text and image content) until the end of the next `train_step`,
        so a step that scores with the policy first (RLPR, the KL reward) and then trains runs the processor
        (image decode and patching: the slowest part of a small model's pass) once, not twice.
        """
        if len(self._encoded) > 1024:  # a caller that scores many batches without training: bound the memory
            self._encoded.clear()
        digests: dict[int, str] = {}
        out = []
        for it in items:
            key = (it.prompt_text, tuple(image_digest(im, digests) for im in it.images))
            if key not in self._encoded:
                entry = encode_prompt(self.processor if self.is_vlm else None, self.tokenizer, it.prompt_text,
                                      it.images)
                self._encoded[key] = entry
            out.append(self._encoded[key])
        return out

    def _batch(self, items: list[TrainItem], prompts: list[dict]) -> dict[str, Any]:
        batch = build_batch(items, prompts, self.tokenizer.pad_token_id)
        return {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def _logprobs(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, Tc) logprobs of the completion tokens and (B, Tc) entropy (detached)."""
        kwargs = {k: batch[k] for k in ("mm_token_type_ids",) if k in batch}
        if "pixel_values" in batch:
            kwargs.update(image_inputs(model, batch["pixel_values"], batch["image_grid_thw"], batch["image_keys"],
                                       always=self.sharded))  # fsdp2: the same path on every rank
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    logits_to_keep=batch["Tc"] + 1, use_cache=False, **kwargs)
        logits = out.logits[:, :-1].to(torch.promote_types(out.logits.dtype, torch.float32))  # >= float32
        if self.temperature != 1.0:
            logits = logits / self.temperature
        logp_all = torch.log_softmax(logits, dim=-1)
        logp = logp_all.gather(-1, batch["completion_ids"].unsqueeze(-1)).squeeze(-1)
        with torch.no_grad():
            entropy = -(logp_all.exp() * logp_all).sum(-1)
        return logp, entropy

    def _micro_batches(self, items: list[TrainItem]):
        prompts = self.encode_prompts(items)
        for s in range(0, len(items), self.micro_batch_size):
            yield s, self._batch(items[s:s + self.micro_batch_size], prompts[s:s + self.micro_batch_size])

    # ------------------------------------------------------------------------------------------ API
    @torch.no_grad()
    def compute_logprobs(self, items: list[TrainItem]) -> list[list[float]]:
        """The policy's logprob of every completion token (same weights, same layout as training)."""
        was = self.model.training
        self.model.eval()
        out: list[list[float]] = []
        for _, mb in self._micro_batches(items):
            logp, _ = self._logprobs(self.model, mb)
            for b in range(logp.shape[0]):
                out.append(logp[b, : int(mb["mask"][b].sum())].tolist())
        self.model.train(was)
        return out

    @torch.no_grad()
    def reference_kl(self, items: list[TrainItem]) -> list[float]:
        """Per sequence, `sum_t k1 = sum_t (logprobs - ref_logprobs)` under the current policy (before the
        update: the weights that sampled). The driver subtracts `kl_coef` times it from the reward."""
        if not self.has_reference:
            raise ValueError("reference_kl needs a reference model (algorithm.kl_coef > 0)")
        was = self.model.training
        self.model.eval()
        out: list[float] = []
        for _, mb in self._micro_batches(items):
            logp, _ = self._logprobs(self.model, mb)
            out += sequence_k1(logp, self._ref_logprobs(mb), mb["mask"]).tolist()
        self.model.train(was)
        return out

    @property
    def has_reference(self) -> bool:
        return self.ref_model is not None or self.ref_adapters_off

    @torch.no_grad()
    def _ref_logprobs(self, mb: dict) -> torch.Tensor:
        """(B, Tc) reference logprobs: the frozen copy, or the policy with its adapters off (eval mode)."""
        if self.ref_model is not None:
            return self._logprobs(self.ref_model, mb)[0]
        was = self.model.training
        self.model.eval()
        try:
            with adapters_off(self.model):
                return self._logprobs(self.model, mb)[0]
        finally:
            self.model.train(was)

    def _order(self, epoch: int, n: int, n_mini: int) -> list[int]:
        """The item order epoch `epoch` cuts into mini-batches: the driver's order, or (shuffle_minibatches,
        more than one mini-batch) a permutation of range(n) drawn from (seed, step, epoch) alone."""
        if not self.shuffle_minibatches or n_mini <= 1:
            return list(range(n))
        key = hashlib.blake2b(f"{self.seed}/{self.step}/{epoch}".encode(), digest_size=8).digest()
        g = torch.Generator().manual_seed(int.from_bytes(key, "little"))
        return torch.randperm(n, generator=g).tolist()

    def _layout(self, items: list[TrainItem], prompts: list[dict], order: list[int],
                whole: bool = False) -> list[tuple[list, list]]:
        """Mini-batches (one optimizer step each) over `order`: (rows, micro_batches) with `rows` every index
        into `items` of the mini-batch, and `micro_batches` (one forward/backward each) covering this rank's
        contiguous slice of them (all of them with one rank). Each micro-batch is a batch dict (see `_batch`)
        plus `rows` (the indices into `items` of its B rows) and `start` (its first row's position in the
        mini-batch). `whole`: one mini-batch of every item."""
        mini = len(items) if whole else (self.mini_batch_size or len(items))
        out = []
        for m in range(0, len(order), mini):
            part = order[m:m + mini]
            lo, hi = len(part) * self.rank // self.world_size, len(part) * (self.rank + 1) // self.world_size
            mbs = []
            for s in range(lo, hi, self.micro_batch_size):
                rows = part[s:min(s + self.micro_batch_size, hi)]
                mbs.append({**self._batch([items[r] for r in rows], [prompts[r] for r in rows]), "rows": rows,
                            "start": s})
            if self.sharded:  # every forward is a collective: pad to the most passes any rank runs (loss x 0)
                pad = max(pass_counts(len(part), self.world_size, self.micro_batch_size)) - len(mbs)
                mbs += [{**self._batch([items[part[0]]], [prompts[part[0]]]), "rows": [part[0]], "start": 0,
                         "pad": True}] * pad
            out.append((part, mbs))
        return out

    @torch.no_grad()
    def _old_logprobs(self, layout) -> dict[int, torch.Tensor]:
        """One no-grad pass over the layout before the first update: per item (index into `items`), its
        (L_i,) old logprobs (L_i: its completion length); with several ranks, gathered from all of them."""
        was = self.model.training
        self.model.eval()
        old: dict[int, torch.Tensor] = {}
        for _, mbs in layout:
            for mb in mbs:
                lp = self._logprobs(self.model, mb)[0]
                if not mb.get("pad"):
                    old.update(_per_item(lp, mb))
        self.model.train(was)
        if self.world_size > 1:  # each rank scored its own slices: gather every item's
            import torch.distributed as dist

            parts: list = [None] * self.world_size
            dist.all_gather_object(parts, old)
            old = {k: v for part in parts for k, v in part.items()}
        return old

    def whole_batch(self, items: list[TrainItem]) -> list[dict]:
        """`items` as one mini-batch: checked, prompts encoded, cut into this rank's micro-batches."""
        self._check_batch(items)
        return self._layout(items, self.encode_prompts(items), list(range(len(items))), whole=True)[0][1]

    def train_part(self, items: list[TrainItem]) -> int:
        """A streamed update (rlkit/policy/streaming.py): accumulate one part of the step's batch, no step yet."""
        return self.stream.add(items)

    def train_finish(self) -> dict[str, float]:
        """A streamed update: the optimizer step over the parts since the last one; `train_step`'s metrics."""
        return self.stream.finish()

    def _check_batch(self, items: list[TrainItem]) -> None:
        if self.sharded and len({bool(it.images) for it in items}) > 1:
            raise ValueError("trainer.strategy fsdp2: a batch mixes rows with and without images (ranks would "
                             "run the vision tower a different number of times); use trainer.strategy replicate")

    def train_step(self, items: list[TrainItem]) -> dict[str, float]:
        """One rollout batch's update: `ppo_epochs` passes over mini-batches of `mini_batch_size` sequences,
        one optimizer step per mini-batch. Returns float metrics (token-weighted means over all optimizer
        steps; per-step metrics, with the mini-batch's item indices, in `self.update_log`).

        With one optimizer step in all, the old logprobs are the current ones detached (no extra pass);
        with more, they are computed once, before the first update, over the first epoch's layout, and reused.
        """
        t0 = time.perf_counter()
        self._check_batch(items)
        prompts = self.encode_prompts(items)
        n_mini = math.ceil(len(items) / (self.mini_batch_size or len(items)))
        n_steps = self.ppo_epochs * n_mini
        layout = self._layout(items, prompts, self._order(0, len(items), n_mini))
        old = self._old_logprobs(layout) if n_steps > 1 else None
        ref: dict[int, torch.Tensor] = {}  # reference logprobs per item, computed on first use
        self.update_log = []
        for epoch in range(self.ppo_epochs):
            if epoch > 0 and self.shuffle_minibatches and n_mini > 1:
                layout = self._layout(items, prompts, self._order(epoch, len(items), n_mini))
            for k, mini in enumerate(layout):
                m = self._optimizer_step(items, mini, old, ref)
                self.update_log.append({"epoch": epoch, "mini_batch": k, "items": list(mini[0]), **m})
        return self.end_step([len(it.completion_ids) for it in items], time.perf_counter() - t0, self.update_log)

    def end_step(self, lengths: list[int], compute_s: float, update_log: list[dict]) -> dict[str, float]:
        """Close the step: its metrics over `update_log` (its optimizer steps, kept as `self.update_log`;
        `rlkit.policy.batching.step_metrics`); the next step brings new prompts."""
        self.update_log = update_log
        self.step += 1
        self._encoded.clear()
        return step_metrics(update_log, lengths, compute_s, self.skipped_updates)

    def _optimizer_step(self, items: list[TrainItem], mini: tuple[list, list], old: dict[int, torch.Tensor] | None,
                        ref: dict[int, torch.Tensor]) -> dict[str, float]:
        """Accumulate the gradient of one mini-batch over its micro-batches, clip, step (unless non-finite).

        `mini`: (rows, micro_batches) from `_layout`. `old`: per-item old logprobs (None: the current ones
        detached); `ref`: per-item reference logprobs, filled here on first use (with KL in the loss). With
        several ranks, the micro-batches are this rank's slice; gradients and metrics are summed over ranks
        before clipping, so every rank steps identically."""
        self.optimizer.zero_grad(set_to_none=True)
        mini_rows, mbs = mini
        full_weights = _weights(_length_mask([len(items[r].completion_ids) for r in mini_rows]), self.aggregation,
                                self.loss_opts.get("norm_length"))
        return self.apply_gradients(self.accumulate(items, mbs, old, ref, full_weights, new_accumulator()))

    def accumulate(self, items: list[TrainItem], mbs: list[dict], old: dict[int, torch.Tensor] | None,
                    ref: dict[int, torch.Tensor], row_weights: torch.Tensor, acc: dict) -> dict:
        """Forward/backward of the micro-batches `mbs` into the parameters' gradients, each micro-batch's loss
        scaled by its rows' weight (`row_weights[start:start+B]`, per token or per row) over its own total;
        adds its loss, token count and token-weighted metrics to `acc` (`new_accumulator`)."""
        for mb in mbs:
            logp, entropy = self._logprobs(self.model, mb)
            if mb.get("pad"):  # fsdp2: a pass that only keeps the ranks' collectives in step; zero gradient
                (torch.where(mb["mask"] > 0, logp, torch.zeros_like(logp)).sum() * 0.0).backward()
                continue
            loss, metrics = self._micro_loss(items, mb, logp, entropy, old, ref)
            # this micro-batch's share of the whole mini-batch's aggregate (over every rank's rows)
            scale = _aggregation_scale(row_weights, mb["start"], mb["mask"].cpu(), self.aggregation,
                                       self.loss_opts.get("norm_length"))
            (loss * scale).backward()
            add_to_accumulator(acc, float(loss.detach()) * scale, mb, metrics)
        return acc

    def _micro_loss(self, items, mb: dict, logp, entropy, old, ref: dict) -> tuple[torch.Tensor, dict]:
        """One micro-batch's loss: the registered policy loss (old logprobs: `old`, else `logp` detached), plus
        kl_coef * KL to the reference when the KL is in the loss; and its metrics (entropy included)."""
        rows = [items[r] for r in mb["rows"]]
        old_lp = _gather(old, mb, logp) if old is not None else logp.detach()
        adv = torch.tensor([it.advantage for it in rows], dtype=logp.dtype, device=logp.device)
        has_rollout = all(it.rollout_logprobs for it in rows)
        loss, metrics = self.loss_fn(logp, old_lp, adv, mb["mask"],
                                     rollout_logprobs=mb["rollout_logprobs"] if has_rollout else None, **self.loss_opts)
        if self.has_reference and not self.kl_in_reward:
            if any(r not in ref for r in mb["rows"]):
                ref.update(_per_item(self._ref_logprobs(mb), mb))
            kl = aggregate(self.kl_fn(logp, _gather(ref, mb, logp)), mb["mask"], self.aggregation,
                           norm_length=self.loss_opts.get("norm_length"))
            loss = loss + self.kl_coef * kl
            metrics["kl"] = float(kl.detach())
        metrics["entropy"] = float((entropy * mb["mask"]).sum() / mb["mask"].sum().clamp(min=1))
        return loss, metrics

    @torch.no_grad()
    def loss(self, items: list[TrainItem]) -> tuple[float, dict[str, float]]:
        """(loss, metrics) of `items` as one mini-batch, as a one-step `train_step` computes them (old logprobs:
        the current ones; KL in the loss when configured), without stepping: weights, optimizer, step unchanged.
        Metrics: token-weighted means (`train_step`'s names without `train/`); several ranks: every rank calls."""
        mbs = self.whole_batch(items)
        weights = _weights(_length_mask([len(it.completion_ids) for it in items]), self.aggregation,
                           self.loss_opts.get("norm_length"))
        acc = new_accumulator()
        for mb in mbs:
            logp, entropy = self._logprobs(self.model, mb)
            if not mb.get("pad"):
                loss, metrics = self._micro_loss(items, mb, logp, entropy, None, {})
                scale = _aggregation_scale(weights, mb["start"], mb["mask"].cpu(), self.aggregation,
                                           self.loss_opts.get("norm_length"))
                add_to_accumulator(acc, float(loss) * scale, mb, metrics)
        loss, weight, totals = acc["loss"], acc["weight"], acc["totals"]
        if self.world_size > 1:
            loss, weight, totals = merge_metrics(self.world_size, loss, weight, totals)
        return loss, {k: v / max(weight, 1.0) for k, v in totals.items()}

    def apply_gradients(self, acc: dict, grad_scale: float = 1.0) -> dict[str, float]:
        """Sum over ranks, multiply gradients (and loss) by `grad_scale`, clip, step unless non-finite, zero."""
        loss_total, weight_sum, totals = acc["loss"], acc["weight"], acc["totals"]
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.world_size > 1:  # fsdp2 already summed the gradients (reduce-scatter in backward)
            if not self.sharded:
                all_reduce_grads(params)
            loss_total, weight_sum, totals = merge_metrics(self.world_size, loss_total, weight_sum, totals)
        if grad_scale != 1.0:  # a streamed step (rlkit/policy/streaming.py): the batch's normaliser, known only now
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(grad_scale)
            loss_total *= grad_scale
        grad_norm = global_norm(torch.nn.utils.clip_grad_norm_(  # over DTensor gradients: the global norm
            params, self.max_grad_norm if self.max_grad_norm > 0 else float("inf")))
        finite = math.isfinite(loss_total) and bool(torch.isfinite(grad_norm))
        if finite:
            self.optimizer.step()
        else:  # never let a NaN/inf reach the weights (or, through the sync, the rollout engine)
            self.skipped_updates += 1
        self.optimizer.zero_grad(set_to_none=True)
        out = {k: v / max(weight_sum, 1.0) for k, v in totals.items()}
        out.update({"loss": loss_total, "grad_norm": float(grad_norm), "update_skipped": 0.0 if finite else 1.0,
                    "_weight": weight_sum})
        return out

    # ------------------------------------------------------------------------------------------ ranks
    def join_group(self, address: str, port: int, rank: int, world_size: int, backend: str = "",
                   timeout_s: float = 600.0, token: str = "") -> None:
        """Join the torch.distributed group of trainer.num_ranks policy ranks (gloo on CPU, NCCL on CUDA;
        rlkit.policy.sharding.init_group). Every rank must have loaded the same weights (they all load the same path).
        With trainer.strategy fsdp2 the model is then sharded over the group. `token`: see init_group."""
        init_group(self.device, address, port, rank, world_size, backend, timeout_s, token)
        self.rank, self.world_size = rank, world_size
        if self.strategy == "fsdp2":
            self._shard()

    def _shard(self) -> None:
        """FSDP2 over the group (rlkit/policy/sharding.py); AdamW (no step taken yet) is rebuilt on the sharded parameters."""
        shard_policy(self.model, self.device, self.world_size)
        self.optimizer = rebuild_optimizer(self.optimizer, [p for p in self.model.parameters() if p.requires_grad])
        self.sharded = True

    def leave_group(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        self.rank, self.world_size = 0, 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Detached CPU weights under transformers' names (what the rollout engines load).

        No copy is made for a model already on the CPU: the tensors share storage with the live parameters
        (Ray serialises them when they cross to the engine actor). With LoRA: the merged weights (base +
        adapters) under the base model's names, so the engines need no adapter support.
        """
        if self.lora:
            return merged_state_dict(self.model)
        if self.sharded:  # gathered whole on rank 0 (collective: every rank calls it; the others get {})
            return full_state_dict(self.model, self.rank)
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    def trainable_counts(self) -> dict[str, int]:
        return dict(self.trainable)

    # ------------------------------------------------------------------------------------------ checkpoints
    def save(self, directory: str) -> None:
        """Model + processor (loadable by from_pretrained) and the optimizer/RNG state needed to resume
        (with LoRA also the adapter, see rlkit/policy/lora.py)."""
        d = pathlib.Path(directory)
        # fsdp2: the same files (either strategy resumes them), gathered whole (collective), written by rank 0
        weights = full_state_dict(self.model, self.rank) if self.sharded else None  # None: the model's own
        optim = full_optimizer_state(self.optimizer) if self.sharded else self.optimizer.state_dict()
        if self.rank > 0 and self.sharded:
            return
        d.mkdir(parents=True, exist_ok=True)
        if self.lora:  # adapter in d/adapter, merged model at the top (from_pretrained)
            save_lora(self.model, self.processor, d)
        else:
            self.model.save_pretrained(d, state_dict=weights)
            self.processor.save_pretrained(d)
        torch.save({"optimizer": optim, "torch_rng": torch.get_rng_state(),
                    "step": self.step, "skipped_updates": self.skipped_updates}, d / TRAINER_STATE)

    def load_trainer_state(self, directory: str) -> None:
        state = torch.load(pathlib.Path(directory) / TRAINER_STATE, weights_only=False, map_location="cpu")
        if self.sharded:  # each rank keeps its slices of the full state
            shard_optimizer_state(self.optimizer, state["optimizer"])
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        self.step = state["step"]
        self.skipped_updates = state.get("skipped_updates", 0)

    def pid(self) -> int:
        return os.getpid()
