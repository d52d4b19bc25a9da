"""Scale-out behind the driver's two handles: a pool of rollout engine actors and a group of policy ranks.

`EnginePool` (rollout.num_workers engine actors) is a plain `rollout.Engine` to the driver: `generate` splits a
step's requests into contiguous chunks balanced by sample count (one chunk per worker), sends them at once and
reassembles the results in request order. Sampling does not depend on which worker serves a request: every
engine seeds each request itself (the vLLM engine gives the request at sample offset k the seed `seed + k`), and a
chunk starting at offset k is sent with `seed + k`, so each request keeps the seed it would have had in one call.
(The `hf` engine seeds once per call, so its samples depend on the split; use vLLM for worker-invariant runs.)
`update_weights(ref)` hands every worker the same object reference: the state dict sits in Ray's object store
once and each worker reads it from there. A worker that dies (`RayActorError`) is recreated, given the last
synced weights (the pool keeps that reference until the next sync) and its chunk is sent again, at most
`rollout.max_retries` times per call; `restarts` counts them for the metrics. With `rollout.timeout_s`, a call
that takes longer is treated the same way (the hung worker is killed and recreated).

`PolicyGroup` (trainer.num_ranks policy ranks) starts the ranks as actors; with more than one they form a
torch.distributed group (rendezvous on rank 0's node IP: 127.0.0.1 under a local Ray, a free port). Every
rank gets the whole batch and trains its slice (rlkit/policy/worker.py: gradients summed before clipping, identical
steps). Rank 0 is the leader: it provides the weights for the sync, scores for rewards (RLPR) and writes
checkpoints (model, optimizer, RNG). The leader's calls are explicit methods (`compute_logprobs`, `reference_kl`,
`state_dict`: rank 0's result); under trainer.strategy "fsdp2" every forward pass all-gathers weight shards (a
collective), so they go to every rank with the same arguments (`_on_leader`). A rank that dies or fails stops
the run: the others (blocked in a collective) are killed and `PolicyRankError` names the rank and the last
complete checkpoint. With `trainer.timeout_s`, a call that gets no answer in time
is a hung rank and ends the same way (without it, only gloo's collective timeout ends a rank stuck waiting for a
peer that hangs).
"""
from __future__ import annotations

import dataclasses
import pathlib
import re
import socket
import time
import uuid
from typing import Callable, Sequence

from rlkit.policy.sharding import rendezvous_file
from rlkit.policy.worker import PolicyWorker
from rollout.base import RolloutRequest, SamplingConfig, balanced_chunks, requests_n  # noqa: F401


