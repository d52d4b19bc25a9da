"""Asynchronous GRPO with bounded staleness (`rollout.max_staleness: k > 0`): the engines collect the next steps'
batches while the policy trains.

One background thread collects the batches of steps start+1, start+2, ... in order (`collect`: rollout, rewards,
group filter and refill, unchanged); the driver's loop takes them with `next(step)`, trains, and hands the new
weights over with `trained(step, ref)` / `release(step)`. Policy version v = the weights after step v's update
(v = 0: the initial policy). Step t's update starts from version t-1; its batch is sampled by version

    weights_for(t) = max(t - 1 - k, the last sync step before t)       (the run's start counts as one)

so no trained sample is more than k versions old: older ones are never started, rather than dropped. A *sync
step* s (a checkpoint is saved, the held-out evaluation runs, or the last step) gives its weights to the
engines at once and lets no batch start before them: batch s+1 is sampled by version s. That costs one
pipeline bubble per checkpoint and buys exact resume: the state a checkpoint saves (data position, RNG, filter)
is the state after batch s, and the batches after it depend only on it, the seed and versions >= s, so a resumed
run (whose start is s) collects exactly what the uninterrupted run collected.

Which weights a batch uses is fixed by this schedule, never by timing, so a run is deterministic: the engines
load version `weights_for(t)` right before batch t (in-place sync), every sample records it (`Sample.version`),
and a reward that uses the policy (RLPR) scores batch t with version t-1 (`gated`: the scoring call waits until
the driver releases t-1). Version t-1 is the policy that the sample's own update starts from and the one that the
on-policy loop scores with; scoring with the stale weights that sampled it is not possible (the trainer no
longer holds them) and scoring "whatever the trainer holds now" would depend on timing.

The thread mutates what `collect` mutates (the prompt stream, the RNG, the group filter, reward state such as
RLPR's baseline cache); the driver reads those only at sync steps (checkpoints), when the thread is waiting, and
reads their metrics from the snapshot each batch carries (`Collected.snapshot`).
"""
from __future__ import annotations

import threading
import time
from typing import Callable


class AheadError(RuntimeError):
    """The background collection failed; the driver re-raises it from `next`."""


