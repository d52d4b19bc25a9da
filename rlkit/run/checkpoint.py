"""Checkpoints: `output_dir/checkpoints/step_<N>/`, written aside and renamed, so a crash never leaves a
half-written checkpoint under a final name, and never touches the previous complete one.

A checkpoint folder holds the model and processor (`from_pretrained` loads it), `trainer_state.pt`
(optimizer, RNG; written by the policy worker) and `run_state.json` (step, data position, driver RNG,
reward-side state such as EMAs), and `MANIFEST.json` (every other file with its size and sha256), written
last before the `COMPLETE` marker. `latest(dir)` returns the newest complete one whose files have their
manifest sizes (cheap); `resume_point(dir)` also checks every checksum, moves a damaged checkpoint aside to
`checkpoints/damaged.step_<N>.<time>` (never deleted), saying why, and falls back to the next one. A checkpoint
written before manifests existed (no `MANIFEST.json`) is used unverified, with a note.
"""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import shutil
import time

from rlkit.models.cache import sha256_file

RUN_STATE = "run_state.json"
COMPLETE = "COMPLETE"
MANIFEST = "MANIFEST.json"
_STEP = re.compile(r"step_(\d+)")


def checkpoints_dir(output_dir: str | os.PathLike) -> pathlib.Path:
    return pathlib.Path(output_dir) / "checkpoints"


def staging_dir(output_dir, step: int) -> pathlib.Path:
    d = checkpoints_dir(output_dir) / f".step_{step}.tmp"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    return d


def finalize(output_dir, step: int, staging: pathlib.Path, run_state: dict, keep: int = 0) -> pathlib.Path:
    """Write run_state.json, the manifest and the COMPLETE marker into `staging`, rename it to step_<step>,
    prune old ones (`prune`)."""
    (staging / RUN_STATE).write_text(json.dumps(run_state, indent=1))
    write_manifest(staging)
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
        prune(output_dir, keep)
    return final


def prune(output_dir, keep: int) -> None:
    """Delete the checkpoints older than the `keep` newest intact ones (by manifest sizes): a damaged checkpoint
    never counts as one of those kept, so the newest intact one is never deleted in its favour."""
    found = complete_checkpoints(output_dir)
    intact = [d for d in found if damage(d, hashes=False) is None]
    if len(intact) <= keep:
        return
    oldest_kept = step_of(intact[-keep])
    for d in found:
        if step_of(d) < oldest_kept:
            shutil.rmtree(d, ignore_errors=True)


def step_of(ckpt: pathlib.Path) -> int:
    return int(_STEP.fullmatch(ckpt.name).group(1))