class EnginePool:
    """`rollout.num_workers` engine actors seen as one engine. `make(i)` returns a new actor handle for worker i
    (a recreated worker gets its predecessor's index, hence its placement bundle)."""

    def __init__(self, make: Callable[[int], object], num_workers: int = 1, max_retries: int = 2,
                 timeout_s: float = 0.0):
        self._make = make
        self.actors = [make(i) for i in range(max(1, num_workers))]
        self.max_retries = max_retries
        self.timeout_s = timeout_s  # a call taking longer counts as a hung worker: killed and recreated (0: no limit)
        self.restarts = 0  # workers recreated over the run (metric rollout/worker_restarts)
        self._weights = None  # object ref of the last synced state dict (a recreated worker loads it)

    def generate(self, requests: Sequence[RolloutRequest], sampling: SamplingConfig):
        ns = requests_n(requests, sampling)
        chunks = balanced_chunks(ns, len(self.actors))
        offsets = [sum(ns[:lo]) for lo, _ in chunks]
        jobs = [(list(requests[lo:hi]),
                 sampling if sampling.seed is None else dataclasses.replace(sampling, seed=sampling.seed + off))
                for (lo, hi), off in zip(chunks, offsets)]
        refs = [self.actors[w].generate.remote(*job) for w, job in enumerate(jobs)]
        out = []
        for w, (ref, job) in enumerate(zip(refs, jobs)):
            out += self._call(w, ref, lambda a, job=job: a.generate.remote(*job))
        return out

    def update_weights(self, state_dict_ref) -> None:
        """Every worker loads the state dict behind `state_dict_ref` (an object ref: stored once)."""
        self._weights = state_dict_ref
        refs = [a.update_weights.remote(state_dict_ref) for a in self.actors]
        for w, ref in enumerate(refs):
            self._call(w, ref, None)  # a recreated worker already loaded self._weights

    def sleep(self) -> bool:
        """Every worker frees its memory until its next call (rollout.sleep); False if any cannot."""
        refs = [a.sleep.remote() for a in self.actors]
        return all([self._call(w, ref, lambda a: a.sleep.remote()) for w, ref in enumerate(refs)])

    def _call(self, w: int, ref, resend):
        """`ray.get(ref)` of worker `w`'s call; when the worker is dead, recreate it (it loads the last synced
        weights first: an actor runs its calls in order) and `resend(actor)`, at most max_retries times. A worker
        whose constructor failed is not recreated: the same arguments fail the same way (a bad engine option, a
        model vLLM cannot load), and each try costs an engine start."""
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        attempt = 0
        while True:
            try:
                return None if ref is None else ray.get(ref, timeout=self.timeout_s or None)
            except (RayActorError, GetTimeoutError) as e:
                if getattr(e, "actor_init_failed", False):
                    raise RuntimeError(f"rollout worker {w} could not start: its constructor failed (not retried); "
                                       f"error: {_last_line(e)}") from e
                what = "hung (rollout.timeout_s)" if isinstance(e, GetTimeoutError) else "died"
                attempt += 1
                if attempt > self.max_retries:
                    raise RuntimeError(f"rollout worker {w} {what} {attempt} times in one call (config key "
                                       f"'rollout.max_retries' = {self.max_retries}); last error: "
                                       f"{_last_line(e)}") from e
                print(f"rlkit: rollout worker {w} {what} ({type(e).__name__}); recreating it "
                      f"(retry {attempt} of {self.max_retries})")
                ref = self._restart(w, resend)

    def _restart(self, w: int, resend):
        import ray

        try:
            ray.kill(self.actors[w], no_restart=True)
        except Exception:
            pass
        actor = self.actors[w] = self._make(w)
        self.restarts += 1
        loaded = actor.update_weights.remote(self._weights) if self._weights is not None else None
        return resend(actor) if resend is not None else loaded

    def close(self) -> None:
        import ray

        for a in self.actors:
            try:
                ray.kill(a)
            except Exception:
                pass


class PolicyRank(PolicyWorker):
    """A policy worker that can host its group's rendezvous (the body of a policy rank actor)."""

    def __init__(self, *args, **kwargs):
        from rlkit.console import actor_setup

        actor_setup()  # this actor's output to the run's log folder, when it has one (rlkit/console.py)
        super().__init__(*args, **kwargs)

    def rendezvous_address(self) -> tuple[str, int]:
        """(this node's IP as Ray sees it, a free TCP port on it); 127.0.0.1 under a local Ray."""
        import ray

        ip = ray.util.get_node_ip_address()
        with socket.socket() as s:
            s.bind((ip, 0))
            return ip, s.getsockname()[1]

    def where(self) -> dict:
        from rlkit.distributed.orchestration import where_am_i

        return where_am_i()


class PolicyRankError(RuntimeError):
    """A policy rank died or failed; the run stops (the last complete checkpoint is untouched)."""


