"""The run directory's logs: `metrics.jsonl` (one object a step), `samples.jsonl`, optional TensorBoard.

Append-only JSON lines, flushed after every step, so a crash loses at most the step in flight. On resume
from step N, lines of steps > N (written after that checkpoint by the run that died) are moved to
`<name>.orphaned-<time>` instead of being deleted, and the files continue from N.
"""
from __future__ import annotations

import json
import math
import pathlib
import time


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else (1e308 if v > 0 else -1e308)
    return v


class JsonlLog:
    def __init__(self, path: pathlib.Path, resume_step: int | None = None):
        self.path = path
        if resume_step is not None and path.exists():
            keep, drop = [], []
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a line torn by a crash
                    drop.append(line)
                    continue
                (keep if rec.get("step", 0) <= resume_step else drop).append(line)
            if drop:
                path.with_name(f"{path.name}.orphaned-{int(time.time())}").write_text("\n".join(drop) + "\n")
            path.write_text("".join(l + "\n" for l in keep))
        self._f = open(path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._f.write(json.dumps({k: _clean(v) for k, v in record.items()}, ensure_ascii=False) + "\n")

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._f.close()


class RunLog:
    """metrics.jsonl + samples.jsonl + TensorBoard (when enabled) for one run directory."""

    def __init__(self, out_dir: pathlib.Path, *, tensorboard: bool, log_samples: bool, resume_step: int | None):
        self.metrics = JsonlLog(out_dir / "metrics.jsonl", resume_step)
        self.samples = JsonlLog(out_dir / "samples.jsonl", resume_step) if log_samples else None
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise RuntimeError("logging.tensorboard needs the `tensorboard` package (pip install tensorboard)") from e
            self.tb = SummaryWriter(str(out_dir / "tensorboard"))

    def log_step(self, step: int, metrics: dict, samples: list[dict]) -> None:
        self.metrics.write({"step": step, **metrics})
        self.metrics.flush()
        if self.samples is not None:
            for s in samples:
                self.samples.write(s)
            self.samples.flush()
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(k, v, step)
            self.tb.flush()

    def close(self) -> None:
        self.metrics.close()
        if self.samples is not None:
            self.samples.close()
        if self.tb is not None:
            self.tb.close()
