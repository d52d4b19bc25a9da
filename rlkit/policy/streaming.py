"""A streamed update: one optimizer step over a batch that arrives in parts (`rollout.stream_chunks`).

Why: on-policy GRPO alternates rollout and update, so the rollout engines wait while the policy trains and
the policy waits while they generate. When the step's prompts are generated in chunks of whole groups, the
policy can run forward/backward on chunk k (accumulating gradients, no optimizer step) while the engines
generate chunk k+1; the single optimizer step after the last chunk sees the same gradient as one update over
the whole batch (up to float rounding), so the run stays exactly on-policy. With the engines and the policy
on different devices (or cores), the step takes about max(generation, update) plus one chunk instead of
their sum.

The catch is the loss normaliser: a token-mean loss divides by the batch's total token count, which is known
only once the last chunk is generated. Every registered aggregation weights each row in proportion to a
quantity of that row alone (`rlkit.policy.batching.relative_row_weights`), so each part's micro-batches are scaled
against a fixed reference row, and the finished sum is multiplied once by the batch's normaliser before
clipping. Only one optimizer step per batch can be streamed (trainer.mini_batch_size 0, ppo_epochs 1): later
mini-batches would need the whole batch first.
"""
from __future__ import annotations

import time
import weakref
from typing import Protocol

from rlkit.policy.batching import _length_mask, _weights, new_accumulator, relative_row_weights
from rlkit.records import TrainItem


class UpdateParts(Protocol):
    """What a streamed step is built from: the public parts of `PolicyWorker.train_step` (the worker implements
    them; `StreamedUpdate` calls them in another order, and nothing else of the worker; tests/test_streaming.py
    checks the result equals one `train_step`)."""

    mini_batch_size: int  # 0: one optimizer step per batch (the only case a stream can take)
    ppo_epochs: int
    aggregation: str  # the loss's aggregation name (`loss_opts.aggregation`)
    loss_opts: dict
    optimizer: object

    def whole_batch(self, items: list[TrainItem]) -> list[dict]: ...  # checked, encoded: one mini-batch's micro-batches
    def accumulate(self, items, mbs, old, ref, row_weights, acc: dict) -> dict: ...  # forward/backward, no step
    def apply_gradients(self, acc: dict, grad_scale: float = 1.0) -> dict: ...  # sum over ranks, scale, clip, step
    def end_step(self, lengths: list[int], compute_s: float, update_log: list) -> dict: ...  # metrics; step += 1


class StreamedUpdate:
    """One streamed optimizer step of a worker (`PolicyWorker.stream`): `add` for each part of the batch, then
    `finish` once. Holds the step in progress (accumulated loss and metrics, lengths, weight mass, timers).

    It refers to its parts weakly: the worker owns it, and a strong reference back would put the worker in a
    reference cycle, so dropping a worker would free its model (and GPU memory) only at the next full garbage
    collection instead of at once (benchmarks/gpu_worker.py frees one model before it builds the next)."""

    def __init__(self, parts: UpdateParts):
        self._parts = weakref.ref(parts)
        self.state: dict | None = None  # the step in progress; None between steps

    @property
    def parts(self) -> UpdateParts:
        """The worker (whatever provides `UpdateParts`) this step is built from; its owner keeps it alive."""
        return self._parts()

    def add(self, items: list[TrainItem]) -> int:
        """Accumulate the gradient of one part of the step's batch (every rank gets the part; each trains its
        slice). Returns the number of items accumulated so far this step."""
        w = self.parts
        if w.mini_batch_size or w.ppo_epochs != 1:
            raise ValueError("a streamed update (rollout.stream_chunks > 1) takes one optimizer step per batch: "
                             "set trainer.mini_batch_size 0 and trainer.ppo_epochs 1")
        t0 = time.perf_counter()
        if self.state is None:
            w.optimizer.zero_grad(set_to_none=True)
            self.state = {"acc": new_accumulator(), "lengths": [], "mass": 0.0, "compute_s": 0.0, "idle_s": 0.0,
                          "parts": 0, "end": None}
        s = self.state
        if s["end"] is not None:  # waiting for this part since the last one ended: the engines were behind
            s["idle_s"] += t0 - s["end"]
        mbs = w.whole_batch(items)
        lengths = [len(it.completion_ids) for it in items]
        rel = relative_row_weights(lengths, w.aggregation, w.loss_opts.get("norm_length"))
        w.accumulate(items, mbs, None, {}, rel, s["acc"])  # old logprobs: the current ones (one step)
        s["lengths"] += lengths
        s["mass"] += float(rel.sum())
        s["end"] = time.perf_counter()
        s["compute_s"] += s["end"] - t0
        s["parts"] += 1
        return len(s["lengths"])

    def finish(self) -> dict[str, float]:
        """The optimizer step over every part accumulated since the last one; the step's metrics, as
        `train_step` returns them, plus `train/stream_parts` and `time/update_idle_s` (the time the policy
        waited between parts: the next chunk was still being generated)."""
        w, s, self.state = self.parts, self.state, None
        if s is None:
            raise ValueError("train_finish without a train_part before it")
        t0 = time.perf_counter()
        total = float(_weights(_length_mask(s["lengths"]), w.aggregation, w.loss_opts.get("norm_length")).sum())
        m = w.apply_gradients(s["acc"], grad_scale=total / s["mass"] if s["mass"] > 0 else 0.0)
        log = [{"epoch": 0, "mini_batch": 0, "items": list(range(len(s["lengths"]))), **m}]
        out = w.end_step(s["lengths"], s["compute_s"] + time.perf_counter() - t0, log)
        # the policy's wait between parts (generation slower than training a part) and the part count
        out.update({"time/update_idle_s": s["idle_s"], "train/stream_parts": float(s["parts"])})
        return out