class PolicyGroup:
    """`trainer.num_ranks` policy rank actors. `make(rank)` returns a new `PolicyRank` actor handle.
    `where` names the last complete checkpoint for error messages (a callable, read when a rank fails)."""

    def __init__(self, make: Callable[[int], object], num_ranks: int = 1, where: Callable[[], str] = lambda: "",
                 timeout_s: float = 600.0, strategy: str = "replicate", call_timeout_s: float = 0.0):
        self.where = where
        self.strategy = strategy
        self.call_timeout_s = call_timeout_s  # trainer.timeout_s: a call to the ranks longer than this = hung (0: none)
        self.ranks = [make(r) for r in range(max(1, num_ranks))]
        self._rendezvous = None
        if len(self.ranks) > 1:
            addr, port = self._get([self.ranks[0].rendezvous_address.remote()])[0]
            token = uuid.uuid4().hex[:12]
            self._rendezvous = rendezvous_file(port, len(self.ranks), token)
            self._get([a.join_group.remote(addr, port, r, len(self.ranks), "", timeout_s, token)
                       for r, a in enumerate(self.ranks)])

    @property
    def sharded(self) -> bool:
        return self.strategy == "fsdp2" and len(self.ranks) > 1

    def _on_leader(self, method: str, *args) -> list:
        """Refs of `method(*args)` on rank 0, the leader (weights for the sync, scoring for rewards), first;
        sharded (fsdp2), on every rank with the same arguments, since every forward is a collective."""
        return [getattr(a, method).remote(*args) for a in (self.ranks if self.sharded else self.ranks[:1])]

    def compute_logprobs(self, items) -> list:
        """Rank 0's completion logprobs of `items` (RLPR's policy access, rlkit.run.build.PolicyLogprobs)."""
        return self._get(self._on_leader("compute_logprobs", items))[0]

    def reference_kl(self, items) -> list:
        """Rank 0's per-sequence k1 KL to the reference (algorithm.kl_in_reward)."""
        return self._get(self._on_leader("reference_kl", items))[0]

    def train_step(self, items) -> dict:
        return self._get([a.train_step.remote(items) for a in self.ranks])[0]

    def train_part(self, items) -> list:
        """Every rank starts accumulating one part of a streamed step (rlkit/policy/streaming.py); returns the calls'
        refs, waited for (and their failures raised) by `train_finish`, so the driver goes on generating."""
        return [a.train_part.remote(items) for a in self.ranks]

    def train_finish(self, pending: list) -> dict:
        """The optimizer step of a streamed step, after the parts behind `pending` (from `train_part`)."""
        return self._get(list(pending) + [a.train_finish.remote() for a in self.ranks])[-len(self.ranks)]

    def where_placed(self) -> list[dict]:
        """Each rank's placement group, bundle and node (`orchestration.where_am_i`)."""
        return self._get([a.where.remote() for a in self.ranks])

    def state_dict(self):
        """An object ref to rank 0's weights (every rank holds the same; sharded, every rank gathers them)."""
        return self._on_leader("state_dict")[0]

    def save(self, directory: str) -> None:
        self._get([a.save.remote(directory) for a in (self.ranks if self.sharded else self.ranks[:1])])

    def load_trainer_state(self, directory: str) -> None:
        self._get([a.load_trainer_state.remote(directory) for a in self.ranks])

    def _get(self, refs: list) -> list:
        """Results of `refs` (one per rank, in rank order, possibly several rounds of them; a leader call is
        one ref: rank 0); the first failure kills every rank and raises."""
        import ray

        index = {r: i % len(self.ranks) for i, r in enumerate(refs)}  # ref -> rank
        pending = list(refs)
        deadline = time.monotonic() + self.call_timeout_s if self.call_timeout_s else None
        while pending:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, pending = ray.wait(pending, num_returns=1, timeout=left)
            if not done:  # past trainer.timeout_s: a rank is stuck (a deadlock, a stalled device, a lost peer)
                hung = sorted({index[r] for r in pending})
                self.close()
                raise PolicyRankError(
                    f"policy rank(s) {hung} hung: no result within {self.call_timeout_s:g} s (config key "
                    f"'trainer.timeout_s'); every rank was stopped. Last complete checkpoint: "
                    f"{self._last()}")
            try:
                ray.get(done[0])
            except Exception as e:
                rank = index[done[0]]
                self.close()
                raise PolicyRankError(f"policy rank {rank} failed ({_last_line(e)}); the run stops. "
                                      f"Last complete checkpoint: {self._last()}") from e
        return ray.get(list(refs))

    def _last(self) -> str:
        """`where()` for an error message: a bare path gets the advice to --resume; a sentence (e.g. the
        checkpoint this run started from, which --resume would load again) is its own advice."""
        last = self.where() or "none yet"
        return last if " " in last else f"{last} (continue with --resume)"

    def close(self) -> None:
        import ray

        for a in self.ranks:
            try:
                ray.kill(a)
            except Exception:
                pass
        if self._rendezvous:  # a local group's rendezvous file (none on a cluster's TCP rendezvous)
            pathlib.Path(self._rendezvous).unlink(missing_ok=True)


def _last_line(e: BaseException) -> str:
    """The informative line of a Ray error, with its type: the remote exception's own line (the last
    "SomeError: ..." line) and the detail lines a multi-line message puts under it (pydantic's field and reason,
    not its link), else the last non-empty line."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    heads = [i for i, line in enumerate(lines) if re.match(r"^[\w.]*(Error|Exception)\w*: ", line)]
    if not heads:
        return f"{type(e).__name__}: {lines[-1] if lines else ''}"
    i = heads[-1]
    detail = [line for line in lines[i + 1:i + 3] if not line.startswith("For further information")]
    return f"{type(e).__name__}: {'; '.join([lines[i], *detail])}"
