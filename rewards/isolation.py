"""Time limits that hold anywhere: reward calls in killable worker processes, or in watched threads.

Why not signals: `signal.alarm` works only in the main thread of the main interpreter, so it does nothing
for a scorer running in a Ray actor's thread, a DataLoader thread or TRL's async path. A hung call can only
be stopped from outside, so `ProcessRunner` keeps warm worker processes (`rewards._worker`) and, per sample,
waits at most `timeout_s` for the next result; on a timeout it kills the worker (SIGKILL), records the
timeout for that sample, starts a fresh worker and sends it the remaining samples. The cost is one pickled
message per sample (measured in benchmarks/rewards_math.py) and a worker start (~1 s) after each kill.

Rewards that hold model handles (`needs`) or whose inputs cannot be pickled run in-process under
`InlineRunner`: the same per-sample deadline, but a hung call can only be abandoned (its thread is told to
stop after the current sample and left behind), not killed.

Both return, per sample, (value, error): error is None on success, text starting with "timeout" on a timeout
(the other texts: `rewards.calling.check_values` and `error_text`).
"""
from __future__ import annotations

import os
import pickle
import queue
import subprocess
import sys
import threading
import warnings
import weakref
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection

from rewards.calling import batch, per_sample, slice_columns

Outcome = tuple  # (float | None, str | None)
_TIMEOUT, _DIED = object(), object()


def transient(error: str | None) -> bool:
    """Whether an outcome's error may go away when the call is made again: it ran out of time, or its worker
    process died (the texts this module writes). An exception raised by the reward itself is not transient."""
    return bool(error) and (error.startswith("timeout") or error.startswith("the worker process"))


class NotPicklable(Exception):
    """The call's inputs cannot be sent to a worker process (the scorer then runs the reward in-process)."""


def _env() -> dict:
    env = dict(os.environ)
    paths = [p or os.getcwd() for p in sys.path]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))  # the worker imports what this process can
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


class _Worker:
    def __init__(self, memory_mb: int):
        r_req, w_req = os.pipe()
        r_res, w_res = os.pipe()
        cmd = [sys.executable, "-m", "rewards._worker", str(r_req), str(w_res), str(memory_mb)]
        try:
            self.proc = subprocess.Popen(cmd, pass_fds=(r_req, w_res), stdin=subprocess.DEVNULL, env=_env())
        finally:
            os.close(r_req)
            os.close(w_res)
        self.tx = Connection(w_req, readable=False)
        self.rx = Connection(r_res, writable=False)
        self.ready = False

    def wait(self, timeout: float):
        """The next message, or _TIMEOUT / _DIED."""
        try:
            if not self.rx.poll(timeout):
                return _TIMEOUT
            return self.rx.recv()
        except (EOFError, OSError):
            return _DIED

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            pass
        for c in (self.tx, self.rx):
            try:
                c.close()
            except OSError:
                pass

    def died_text(self) -> str:
        try:
            rc = self.proc.wait(timeout=2)  # the pipe closes a moment before the exit status is ready
        except subprocess.TimeoutExpired:
            rc = None
        return f"the worker process died (exit code {rc})" if rc is not None else "the worker process stopped answering"


def _kill_all(slots: list) -> None:
    for w in slots:
        if w is not None:
            w.kill()


