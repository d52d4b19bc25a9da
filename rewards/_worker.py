"""The reward worker process: runs reward calls sent by `rewards.isolation.ProcessRunner` over two pipes.

Why a separate process: a hung or runaway reward call (a sympy comparison that never ends, a plug-in that
loops) can only be stopped from outside by killing the process that runs it; signal-based timeouts work in
the main thread only, so not in Ray actors' threads or TRL's callers. The parent kills this process on a
timeout and starts another; the worker holds no state worth keeping.

Protocol (pickled tuples over `multiprocessing.connection.Connection`):
  worker -> ("ready", pid) once imported and warmed up.
  parent -> ("call", ref, kwargs, prompts, completions, columns, per_sample)
  worker -> ("resolved",) once the callable is loaded, then ("item", i, value, error) per sample, or one
            ("batch", outcomes, error), outcomes one (value, error) per sample; ("fatal", error) when the
            callable cannot be loaded.
  parent -> ("stop",) or closing the pipe ends the worker.
Run as `python -m rewards._worker READ_FD WRITE_FD MEMORY_MB`.
"""
from __future__ import annotations

import os
import sys


def _die_with_parent() -> None:
    """Linux: get SIGKILL when the parent dies, so no worker outlives its trainer (even mid-computation)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - other systems: the worker still exits when its pipe closes
        pass


def _limit_memory(budget_mb: int) -> None:
    """Allow `budget_mb` more address space than now (soft limit): a runaway allocation raises MemoryError."""
    if budget_mb <= 0:
        return
    try:
        import resource

        with open("/proc/self/statm") as f:
            current = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        want = current + budget_mb * 1024 * 1024
        if hard != resource.RLIM_INFINITY:
            want = min(want, hard)
        resource.setrlimit(resource.RLIMIT_AS, (want, hard))
    except (OSError, ValueError, ImportError):
        pass


def resolve(ref: tuple):
    """The callable a ref names: ("import", module, qualname) or ("file", path, attr)."""
    kind, where, attr = ref
    if kind == "file":
        from rewards.registry import load_path

        return load_path(f"{where}:{attr}")
    if kind == "import":
        import importlib

        obj = importlib.import_module(where)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj
    raise ValueError(f"unknown reward ref {ref!r}")


def _warm_up() -> None:
    """Import the built-ins and run math-verify once, so the first timed call pays no import or grammar set-up."""
    import rewards  # noqa: F401 - registers the built-ins
    from rewards.math_equiv import math_verdict

    math_verdict(r"\boxed{\frac{1}{2}}", "0.5")


def main(argv: list[str]) -> int:
    from multiprocessing.connection import Connection

    inp = Connection(int(argv[1]), writable=False)
    out = Connection(int(argv[2]), readable=False)
    budget_mb = int(argv[3]) if len(argv) > 3 else 0
    os.dup2(2, 1)  # a reward's print() goes to stderr and cannot corrupt the protocol
    sys.stdout = sys.stderr
    _die_with_parent()
    _warm_up()
    from rewards.calling import batch, error_text, per_sample

    out.send(("ready", os.getpid()))
    cache: dict = {}
    while True:
        try:
            msg = inp.recv()
        except (EOFError, OSError):
            return 0
        except Exception as e:  # noqa: BLE001 - an unpicklable column: report, stay alive
            out.send(("fatal", "cannot unpickle the call in the worker: " + error_text(e)))
            continue
        if msg[0] == "stop":
            return 0
        _, ref, kwargs, prompts, completions, columns, one_by_one = msg
        try:
            if ref not in cache:
                cache[ref] = resolve(ref)
            fn = cache[ref]
        except Exception as e:  # noqa: BLE001
            out.send(("fatal", "cannot load the reward in the worker: " + error_text(e)))
            continue
        out.send(("resolved",))
        _limit_memory(budget_mb)  # after loading: a plug-in's imports are not the call's allocations
        if one_by_one:
            for i, value, error in per_sample(fn, prompts, completions, columns, kwargs):
                out.send(("item", i, value, error))
        else:
            values, error = batch(fn, prompts, completions, columns, kwargs)
            out.send(("batch", values, error))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
