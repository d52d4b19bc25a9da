"""A run directory belongs to one run.

Every driver that writes an `output_dir` (grpo, dpo, rlaifv) calls `open_run` (or its parts) before it writes
anything there:

- a new run (no `--resume`) into a directory that holds another run is refused with one line naming the
  choices: `--resume`, a new `output_dir`, or `--overwrite`, which renames the old run to
  `<dir>.old-<YYYYmmdd-HHMMSS>` (never deletes it). A directory "holds a run" when it has any of `RUN_FILES`
  (an empty or missing directory, or one with other files only, is free);
- `--resume` needs the run's `config.yaml`; the new config may differ from it only in keys that change where,
  how fast, how verbosely or how long the run computes (each driver's `*_RESUMABLE` below, listed in one line),
  never what it computes: any other changed key is refused, naming it;
- `--resume` takes the newest intact checkpoint (`rlkit.run.checkpoint.resume_point`, which verifies the manifest
  and skips damaged ones, saying why); a run with no checkpoint at all (it stopped before its first save)
  restarts from step 0 in the same directory, saying so, with its old logs moved aside.
docs/scaling.md ("Run directories and resume") is the user-facing description.
"""
from __future__ import annotations

import pathlib
import time

import yaml

from rlkit.run import checkpoint as ckpt
from rlkit.config import ConfigError, to_dict

CONFIG = "config.yaml"
# what a driver writes into its output_dir; any of them present means the directory holds a run
RUN_FILES = (CONFIG, "metrics.jsonl", "samples.jsonl", "checkpoints", "base_model", "ref_logps.json", "tensorboard")
LOGS = ("metrics.jsonl", "samples.jsonl")

# Keys (a dotted key, or a section prefix ending in ".") that `--resume` lets change. They move the run (Ray,
# devices, memory), bound it in time, or change what is logged and saved; none changes the samples, the data
# order, the model, the update or the rewards. `max_steps` extends or ends a GRPO run (GRPO has no LR schedule).
COMMON_RESUMABLE = (
    "output_dir",  # the directory may have been moved
    "logging.",  # progress, tensorboard, save_every, keep_checkpoints, log_samples
    "trainer.num_cpus", "trainer.num_gpus", "trainer.device", "trainer.timeout_s",
    "trainer.micro_batch_size",  # gradient accumulation: the same update (memory only)
    "trainer.gradient_checkpointing",  # recomputed activations: the same update (memory only)
)
GRPO_RESUMABLE = COMMON_RESUMABLE + (
    "max_steps", "ray.", "reward_timeout_s", "reward_retries", "strict_rewards", "reward_fail_steps",
    "reward_fail_frac",
    "rollout.num_cpus", "rollout.num_gpus", "rollout.kv_cache_gib", "rollout.gpu_memory_utilization",
    "rollout.sleep", "rollout.max_retries", "rollout.timeout_s",
    "trainer.eval_every",  # held-out evaluations are greedy and leave the training RNG alone
)
# DPO: dpo.max_steps / dpo.epochs set the learning-rate schedule's length: resumable only under the constant
# schedule (which has no warm-up and no length; `dpo_resumable`)
DPO_RESUMABLE = COMMON_RESUMABLE + ("dpo.eval_every",)
DPO_LENGTH = ("dpo.max_steps", "dpo.epochs")
# RLAIF-V reruns continue (complete rounds are skipped): `rounds` may grow
RLAIFV_RESUMABLE = COMMON_RESUMABLE + (
    "rounds", "rollout.num_cpus", "rollout.num_gpus", "rollout.kv_cache_gib", "rollout.gpu_memory_utilization",
    "rollout.timeout_s", "rollout.max_retries", "dpo.eval_every",
)


def dpo_resumable(lr_schedule: str) -> tuple:
    return DPO_RESUMABLE + (DPO_LENGTH if lr_schedule == "constant" else ())


class RunDirError(ConfigError):
    """The run directory cannot be used as asked (printed as one line by the CLI, exit status 2)."""


def holds_run(out: str | pathlib.Path) -> list[str]:
    """The entries of `RUN_FILES` in `out` (empty: the directory is free for a new run)."""
    out = pathlib.Path(out)
    return [name for name in RUN_FILES if (out / name).exists()] if out.is_dir() else []


def move_aside(out: str | pathlib.Path) -> pathlib.Path:
    """Rename `out` to `<out>.old-<YYYYmmdd-HHMMSS>` (`-2`, `-3`, ... when taken); returns the new path."""
    return _rename_aside(pathlib.Path(out), f"old-{time.strftime('%Y%m%d-%H%M%S')}")


def _rename_aside(path: pathlib.Path, tag: str) -> pathlib.Path:
    """Rename `path` to `<name>.<tag>` (`-2`, `-3`, ... when taken), never over anything; returns the new path."""
    target, n = path.with_name(f"{path.name}.{tag}"), 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.{tag}-{n}")
    path.rename(target)
    return target


