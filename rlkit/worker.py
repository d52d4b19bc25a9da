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
sequences (0: the whole batch), one optimizer step each. With exactly one step in all, the "old" logprobs
equal the current ones detached (ratio 1) and no extra forward pass is spent on them; with more, they are
computed once, in one no-grad pass over the same batched layout, before the first update. Micro-batches
accumulate gradients; each micro-batch's loss is rescaled so that the sum equals the loss of its whole
mini-batch under the configured aggregation (see `_aggregation_scale`).

KL to the reference policy: in the loss (`kl_coef * aggregation(k)`, default), or, with `kl_in_reward`, as a
k1 penalty the driver subtracts from each reward before advantages (`reference_kl`, `kl_penalized_rewards`).
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
from rlkit.lora import ADAPTER_DIR, adapter_base_path, apply_lora, load_lora, lora_settings, merged_state_dict, save_lora
from rlkit.lora import trainable_counts as lora_trainable_counts
from rlkit.models.loading import apply_freeze, load_policy, tokenizer_of
from rlkit.records import TrainItem
from rlkit.vision import image_inputs

TRAINER_STATE = "trainer_state.pt"


class PolicyWorker:
    def __init__(
        self,
        model_path: str,
        *,
        dtype: str = "float32",
        freeze: list[str] | None = None,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        max_grad_norm: float = 1.0,
        micro_batch_size: int = 64,
        mini_batch_size: int = 0,
        ppo_epochs: int = 1,
        policy_loss: str = "ppo_clip",
        loss_opts: dict | None = None,
        kl_coef: float = 0.0,
        kl_estimator: str = "k3",
        kl_in_reward: bool = False,
        reference_path: str | None = None,
        temperature: float = 1.0,
        lora: dict | None = None,
        seed: int = 0,
        num_threads: int = 1,
    ):
        torch.set_num_threads(num_threads)
        torch.manual_seed(seed)
        self.lora = lora_settings(lora)
        resume_base = adapter_base_path(model_path) if self.lora else None
        self.model, self.processor, self.is_vlm = load_policy(resume_base or model_path, dtype)
        self.tokenizer = tokenizer_of(self.processor)
        self.trainable = apply_freeze(self.model, list(freeze or []))
        if self.lora:  # only adapter weights train; a checkpoint's adapter is resumed on its base model
            self.model = (load_lora(self.model, pathlib.Path(model_path) / ADAPTER_DIR) if resume_base
                          else apply_lora(self.model, self.lora))
            self.trainable = lora_trainable_counts(self.model)
        self.model.train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("model.freeze leaves no trainable parameter")
        self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas))
        self.max_grad_norm = max_grad_norm
        self.micro_batch_size = max(1, micro_batch_size)
        if mini_batch_size < 0 or ppo_epochs < 1:
            raise ValueError(f"mini_batch_size must be >= 0 (0: the whole batch) and ppo_epochs >= 1, "
                             f"got {mini_batch_size} and {ppo_epochs}")
        self.mini_batch_size = mini_batch_size  # sequences per optimizer step (0: the whole rollout batch)
        self.ppo_epochs = ppo_epochs
        self.update_log: list[dict] = []  # per optimizer step of the last train_step: epoch, mini_batch, metrics
        self.loss_fn = get_policy_loss(policy_loss)
        self.loss_opts = dict(loss_opts or {})
        self.aggregation = self.loss_opts.get("aggregation", "token_mean")
        self.kl_coef = kl_coef
        self.kl_in_reward = kl_in_reward  # True: k1 penalty in the reward (reference_kl), none in the loss
        self.kl_fn = get_kl_estimator(kl_estimator)
        self.temperature = temperature
        self.ref_model = None
        if kl_coef > 0:
            self.ref_model, _, _ = load_policy(reference_path or model_path, dtype)
            self.ref_model.eval().requires_grad_(False)
        self.step = 0
        self.skipped_updates = 0
        self._encoded: dict[tuple, dict] = {}  # prompt encodings of the current step (see _encode_prompts)

    # ------------------------------------------------------------------------------------------ encoding
    def _encode_prompts(self, items: list[TrainItem]) -> list[dict]:
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
            key = (it.prompt_text, tuple(_image_digest(im, digests) for im in it.images))
            if key not in self._encoded:
                if self.is_vlm and it.images:
                    enc = self.processor(text=[it.prompt_text], images=list(it.images), return_tensors="pt",
                                         add_special_tokens=False)
                    entry = {"ids": enc["input_ids"][0], "pixel_values": enc["pixel_values"],
                             "image_grid_thw": enc["image_grid_thw"]}
                    if "mm_token_type_ids" in enc:  # transformers 5: which prompt tokens are image tokens (mrope)
                        entry["mm_types"] = torch.as_tensor(enc["mm_token_type_ids"][0])
                else:
                    entry = {"ids": self.tokenizer(it.prompt_text, add_special_tokens=False,
                                                   return_tensors="pt")["input_ids"][0]}
                self._encoded[key] = entry
            out.append(self._encoded[key])
        return out

    def _batch(self, items: list[TrainItem], prompts: list[dict]) -> dict[str, Any]:
        pad = self.tokenizer.pad_token_id
        P = max(len(p["ids"]) for p in prompts)
        Tc = max(1, max(len(it.completion_ids) for it in items))
        B = len(items)
        ids = torch.full((B, P + Tc), pad, dtype=torch.long)
        attn = torch.zeros((B, P + Tc), dtype=torch.long)
        comp = torch.full((B, Tc), pad, dtype=torch.long)
        mask = torch.zeros((B, Tc), dtype=torch.float32)
        rollout = torch.zeros((B, Tc), dtype=torch.float32)
        mm_types = torch.zeros((B, P + Tc), dtype=torch.long) if any("mm_types" in p for p in prompts) else None
        for b, (it, p) in enumerate(zip(items, prompts)):
            n = len(p["ids"])
            ids[b, P - n:P] = p["ids"]
            if mm_types is not None and "mm_types" in p:
                mm_types[b, P - n:P] = p["mm_types"]
            attn[b, P - n:P] = 1
            c = torch.tensor(it.completion_ids, dtype=torch.long)
            ids[b, P:P + len(c)] = c
            attn[b, P:P + len(c)] = 1
            comp[b, :len(c)] = c
            mask[b, :len(c)] = 1.0
            if it.rollout_logprobs:
                rollout[b, :len(it.rollout_logprobs)] = torch.tensor(it.rollout_logprobs[:Tc], dtype=torch.float32)
        batch = {"input_ids": ids, "attention_mask": attn, "completion_ids": comp, "mask": mask,
                 "rollout_logprobs": rollout, "Tc": Tc}
        if mm_types is not None:
            batch["mm_token_type_ids"] = mm_types
        imgs = [p for p in prompts if "pixel_values" in p]
        if imgs:
            # one entry per sequence, in order (shared prompts repeat their tensors, as the model expects)
            batch["pixel_values"] = torch.cat([p["pixel_values"] for p in prompts if "pixel_values" in p])
            batch["image_grid_thw"] = torch.cat([p["image_grid_thw"] for p in prompts if "image_grid_thw" in p])
            # equal keys = the same processor output (a shared prompt): its images are encoded once
            batch["image_keys"] = [(id(p), k) for p in imgs for k in range(len(p["image_grid_thw"]))]
        return batch

    def _logprobs(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, Tc) logprobs of the completion tokens and (B, Tc) entropy (detached)."""
        kwargs = {k: batch[k] for k in ("mm_token_type_ids",) if k in batch}
        if "pixel_values" in batch:
            kwargs.update(image_inputs(model, batch["pixel_values"], batch["image_grid_thw"], batch["image_keys"]))
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    logits_to_keep=batch["Tc"] + 1, use_cache=False, **kwargs)
        logits = out.logits[:, :-1].float()
        if self.temperature != 1.0:
            logits = logits / self.temperature
        logp_all = torch.log_softmax(logits, dim=-1)
        logp = logp_all.gather(-1, batch["completion_ids"].unsqueeze(-1)).squeeze(-1)
        with torch.no_grad():
            entropy = -(logp_all.exp() * logp_all).sum(-1)
        return logp, entropy

    def _micro_batches(self, items: list[TrainItem]):
        prompts = self._encode_prompts(items)
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
        if self.ref_model is None:
            raise ValueError("reference_kl needs a reference model (algorithm.kl_coef > 0)")
        was = self.model.training
        self.model.eval()
        out: list[float] = []
        for _, mb in self._micro_batches(items):
            logp, _ = self._logprobs(self.model, mb)
            ref, _ = self._logprobs(self.ref_model, mb)
            out += sequence_k1(logp, ref, mb["mask"]).tolist()
        self.model.train(was)
        return out

    def _layout(self, items: list[TrainItem]) -> list[list[tuple[int, dict]]]:
        """Mini-batches (one optimizer step each) of micro-batches (one forward/backward each), built once.

        Each micro-batch is `(start index into items, batch dict)`; the same tensors serve the old-logprob
        pass and every epoch, so the layout (padding widths included) is identical across them.
        """
        prompts = self._encode_prompts(items)
        mini = self.mini_batch_size or len(items)
        out = []
        for m in range(0, len(items), mini):
            end = min(m + mini, len(items))
            out.append([(s, self._batch(items[s:min(s + self.micro_batch_size, end)],
                                        prompts[s:min(s + self.micro_batch_size, end)]))
                        for s in range(m, end, self.micro_batch_size)])
        return out

    @torch.no_grad()
    def _old_logprobs(self, layout) -> None:
        """One no-grad pass over the layout before the first update: `mb["old_logprobs"]` (B, Tc)."""
        was = self.model.training
        self.model.eval()
        for mini in layout:
            for _, mb in mini:
                mb["old_logprobs"] = self._logprobs(self.model, mb)[0]
        self.model.train(was)

    def train_step(self, items: list[TrainItem]) -> dict[str, float]:
        """One rollout batch's update: `ppo_epochs` passes over mini-batches of `mini_batch_size` sequences,
        one optimizer step per mini-batch. Returns float metrics (token-weighted means over all optimizer
        steps; per-step metrics in `self.update_log`).

        With one optimizer step in all, the old logprobs are the current ones detached (no extra pass);
        with more, they are computed once, before the first update, and reused.
        """
        t0 = time.perf_counter()
        layout = self._layout(items)
        n_steps = self.ppo_epochs * len(layout)
        if n_steps > 1:
            self._old_logprobs(layout)
        totals: dict[str, float] = {}
        weight_sum = loss_sum = grad_sum = 0.0
        skipped = 0
        self.update_log = []
        for epoch in range(self.ppo_epochs):
            for k, mini in enumerate(layout):
                m = self._optimizer_step(items, mini)
                self.update_log.append({"epoch": epoch, "mini_batch": k, **m})
                w = m.pop("_weight")
                weight_sum += w
                loss_sum += m.pop("loss")
                grad_sum += m.pop("grad_norm")
                skipped += int(m.pop("update_skipped"))
                for key, v in m.items():
                    totals[key] = totals.get(key, 0.0) + v * w
        self.step += 1
        self._encoded.clear()  # the next step brings new prompts
        out = {f"train/{k}": v / max(weight_sum, 1.0) for k, v in totals.items()}
        out.update({
            "train/loss": loss_sum / n_steps,
            "train/grad_norm": grad_sum / n_steps,
            "train/skipped_updates": float(self.skipped_updates),
            "train/update_skipped": skipped / n_steps,
            "train/optimizer_steps": float(n_steps),
            "train/tokens": float(_length_mask([len(it.completion_ids) for it in items]).sum()),
            "time/update_compute_s": time.perf_counter() - t0,
        })
        return out

    def _optimizer_step(self, items: list[TrainItem], mini: list[tuple[int, dict]]) -> dict[str, float]:
        """Accumulate the gradient of one mini-batch over its micro-batches, clip, step (unless non-finite)."""
        self.optimizer.zero_grad(set_to_none=True)
        first = mini[0][0]
        n = sum(mb["mask"].shape[0] for _, mb in mini)
        full_mask = _length_mask([len(it.completion_ids) for it in items[first:first + n]])
        opts = dict(self.loss_opts)
        totals: dict[str, float] = {}
        weight_sum = 0.0
        loss_total = 0.0
        for s, mb in mini:
            rows = items[s:s + mb["mask"].shape[0]]
            logp, entropy = self._logprobs(self.model, mb)
            old = mb["old_logprobs"] if "old_logprobs" in mb else logp.detach()
            adv = torch.tensor([it.advantage for it in rows], dtype=logp.dtype)
            has_rollout = all(it.rollout_logprobs for it in rows)
            loss, metrics = self.loss_fn(logp, old, adv, mb["mask"],
                                         rollout_logprobs=mb["rollout_logprobs"] if has_rollout else None, **opts)
            if self.ref_model is not None and not self.kl_in_reward:
                with torch.no_grad():
                    if "ref_logprobs" not in mb:
                        mb["ref_logprobs"] = self._logprobs(self.ref_model, mb)[0]
                kl = aggregate(self.kl_fn(logp, mb["ref_logprobs"]), mb["mask"], self.aggregation,
                               norm_length=opts.get("norm_length"))
                loss = loss + self.kl_coef * kl
                metrics["kl"] = float(kl.detach())
            scale = _aggregation_scale(full_mask, s - first, mb["mask"], self.aggregation, opts.get("norm_length"))
            (loss * scale).backward()
            loss_total += float(loss.detach()) * scale
            w = float(mb["mask"].sum())
            weight_sum += w
            metrics["entropy"] = float((entropy * mb["mask"]).sum() / mb["mask"].sum().clamp(min=1))
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + float(v) * w
        params = [p for p in self.model.parameters() if p.requires_grad]
        grad_norm = torch.nn.utils.clip_grad_norm_(
            params, self.max_grad_norm if self.max_grad_norm > 0 else float("inf")
        )
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

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Detached CPU weights under transformers' names (what the rollout engines load).

        No copy is made for a model already on the CPU: the tensors share storage with the live parameters
        (Ray serialises them when they cross to the engine actor). With LoRA: the merged weights (base +
        adapters) under the base model's names, so the engines need no adapter support.
        """
        if self.lora:
            return merged_state_dict(self.model)
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    def trainable_counts(self) -> dict[str, int]:
        return dict(self.trainable)

    # ------------------------------------------------------------------------------------------ checkpoints
    def save(self, directory: str) -> None:
        """Model + processor (loadable by from_pretrained) and the optimizer/RNG state needed to resume
        (with LoRA also the adapter, see rlkit/lora.py)."""
        d = pathlib.Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        if self.lora:  # adapter in d/adapter, merged model at the top (from_pretrained)
            save_lora(self.model, self.processor, d)
        else:
            self.model.save_pretrained(d)
            self.processor.save_pretrained(d)
        torch.save({"optimizer": self.optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
                    "step": self.step, "skipped_updates": self.skipped_updates}, d / TRAINER_STATE)

    def load_trainer_state(self, directory: str) -> None:
        state = torch.load(pathlib.Path(directory) / TRAINER_STATE, weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        self.step = state["step"]
        self.skipped_updates = state.get("skipped_updates", 0)

    def pid(self) -> int:
        return os.getpid()


def _image_digest(image, memo: dict[int, str]) -> str:
    """A content key for an image (PIL image, array or tensor): equal pixels give equal keys."""
    if id(image) not in memo:
        if hasattr(image, "tobytes") and hasattr(image, "size") and hasattr(image, "mode"):  # PIL
            data, shape = image.tobytes(), f"{image.mode}{image.size}"
        else:
            arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else image
            data, shape = arr.tobytes(), f"{arr.dtype}{arr.shape}"
        memo[id(image)] = shape + hashlib.blake2b(data, digest_size=16).hexdigest()
    return memo[id(image)]


def sequence_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T) x3 -> (B,): `sum_t mask * (logprobs - ref_logprobs)`, the k1 estimate of KL(policy || ref) of
    each sampled sequence (padding holding -inf/nan is zeroed, never multiplied)."""
    diff = torch.where(mask > 0, logprobs - ref_logprobs, torch.zeros_like(logprobs))
    return diff.sum(-1)


def kl_penalized_rewards(rewards: torch.Tensor, seq_kl: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """(N,), (N,) -> (N,): `r - kl_coef * sum_t k1`, the KL-in-reward form (InstructGPT / PPO-RLHF)."""
    return rewards - kl_coef * seq_kl


def _length_mask(lengths: list[int]) -> torch.Tensor:
    T = max(1, max(lengths) if lengths else 1)
    return (torch.arange(T).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).float()


def _weights(mask: torch.Tensor, mode: str, norm_length) -> torch.Tensor:
    """d aggregate / d values: the weight each token has in the aggregated scalar (all aggregations are linear)."""
    v = torch.zeros_like(mask, requires_grad=True)
    aggregate(v, mask, mode, norm_length=norm_length).backward()
    return v.grad


def _aggregation_scale(full_mask: torch.Tensor, start: int, micro_mask: torch.Tensor, mode: str, norm_length) -> float:
    """Factor that turns a micro-batch's own aggregate into its share of the whole batch's aggregate.

    Every registered aggregation is a weighted sum of token values whose weights, restricted to a subset of
    rows, are proportional to the weights the subset gets on its own; the factor is the ratio of the two
    weight totals. No branch on the aggregation's name.
    """
    B, T = micro_mask.shape
    full_w = _weights(full_mask, mode, norm_length)[start:start + B].sum()
    own_w = _weights(micro_mask, mode, norm_length).sum()
    return float(full_w / own_w) if float(own_w) > 0 else 0.0
