"""`timed(phases, name)`: a phase timer that adds its wall time into one dict (like verl's `marked_timer`)."""
from __future__ import annotations

import contextlib
import time


@contextlib.contextmanager
def timed(phases: dict, name: str):
    """`with timed(phases, "update"): ...` adds the block's wall time in seconds to `phases[name]`, also when
    the block raises; the same name twice in a step adds up."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        phases[name] = phases.get(name, 0.0) + time.perf_counter() - t0
