"""Checkpoints: `output_dir/checkpoints/step_<N>/`, written aside and renamed, so a crash never leaves a
half-written checkpoint under a final name, and never touches the previous complete one.

A checkpoint folder holds the model and processor (`from_pretrained` loads it), `trainer_state.pt`
(optimizer, RNG; written by the policy worker) and `run_state.json` (step, data position, driver RNG,
reward-side state such as EMAs). `latest(dir)` returns the newest complete one.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil

RUN_STATE = "run_state.json"
COMPLETE = "COMPLETE"


def checkpoints_dir(output_dir: str | os.PathLike) -> pathlib.Path:
    return pathlib.Path(output_dir) / "checkpoints"


def staging_dir(output_dir, step: int) -> pathlib.Path:
    d = checkpoints_dir(output_dir) / f".step_{step}.tmp"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    return d


def finalize(output_dir, step: int, staging: pathlib.Path, run_state: dict, keep: int = 0) -> pathlib.Path:
    """Write run_state.json + the COMPLETE marker into `staging`, rename it to step_<step>, prune old ones."""
    (staging / RUN_STATE).write_text(json.dumps(run_state, indent=1))
    (staging / COMPLETE).write_text("")
    final = checkpoints_dir(output_dir) / f"step_{step}"
    if final.exists():  # re-running a step after resume: replace atomically-ish (old kept until the rename)
        old = final.with_name(final.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        os.replace(staging, final)
        shutil.rmtree(old)
    else:
        os.replace(staging, final)
    if keep > 0:
        for d in complete_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(d, ignore_errors=True)
    return final


def complete_checkpoints(output_dir) -> list[pathlib.Path]:
    root = checkpoints_dir(output_dir)
    if not root.exists():
        return []
    found = [d for d in root.iterdir() if d.is_dir() and d.name.startswith("step_") and (d / COMPLETE).exists()]
    return sorted(found, key=lambda d: int(d.name.split("_")[1]))


def latest(output_dir) -> pathlib.Path | None:
    found = complete_checkpoints(output_dir)
    return found[-1] if found else None


def read_run_state(ckpt: pathlib.Path) -> dict:
    return json.loads((ckpt / RUN_STATE).read_text())