def _sha256_all(paths: list[pathlib.Path]) -> list[str]:
    """sha256 of each file, several files at once (hashlib releases the GIL on large blocks)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1, max(1, len(paths)))) as pool:
        return list(pool.map(sha256_file, paths))


def write_manifest(folder: pathlib.Path) -> None:
    """`MANIFEST.json`: {"files": {relative path: {"size", "sha256"}}} of every file in `folder`."""
    paths = [f for f in sorted(folder.rglob("*")) if f.is_file() and f.relative_to(folder).as_posix() not in
             (MANIFEST, COMPLETE)]
    files = {f.relative_to(folder).as_posix(): {"size": f.stat().st_size, "sha256": digest}
             for f, digest in zip(paths, _sha256_all(paths))}
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"version": 1, "files": files}, indent=1))
    os.replace(tmp, folder / MANIFEST)


def damage(ckpt: pathlib.Path, hashes: bool = True) -> str | None:
    """Why `ckpt` cannot be trusted (a missing, resized or, with `hashes`, changed file; no COMPLETE marker; an
    unreadable manifest), or None when it is intact or has no manifest (see `verified`)."""
    if not (ckpt / COMPLETE).exists():
        return "no COMPLETE marker"
    if not (ckpt / MANIFEST).exists():
        return None
    try:
        files = json.loads((ckpt / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{MANIFEST} is unreadable ({e})"
    for rel, meta in files.items():
        f = ckpt / rel
        if not f.is_file():
            return f"{rel} is missing"
        size = f.stat().st_size
        if size != meta["size"]:
            return f"{rel} has {size} bytes, its manifest says {meta['size']}"
    if hashes:
        rels = list(files)
        for rel, digest in zip(rels, _sha256_all([ckpt / r for r in rels])):
            if digest != files[rel]["sha256"]:
                return f"{rel} does not match its sha256 in {MANIFEST}"
    return None


def verified(ckpt: pathlib.Path) -> bool:
    """Whether `ckpt` carries a manifest (checkpoints written before manifests existed do not)."""
    return (ckpt / MANIFEST).exists()


def resume_point(output_dir, log=print) -> pathlib.Path | None:
    """The newest intact checkpoint, every file checked against its manifest (sizes and sha256). A damaged one
    (or a step_N folder without COMPLETE) is moved to `checkpoints/damaged.step_N.<time>`, with one line saying
    why; one without a manifest is used with a note that it is unverified. None when there is none."""
    root = checkpoints_dir(output_dir)
    if not root.exists():
        return None
    found = sorted((d for d in root.iterdir() if d.is_dir() and _STEP.fullmatch(d.name)), key=step_of)
    for d in reversed(found):
        why = damage(d, hashes=True)
        if why is None:
            if not verified(d):
                log(f"rlkit: --resume: {d} was written without a {MANIFEST} (before rlkit checked checkpoints): "
                    "resuming from it unverified")
            return d
        aside = root / f"damaged.{d.name}.{time.strftime('%Y%m%d-%H%M%S')}"
        os.replace(d, aside)
        log(f"rlkit: --resume: skipped {d} ({why}); it was moved to {aside.name}, the run continues from the "
            "newest intact checkpoint")
    return None


def complete_checkpoints(output_dir) -> list[pathlib.Path]:
    root = checkpoints_dir(output_dir)
    if not root.exists():
        return []
    found = [d for d in root.iterdir() if d.is_dir() and _STEP.fullmatch(d.name) and (d / COMPLETE).exists()]
    return sorted(found, key=step_of)


def latest(output_dir) -> pathlib.Path | None:
    """The newest complete checkpoint whose files have their manifest sizes (no checksums: cheap)."""
    found = [d for d in complete_checkpoints(output_dir) if damage(d, hashes=False) is None]
    return found[-1] if found else None


def last_note(output_dir, started_from: str = "") -> str:
    """The newest checkpoint for an error message: its path; when it is the one this run started from, a sentence
    saying so (--resume would start there again: no advice that loops); "" when there is none."""
    last = latest(output_dir)
    if last is None:
        return ""
    if started_from and pathlib.Path(started_from).resolve() == last.resolve():
        return (f"{last}, the one this run started from: --resume would load it again, so fix the cause above "
                "first (or move it aside to resume from an earlier one)")
    return str(last)


def read_run_state(ckpt: pathlib.Path) -> dict:
    return json.loads((ckpt / RUN_STATE).read_text())


class DiskFullError(OSError):
    """A checkpoint could not be written because its disk is full (printed as one line by the CLI)."""


LOW_SPACE_BYTES = 16 * 2 ** 20  # under this much free space after a failed write, the disk counts as full


@contextlib.contextmanager
def naming_a_full_disk(output_dir, step: int):
    """Around writing checkpoint `step`: a write that fails on a full disk (torch reports ENOSPC as an opaque
    "unexpected pos" error, through the policy ranks as PolicyRankError) becomes one DiskFullError that says
    so, names the folder, and where a resume continues from. The half-written `.step_N.tmp` stays (never
    mistaken for a checkpoint: it has no COMPLETE marker) and is replaced by the next write of that step."""
    try:
        yield
    except Exception as e:
        root = checkpoints_dir(output_dir)
        free = shutil.disk_usage(root if root.exists() else output_dir).free
        if free >= LOW_SPACE_BYTES and getattr(e, "errno", None) != 28:  # 28: ENOSPC
            raise
        last = latest(output_dir)
        raise DiskFullError(
            f"writing checkpoint step_{step} in {root} failed: the disk is full ({free / 2 ** 20:.1f} MiB free); "
            f"free space (or move output_dir), then --resume continues from "
            f"{last if last is not None else 'step 0 (no checkpoint was written)'}") from e
