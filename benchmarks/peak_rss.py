"""Peak resident memory of a benchmark's driver and of rlkit's Ray actors among its descendants, by actor
(benchmarks/vs_trl.py)."""
from __future__ import annotations

import pathlib
import threading

ACTORS = {"PolicyWorker": "PolicyWorker", "PolicyRank": "PolicyWorker",  # rlkit's Ray actors, by process name
          "EngineActor": "EngineActor",  # (Ray's own agents are left out); policy ranks keep the old label
          "EarlyPolicyRank": "PolicyWorker", "EarlyEngineActor": "EngineActor"}  # started early (warm_start.py)


def _hwm_kib(pid: int) -> int:
    try:
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def actor_key(process_name: str) -> str:
    """The label of an rlkit actor's process, '' for any other. Ray renames an actor's process after the method
    it runs (ray::PolicyRank.train_step); policy ranks (rlkit.distributed.pool.PolicyRank) are labelled PolicyWorker."""
    if not process_name.startswith("ray::"):
        return ""
    return ACTORS.get(process_name.split()[0][len("ray::"):].split(".")[0], "")


class PeakRSS:
    """Peak resident memory (VmHWM) of this process and of its Ray actor descendants, polled every 0.5 s."""

    def __init__(self):
        import psutil

        self.psutil, self.me = psutil, psutil.Process()
        self.peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.poll()

    def _run(self):
        while not self._stop.wait(0.5):
            self.poll()

    def poll(self):
        self.peaks["driver"] = max(self.peaks.get("driver", 0), _hwm_kib(self.me.pid))
        try:
            children = self.me.children(recursive=True)
        except self.psutil.Error:
            return
        for c in children:
            try:
                name = " ".join(c.cmdline()[:1]) or c.name()
            except self.psutil.Error:
                continue
            key = actor_key(name)
            if key:
                self.peaks[key] = max(self.peaks.get(key, 0), _hwm_kib(c.pid))

    def mib(self) -> dict[str, float]:
        return {k: round(v / 1024, 1) for k, v in self.peaks.items()}