class ProcessRunner:
    """`workers` warm processes; each sample gets `timeout_s` (see the module docstring)."""

    def __init__(self, workers: int = 1, memory_mb: int = 2048, start_timeout_s: float = 120.0):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.memory_mb, self.start_timeout_s = memory_mb, start_timeout_s
        self._slots: list[_Worker | None] = [None] * workers
        self.kills = 0  # workers killed on a timeout (a statistic)
        self._lock = threading.Lock()  # one batch at a time: the workers' pipes carry one call each
        self._finalizer = weakref.finalize(self, _kill_all, self._slots)

    def start(self) -> None:
        """Start every worker now (they import and warm up while the caller does other work)."""
        for i, w in enumerate(self._slots):
            if w is None:
                self._slots[i] = _Worker(self.memory_mb)

    def close(self) -> None:
        _kill_all(self._slots)
        for i in range(len(self._slots)):
            self._slots[i] = None

    def _ready(self, slot: int) -> _Worker:
        w = self._slots[slot]
        if w is None:
            w = self._slots[slot] = _Worker(self.memory_mb)
        if not w.ready:
            msg = w.wait(self.start_timeout_s)
            if not (isinstance(msg, tuple) and msg[0] == "ready"):
                w.kill()
                self._slots[slot] = None
                raise RuntimeError(f"reward worker failed to start within {self.start_timeout_s:g}s "
                                   f"({w.died_text()}; see its stderr)")
            w.ready = True
        return w

    def _replace(self, slot: int) -> None:
        w = self._slots[slot]
        if w is not None:
            w.kill()
        self._slots[slot] = _Worker(self.memory_mb)  # starts now, warms up while we record the failure

    def run(self, ref: tuple, kwargs: dict, prompts: list, completions: list, columns: dict, one_by_one: bool,
            timeout_s: float) -> list[Outcome]:
        with self._lock:
            return self._run(ref, kwargs, prompts, completions, columns, one_by_one, timeout_s)

    def _run(self, ref, kwargs, prompts, completions, columns, one_by_one, timeout_s) -> list[Outcome]:
        n = len(completions)
        if not one_by_one:
            return self._batch(0, ref, kwargs, prompts, completions, columns, timeout_s)
        k = min(len(self._slots), n) or 1
        chunks = [list(range(n))[c * n // k:(c + 1) * n // k] for c in range(k)]
        args = (ref, kwargs, prompts, completions, columns, timeout_s)
        if k == 1:
            parts = [self._chunk(0, chunks[0], *args)]
        else:
            with ThreadPoolExecutor(k) as pool:
                parts = list(pool.map(lambda c: self._chunk(c, chunks[c], *args), range(k)))
        out: list[Outcome] = [(None, "not scored")] * n
        for part in parts:
            for i, outcome in part.items():
                out[i] = outcome
        return out

    def _send(self, w: _Worker, msg: tuple) -> bool:
        try:
            w.tx.send(msg)
            return True
        except (pickle.PicklingError, TypeError, AttributeError) as e:
            raise NotPicklable(f"{type(e).__name__}: {e}") from e
        except OSError:
            return False

    def _chunk(self, slot, idx, ref, kwargs, prompts, completions, columns, timeout_s) -> dict[int, Outcome]:
        n = len(completions)
        results: dict[int, Outcome] = {}
        pending, restarts = list(idx), 0
        while pending:
            w = self._ready(slot)
            sub = slice_columns(columns, pending, n)
            msg = ("call", ref, kwargs, [prompts[i] for i in pending], [completions[i] for i in pending], sub, True)
            if not self._send(w, msg):  # the idle worker had died: start another (twice at most)
                restarts += 1
                self._replace(slot)
                if restarts > 2:
                    return {**results, **{i: (None, w.died_text()) for i in pending}}
                continue
            got = w.wait(self.start_timeout_s)  # loading the reward (first call: imports) is not timed per sample
            if got is _TIMEOUT or got is _DIED or got[0] == "fatal":
                why = got[1] if isinstance(got, tuple) else (
                    f"timeout: loading the reward took over {self.start_timeout_s:g}s" if got is _TIMEOUT
                    else w.died_text() + " while loading the reward")
                if not isinstance(got, tuple):
                    self._replace(slot)
                return {**results, **{i: (None, why) for i in pending}}
            done = 0
            while done < len(pending):
                got = w.wait(timeout_s)
                if got is _TIMEOUT or got is _DIED:
                    why = (f"timeout: no result within {timeout_s:g}s (worker killed)" if got is _TIMEOUT
                           else w.died_text() + " while scoring this sample")
                    results[pending[done]] = (None, why)
                    self.kills += got is _TIMEOUT
                    self._replace(slot)
                    break
                _, j, value, error = got
                results[pending[j]] = (value, error)
                done = j + 1
            pending = pending[done + 1:] if done < len(pending) else []
        return results

    def _batch(self, slot, ref, kwargs, prompts, completions, columns, timeout_s) -> list[Outcome]:
        n = len(completions)
        w = self._ready(slot)
        if not self._send(w, ("call", ref, kwargs, prompts, completions, columns, False)):
            self._replace(slot)
            return [(None, w.died_text())] * n
        got = w.wait(self.start_timeout_s)
        if got is not _TIMEOUT and got is not _DIED and got[0] == "resolved":
            got = w.wait(timeout_s)
        if got is _TIMEOUT or got is _DIED:
            why = (f"timeout: the batched call gave no result within {timeout_s:g}s (worker killed)" if got is _TIMEOUT
                   else w.died_text())
            self.kills += got is _TIMEOUT
            self._replace(slot)
            return [(None, why)] * n
        if got[0] == "fatal":
            return [(None, got[1])] * n
        values, error = got[1], got[2]
        return [(None, error)] * n if error else [tuple(o) for o in values]


class InlineRunner:
    """In-process calls with the same per-sample deadline; a hung call is abandoned, not killed."""

    def __init__(self):
        self.abandoned = 0

    def _abandon(self, cancel: threading.Event) -> None:
        cancel.set()
        self.abandoned += 1
        warnings.warn(f"a reward call exceeded its time limit in-process and was abandoned ({self.abandoned} so far); "
                      "its thread finishes its current sample in the background", RuntimeWarning, stacklevel=3)

    def run(self, fn, kwargs: dict, prompts: list, completions: list, columns: dict, one_by_one: bool,
            timeout_s: float) -> list[Outcome]:
        n = len(completions)
        if not one_by_one:
            q: queue.Queue = queue.Queue()
            cancel = threading.Event()
            threading.Thread(target=lambda: q.put(batch(fn, prompts, completions, columns, kwargs)), daemon=True,
                             name="rlkit-reward").start()
            try:
                values, error = q.get(timeout=timeout_s)
            except queue.Empty:
                self._abandon(cancel)
                return [(None, f"timeout: the batched call gave no result within {timeout_s:g}s (abandoned)")] * n
            return [(None, error)] * n if error else [tuple(o) for o in values]
        results: list[Outcome] = [(None, "not scored")] * n
        start = 0
        while start < n:
            idx = list(range(start, n))
            q = queue.Queue()
            cancel = threading.Event()
            sub = (fn, [prompts[i] for i in idx], [completions[i] for i in idx], slice_columns(columns, idx, n), kwargs)

            def work(sub=sub, q=q, cancel=cancel):
                for j, value, error in per_sample(*sub, stop=cancel.is_set):
                    q.put((j, value, error))

            threading.Thread(target=work, daemon=True, name="rlkit-reward").start()
            done = 0
            while done < len(idx):
                try:
                    j, value, error = q.get(timeout=timeout_s)
                except queue.Empty:
                    results[idx[done]] = (None, f"timeout: no result within {timeout_s:g}s (abandoned in-process)")
                    self._abandon(cancel)
                    break
                results[idx[j]] = (value, error)
                done = j + 1
            start = idx[done] + 1 if done < len(idx) else n
        return results