def claim_new(out: str | pathlib.Path, overwrite: bool = False, log=print) -> pathlib.Path | None:
    """Make `out` free for a new run: refuse when it holds one, or (`overwrite`) move that one aside.
    Returns where the old run went, if anywhere."""
    out = pathlib.Path(out)
    found = holds_run(out)
    if not found:
        return None
    if not overwrite:
        raise RunDirError(f"output_dir {out} holds another run ({', '.join(found)}): continue it with --resume, "
                          f"choose a new output_dir, or pass --overwrite to move it to {out.name}.old-<time> "
                          "(nothing is deleted)")
    moved = move_aside(out)
    log(f"rlkit: --overwrite: the previous run in {out} was moved to {moved}")
    return moved


def flat(tree, prefix: str = "") -> dict:
    """{"trainer.lr": 1e-4, ...}: nested dicts flattened to dotted keys (lists stay whole)."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _allowed(key: str, allowed: tuple) -> bool:
    return any(key == a or (a.endswith(".") and key.startswith(a)) for a in allowed)


def config_changes(saved: dict, new_cfg, allowed: tuple) -> tuple[list[str], list[str]]:
    """(allowed, refused) changes between a run's saved config tree and `new_cfg`, each as "key (old -> new)".
    A key missing from the saved tree (a field added since) counts as its default."""
    norm = lambda tree: flat(yaml.safe_load(yaml.safe_dump(tree, sort_keys=False)) or {})  # tuples -> lists
    new = norm(to_dict(new_cfg))
    defaults = norm(to_dict(type(new_cfg)()))
    old = norm(saved)
    ok, bad = [], []
    for key in sorted(set(new) | set(old)):
        a, b = old.get(key, defaults.get(key)), new.get(key, defaults.get(key))
        if a != b:
            (ok if _allowed(key, allowed) else bad).append(f"{key} ({a!r} -> {b!r})")
    return ok, bad


def check_resume_config(out: str | pathlib.Path, cfg, allowed: tuple, log=print, flag: str = "--resume") -> None:
    """Refuse a resume whose config changed in a key outside `allowed` (naming them); print the allowed changes."""
    path = pathlib.Path(out) / CONFIG
    try:
        saved = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise RunDirError(f"{flag}: cannot read the run's saved config {path}: {e}") from e
    ok, bad = config_changes(saved, cfg, allowed)
    if bad:
        raise RunDirError(f"{flag}: config keys changed since the run in {out} started, and a resumed run cannot "
                          f"change them: {'; '.join(bad)}. Resume with the saved values ({path}), or start a new run "
                          "(a new output_dir, or --overwrite)")
    if ok:
        log(f"rlkit: {flag}: changed since the last start (allowed): {'; '.join(ok)}")


def open_run(cfg, *, resume: bool, overwrite: bool, allowed: tuple, log=print) -> pathlib.Path | None:
    """A driver's first touch of `cfg.output_dir`. New run: `claim_new`. Resume: the config check, then the
    newest intact checkpoint (None: the run restarts from step 0 here, its logs moved aside). Returns the
    checkpoint to resume from, or None."""
    out = pathlib.Path(cfg.output_dir)
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite exclude each other: continue the run, or move it aside")
    if not resume:
        claim_new(out, overwrite, log)
        return None
    if not (out / CONFIG).exists():
        found = holds_run(out)
        if found:
            raise RunDirError(f"--resume: output_dir {out} has {', '.join(found)} but no {CONFIG}, so there is no run "
                              "to resume; start a new run with --overwrite (moves these aside) or a new output_dir")
        what = "holds no run" if out.exists() else "does not exist"
        raise RunDirError(f"--resume: output_dir {out} {what}, so there is nothing to resume; check output_dir, "
                          "or start a new run without --resume")
    check_resume_config(out, cfg, allowed, log)
    last = ckpt.resume_point(out, log)
    if last is None:
        moved = [str(move_log_aside(out / name)) for name in LOGS if (out / name).exists()]
        log(f"rlkit: --resume: {out} has no intact checkpoint (none was saved yet, or every one is damaged): "
            "starting again from step 0 in the same directory"
            + (f"; its logs were moved to {', '.join(moved)}" if moved else ""))
    return last


def move_log_aside(path: pathlib.Path) -> pathlib.Path:
    return _rename_aside(path, f"orphaned-{int(time.time())}")


def resumable_keys(allowed: tuple) -> str:
    """The documented form of an allowed list (docs/scaling.md quotes GRPO's and DPO's)."""
    return ", ".join(f"`{a}*`" if a.endswith(".") else f"`{a}`" for a in allowed)