class Ahead:
    """Collects batches ahead of the update (see the module docstring).

    `collect(step) -> Collected`; `load(ref)`: every engine loads the weights behind `ref`; `snapshot() -> dict`:
    metrics of the state the thread mutates, taken after each batch; `is_sync(step)`: see the module docstring."""

    def __init__(self, k: int, start: int, max_steps: int, is_sync: Callable[[int], bool],
                 collect: Callable, load: Callable, snapshot: Callable[[], dict]):
        if k < 1:
            raise ValueError(f"max_staleness must be >= 1 here, got {k}")
        self.k, self.start, self.max_steps, self.is_sync = k, start, max_steps, is_sync
        self._collect, self._load, self._snapshot = collect, load, snapshot
        self._cv = threading.Condition()
        self._released = start  # newest version whose weights the thread may use
        self._same = {start: start}  # version -> the version whose weights it holds (a skipped update repeats them)
        self._refs: dict = {}  # version -> object ref of its weights
        self._loaded = start  # the engines hold this version's weights (they started from the run's start)
        self._done: dict = {}  # step -> Collected, waiting for `next`
        self._current = None  # the step being collected (the scoring gate reads it)
        self._busy = False
        self._error: BaseException | None = None
        self._stop = False
        self.wait_s = 0.0  # the driver's wait in the last `next`
        self._thread = threading.Thread(target=self._run, name="rlkit-ahead", daemon=True)
        self._thread.start()

    def weights_for(self, t: int) -> int:
        """The policy version that samples step t's batch."""
        lo = max(self.start, t - 1 - self.k)  # a sync step at or before lo cannot raise the result
        return next((s for s in range(t - 1, lo, -1) if self.is_sync(s)), lo)

    # ------------------------------------------------------------------------------------------ the driver's side
    def next(self, step: int):
        """Step `step`'s batch (a `Collected`), waiting for it; the thread's failure is raised here."""
        t0 = time.perf_counter()
        with self._cv:
            self._cv.wait_for(lambda: self._error is not None or step in self._done)
            if step not in self._done:
                raise AheadError(f"collecting the batch of step {step} ahead of the update failed: "
                                 f"{type(self._error).__name__}: {self._error}") from self._error
            c = self._done.pop(step)
        self.wait_s = time.perf_counter() - t0
        return c

    def trained(self, step: int, ref) -> None:
        """Step `step`'s update is done; `ref`: its weights (None: the update was skipped, the weights are the
        previous version's). At a sync step the engines load them now (the thread is waiting for them) and the
        release waits for `release` (after the evaluation and the checkpoint); otherwise they are released now
        and reach the engines when a batch first needs them."""
        with self._cv:
            self._same[step] = step if ref is not None else self._same[step - 1]
            if ref is not None:
                self._refs[step] = ref
        if self.is_sync(step):
            with self._cv:
                if self._busy:
                    raise AheadError(f"internal: a batch was being collected at sync step {step}")
            self._ensure_loaded(step)
        else:
            self.release(step)

    def release(self, step: int) -> None:
        """The thread may use version `step` (sample with it, score with it); idempotent."""
        with self._cv:
            self._released = max(self._released, step)
            keep = {self._same[v] for v in range(self.weights_for(step + 1), step + 1)} | {self._same[self._loaded]}
            self._refs = {v: r for v, r in self._refs.items() if v in keep}  # older weights are never needed again
            self._cv.notify_all()

    def gated(self, policy):
        """`policy` (a `PolicyAccess`: `completion_logprobs`) whose calls from the thread wait for version t-1."""
        return _GatedPolicy(policy, self)

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()

    # ------------------------------------------------------------------------------------------ the thread's side
    def _run(self) -> None:
        try:
            for t in range(self.start + 1, self.max_steps + 1):
                need = self.weights_for(t)
                with self._cv:
                    self._cv.wait_for(lambda: self._stop or self._released >= need)
                    if self._stop:
                        return
                    self._busy, self._current = True, t
                self._ensure_loaded(need)
                c = self._collect(t)
                for s in [*c.everything, *c.samples]:  # kept samples are copies (renumbered groups)
                    s.version = need
                c.snapshot = self._snapshot()
                with self._cv:
                    self._done[t], self._busy = c, False
                    self._cv.notify_all()
        except BaseException as e:  # noqa: BLE001 - handed to the driver's `next`
            with self._cv:
                self._error, self._busy = e, False
                self._cv.notify_all()

    def _ensure_loaded(self, version: int) -> None:
        with self._cv:
            same = self._same[version]
            ref = self._refs.get(same)
        if same != self._same[self._loaded]:
            self._load(ref)
        self._loaded = version

    def _wait_for_scoring(self) -> None:
        if threading.current_thread() is not self._thread:
            return  # the driver's own calls (held-out evaluation) score with what the trainer holds
        with self._cv:
            need = self._current - 1
            self._cv.wait_for(lambda: self._stop or self._released >= need)
            if self._stop:
                raise AheadError("stopped while waiting for the policy to score a batch")


class _GatedPolicy:
    """A reward's policy access whose calls from the ahead thread wait until the batch's step-1 is released."""

    def __init__(self, inner, ahead: Ahead):
        self.inner, self.ahead = inner, ahead

    def completion_logprobs(self, *args, **kwargs):
        self.ahead._wait_for_scoring()
        return self.inner.completion_logprobs(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def async_metrics(ahead: Ahead | None, step: int, c) -> dict:
    """The step's `async/...` metrics (none when on-policy): staleness of its trained samples and the driver's wait
    for the batch (`time/wait_s`: the part of the rollout the update did not hide)."""
    if ahead is None:
        return {}
    return {**staleness_metrics(c.samples, step, ahead.k), "async/weights_version": float(ahead.weights_for(step)),
            "time/wait_s": ahead.wait_s}


def staleness_metrics(samples: list, step: int, k: int) -> dict:
    """`async/...` metrics of one step's trained samples: lag = (step - 1) - version (0: on-policy), its mean and
    max, the histogram `async/staleness_hist/{j}` (samples at lag j, j = 0..k), and the versions' range."""
    lags = [step - 1 - s.version for s in samples]
    if any(x > k or x < 0 for x in lags):  # the schedule never starts such a batch: a broken invariant, not data
        raise AheadError(f"step {step}: a sample of version {min(s.version for s in samples)} is more than "
                         f"rollout.max_staleness = {k} versions old")
    out = {f"async/staleness_hist/{j}": float(sum(1 for x in lags if x == j)) for j in range(k + 1)}
    if lags:
        out.update({"async/staleness_mean": sum(lags) / len(lags), "async/staleness_max": float(max(lags)),
                    "async/version_min": float(min(s.version for s in samples))})
    return out
