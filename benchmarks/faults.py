"""The fault table: scripted faults against tiny `rlkit grpo` runs, each checked, printed as a table.

    python benchmarks/faults.py [--only ROW[,ROW...]] [--engine hf|vllm] [--out FILE] [--keep DIR]

Each row starts `rlkit grpo` (tiny text policy, generated arithmetic, 3 steps of 3 prompts x 4 samples, a
checkpoint every step, all kept) in a subprocess, injects one fault, lets the run end (or `--resume`s it), and
checks: how it ended (survived / stopped cleanly / hung / crashed), whether that is what the project promises
(issue 17 and docs/scaling.md "Staying power"), the steps whose work was lost (completed before the fault, not
in the checkpoint resumed from) and the data lost, which must be none: every file of a checkpoint that was
complete at the fault and every whole line of metrics.jsonl / samples.jsonl must still be in the run
directory (found by content, so what a run moves aside is kept, not lost), and the finished run must log each
step once. A failed check fails its row loudly (FAIL and the reason); the exit status is 1 if any row failed.

Rows (`--only` takes these names): driver-mid-step, driver-sigterm, driver-mid-checkpoint, rollout-worker,
policy-rank, reward-hangs-once, reward-hangs-always, damaged-checkpoint, full-disk. full-disk mounts a small
tmpfs as the run directory (needs root; otherwise it falls back to a file-size limit, RLIMIT_FSIZE, and says so).

Prints a Markdown table; writes JSON (default benchmarks/results/faults.json). The machine's load changes the
times, not the outcomes. `--engine vllm` runs the rollout engine rlkit uses by default (each run ~15 s longer to
start); the default `hf` engine is quicker to start and goes through the same actors, pool and restarts.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import pathlib
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from fault_tools import (GRACE_S, ROOT, Row, Run, RowFailed, all_metrics, check, check_finished, ckpt_dir,  # noqa: E402
                         complete_steps, describe, error_line, last_line, last_metrics, logged_steps, lost, outcome,
                         snapshot, step_lines, table, tracebacks, wait_until)

MAX_STEPS = 3
RUN_TIMEOUT_S = 420.0  # a run still going after this is hung (a 3-step run takes ~40 s on 2 quiet cores)
BASE = {"data.source": "arithmetic", "max_steps": str(MAX_STEPS), "rollout.n": "4", "rollout.max_tokens": "8",
        "trainer.prompts_per_step": "3", "trainer.lr": "1e-2", "logging.save_every": "1",
        "logging.keep_checkpoints": "0", "logging.progress": "false", "ray.num_cpus": "2",
        "rewards": "[{name: length, kwargs: {max_len: 14, cache: 14, unit: chars}}]"}
HANG = '''import os, time


def score(completions, marker, always=False, **kwargs):
    """Hangs (sleeps forever) on its first call, or on every call with always=True; else length <= 14."""
    if always or not os.path.exists(marker):
        open(marker, "a").close()
        time.sleep(10 ** 6)
    return [float(len(c) <= 14) for c in completions]


score.batched = True  # one call a step: one time-out a step, not one per sample
'''


class Ctx:
    """The harness's shared state: work folder, the tiny model every run starts from, the engine, live runs."""

    def __init__(self, work: pathlib.Path, engine: str):
        self.work, self.engine, self.runs = work, engine, []
        self.model = work / "model"
        self.shared: dict = {}  # between rows: "finished_run", a run directory a row left complete (reused)

    def for_row(self) -> "Ctx":
        """This context with a list of runs of its own (rows may run at once, --jobs)."""
        c = copy.copy(self)
        c.runs = []
        return c

    def args(self, **over) -> list[str]:
        a = {**BASE, "model.path": str(self.model), "rollout.engine": self.engine, **over}
        return [f"{k}={v}" for k, v in a.items()]

    def start(self, out: pathlib.Path, tag: str, resume: bool = False, preexec=None, **over) -> Run:
        run = Run(out, self.args(**over), self.work / "logs" / f"{out.name}-{tag}.log", resume, preexec)
        self.runs.append(run)
        return run

    def build_model(self) -> None:
        """The tiny text policy, built once (tokenizer trained on the arithmetic prompts) outside every run
        directory, so runs start quicker and full-disk's small disk holds only what the run writes."""
        if (self.model / "config.json").exists():
            return
        subprocess.run([sys.executable, "-m", "rlkit.cli", "build-tiny", "--kind", "text", "--out", str(self.model),
                        "--data", "arithmetic"], cwd=ROOT, check=True, capture_output=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})


def _finish(run: Run, what: str) -> int:
    rc = run.wait(RUN_TIMEOUT_S)
    check(rc is not None, f"{what} hung: still running after {RUN_TIMEOUT_S:.0f} s")
    return rc


def _resume(ctx: Ctx, row: Row, out: pathlib.Path, before: dict, final_step: int = MAX_STEPS,
            stopped: Run | None = None, **over) -> Run:
    """--resume `out` to the end: it must finish, log each step once, and lose nothing of `before`. `stopped`:
    the run that ended at the fault, checked for processes left behind once the resumed run is done (the
    check's 60 s then overlap the resume)."""
    from_step = before["steps"][-1] if before["steps"] else 0
    old = step_lines(out)
    run = ctx.start(out, "resume", resume=True, **over)
    rc = _finish(run, "the resumed run")
    obs = outcome(rc, run.text())
    row.resumed = f"no: {obs}"
    row.notes["resume_error"] = error_line(run.text()) if rc else ""
    row.notes["resume_tracebacks"] = tracebacks(run.text())
    if stopped is not None:
        _no_leftovers(row, stopped, "the stopped run")
    check(obs == "survived", f"--resume {obs}: {error_line(run.text()) or last_line(run.text())}")
    # where it resumed from, as observed: the first step whose metrics line is new (wall times differ) - 1
    new = step_lines(out)
    redone = min([s for s in new if old.get(s) != new[s]] or [max(old, default=0) + 1])
    row.resumed = f"yes, from step {redone - 1}"
    check(redone - 1 == from_step, f"--resume continued from step {redone - 1}, not from step {from_step} "
                                   "(the newest intact checkpoint)")
    row.data_lost = lost(before, out)
    check_finished(out, final_step)
    _no_leftovers(row, run, "the resumed run")
    return run


def _no_leftovers(row: Row, run: Run, what: str) -> None:
    """Every process of `run` gone within GRACE_S of its driver's end; if not, a problem of the row (it goes on).
    Notes how long the last one took (`gone_s`: Ray's processes of a SIGKILLed driver need a while)."""
    left = run.leftovers()
    row.notes.setdefault("processes_gone_s", {})[what] = run.gone_s
    if left:
        row.problems.append(f"{len(left)} process(es) of {what} alive {GRACE_S:.0f} s after its driver ended: "
                            f"{describe(left)}")


def _steps_lost(row: Row, before: dict) -> None:
    """Steps completed (logged) before the fault and not in the newest checkpoint: redone after --resume."""
    row.steps_lost = max(before["logged"] or [0]) - (before["steps"][-1] if before["steps"] else 0)


# ---- rows -------------------------------------------------------------------------------------------------

def driver_mid_step(ctx: Ctx, row: Row) -> None:
    out = ctx.work / row.name
    run = ctx.start(out, "killed")
    wait_until(lambda: (ckpt_dir(out) / "step_1" / "COMPLETE").exists(), run, RUN_TIMEOUT_S, "step_1 checkpoint")
    time.sleep(0.02)  # step 2 under way (a warm step takes ~0.2 s)
    run.kill_driver()
    row.observed = "killed (SIGKILL)"
    before = snapshot(out)
    row.notes.update(logged_at_kill=before["logged"], checkpoints_at_kill=before["steps"])
    check(before["steps"][-1] < MAX_STEPS, "the run finished before the kill")
    _steps_lost(row, before)
    _resume(ctx, row, out, before, stopped=run)
    ctx.shared["finished_run"] = out


def driver_sigterm(ctx: Ctx, row: Row) -> None:
    """SIGTERM to the driver in step 2 (a scheduler's stop): it must clean up, say where the run stands in one line
    (exit 143) and leave nothing behind; --resume continues from the checkpoint it named."""
    out = ctx.work / row.name
    run = ctx.start(out, "stopped")
    wait_until(lambda: (ckpt_dir(out) / "step_1" / "COMPLETE").exists(), run, RUN_TIMEOUT_S, "step_1 checkpoint")
    time.sleep(0.02)
    t_stop = time.monotonic()
    os.kill(run.pid, signal.SIGTERM)
    rc = _finish(run, "the run after SIGTERM")
    row.notes["stop_s"] = round(run.ended_at - t_stop, 1)
    row.observed = outcome(rc, run.text())
    row.notes.update(exit=rc, line=last_line(run.text()), tracebacks=tracebacks(run.text()))
    before = snapshot(out)
    check(row.observed == "stopped cleanly" and rc == 143, f"the run {row.observed} (exit {rc}): {last_line(run.text())}")
    check(f"newest checkpoint {ckpt_dir(out)}/step_{before['steps'][-1]};" in last_line(run.text()),
          f"the line does not name the newest checkpoint: {last_line(run.text())}")
    _steps_lost(row, before)
    _resume(ctx, row, out, before, stopped=run)


def driver_mid_checkpoint(ctx: Ctx, row: Row) -> None:
    """SIGSTOP the driver the moment a checkpoint's staging folder holds a file (so it cannot rename it into place),
    note what was written, SIGKILL it; a checkpoint renamed before the stop landed moves on to the next step."""
    out = ctx.work / row.name
    run = ctx.start(out, "killed")
    caught = None
    for step in range(2, MAX_STEPS + 1):
        staging, final = ckpt_dir(out) / f".step_{step}.tmp", ckpt_dir(out) / f"step_{step}"
        wait_until(lambda: final.exists() or _holds_files(staging), run, RUN_TIMEOUT_S, f"step {step}'s checkpoint")
        os.kill(run.pid, signal.SIGSTOP)
        if not final.exists():
            caught = step
            row.notes["staging_at_kill"] = sorted(p.name for p in staging.iterdir()) if staging.exists() else []
            break
        os.kill(run.pid, signal.SIGCONT)
    check(caught is not None, "every checkpoint was renamed into place before the driver could be stopped")
    run.kill_driver()
    row.observed = f"killed (SIGKILL) writing step_{caught}"
    before = snapshot(out)
    row.notes.update(logged_at_kill=before["logged"], checkpoints_at_kill=before["steps"])
    check(caught not in before["steps"], f"step_{caught} counts as complete although its writer was killed")
    _steps_lost(row, before)
    _resume(ctx, row, out, before, stopped=run)


def _holds_files(d: pathlib.Path) -> bool:
    try:
        return any(d.iterdir())
    except FileNotFoundError:  # not there yet, or just renamed
        return False


def rollout_worker(ctx: Ctx, row: Row) -> None:
    out = ctx.work / row.name
    run = ctx.start(out, "run")
    wait_until(lambda: logged_steps(out), run, RUN_TIMEOUT_S, "step 1 in metrics.jsonl")
    pid = run.actor_pid("EngineActor")
    check(pid is not None, "no engine actor process found")
    os.kill(pid, signal.SIGKILL)
    before = snapshot(out)
    rc = _finish(run, "the run")
    row.observed = outcome(rc, run.text())
    row.data_lost = lost(before, out)
    check(row.observed == "survived", f"the run {row.observed}: {error_line(run.text())}")
    check_finished(out, MAX_STEPS)
    restarts = last_metrics(out).get("rollout/worker_restarts")
    row.notes["worker_restarts"] = restarts
    check(restarts == 1, f"rollout/worker_restarts is {restarts}, not 1")
    row.steps_lost = 0
    _no_leftovers(row, run, "the run")


def policy_rank(ctx: Ctx, row: Row) -> None:
    out = ctx.work / row.name
    run = ctx.start(out, "killed")
    wait_until(lambda: (ckpt_dir(out) / "step_1" / "COMPLETE").exists(), run, RUN_TIMEOUT_S, "step_1 checkpoint")
    time.sleep(0.02)
    pid = run.actor_pid("PolicyRank")
    check(pid is not None, "no policy rank process found")
    t_kill = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    rc = _finish(run, "the run after its policy rank was killed")
    row.notes["stop_s"] = round(run.ended_at - t_kill, 1)
    row.observed = outcome(rc, run.text())
    row.notes.update(error=error_line(run.text()), tracebacks=tracebacks(run.text()))
    before = snapshot(out)
    check(row.observed in ("stopped cleanly", "survived"), f"the run {row.observed}: {error_line(run.text())}")
    if row.observed == "stopped cleanly":
        err = error_line(run.text())
        check("rank 0" in err and f"step_{before['steps'][-1]}" in err,
              f"the message names neither the rank nor the last checkpoint: {err}")
        _steps_lost(row, before)
        _resume(ctx, row, out, before, stopped=run)
    else:  # the run went on (a recreated rank): nothing to resume
        row.steps_lost = 0
        check_finished(out, MAX_STEPS)
        _no_leftovers(row, run, "the run")


def _hang_reward(ctx: Ctx, row: Row, always: bool) -> dict:
    (ctx.work / "hang_reward.py").write_text(HANG)
    marker = ctx.work / f"{row.name}.marker"
    marker.unlink(missing_ok=True)
    kw = f"{{marker: '{marker}', always: {str(always).lower()}}}"
    return {"rewards": f"[{{path: '{ctx.work / 'hang_reward.py'}:score', kwargs: {kw}}}]",
            "reward_timeout_s": "3"}


def reward_hangs_once(ctx: Ctx, row: Row) -> None:
    out = ctx.work / row.name
    run = ctx.start(out, "run", **_hang_reward(ctx, row, always=False))
    rc = _finish(run, "the run")
    row.observed = outcome(rc, run.text())
    check(row.observed == "survived", f"the run {row.observed}: {error_line(run.text())}")
    check_finished(out, MAX_STEPS)
    retries = sum(m.get("reward/retries", 0) for m in all_metrics(out))
    row.notes["reward_retries"] = retries
    check(retries >= 1, "no reward retry counted (reward/retries): the time limit did not fire")
    row.steps_lost = 0
    _no_leftovers(row, run, "the run")


def reward_hangs_always(ctx: Ctx, row: Row) -> None:
    out = ctx.work / row.name
    run = ctx.start(out, "run", reward_retries="0", **_hang_reward(ctx, row, always=True))
    rc = _finish(run, "the run")
    row.observed = outcome(rc, run.text())
    row.notes.update(error=error_line(run.text()), tracebacks=tracebacks(run.text()), logged=logged_steps(out),
                     checkpoints=complete_steps(out),
                     reward_fail_frac=[m.get("reward/all_none_frac") for m in all_metrics(out)])
    before = snapshot(out)
    check(row.observed == "stopped cleanly",
          f"the run {row.observed} (exit {rc}) although the reward timed out on every sample of every step")
    check(logged_steps(out) == list(range(1, len(logged_steps(out)) + 1)), "metrics.jsonl steps out of order")
    row.steps_lost = 0
    row.data_lost = lost(before, out)
    _no_leftovers(row, run, "the run")


def damaged_checkpoint(ctx: Ctx, row: Row) -> None:
    """The newest checkpoint's weights file truncated to half (a disk error, a copy cut short), then --resume
    with one more step: it must fall back to the newest intact checkpoint."""
    out = ctx.work / row.name
    base = ctx.shared.get("finished_run")
    if base is not None:
        shutil.copytree(base, out)
        row.notes["base"] = f"copy of {base.name}"
    else:
        run = ctx.start(out, "base")
        check(_finish(run, "the base run") == 0, f"the base run failed: {error_line(run.text())}")
    weights = ckpt_dir(out) / f"step_{MAX_STEPS}" / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    row.observed = f"step_{MAX_STEPS}/model.safetensors truncated to half"
    before = snapshot(out, skip=(f"step_{MAX_STEPS}",))
    before["steps"] = [s for s in before["steps"] if s != MAX_STEPS]
    before["logged"] = [s for s in before["logged"] if s < MAX_STEPS]
    t0 = time.monotonic()
    try:
        run = _resume(ctx, row, out, before, final_step=MAX_STEPS + 1, max_steps=str(MAX_STEPS + 1))
    finally:
        row.notes["resume_s"] = round(time.monotonic() - t0, 1)
    if "model.safetensors" not in run.text():
        row.problems.append("--resume did not say which file of the damaged checkpoint is damaged")
    row.steps_lost = 1  # the damaged step is redone from the previous checkpoint


def full_disk(ctx: Ctx, row: Row) -> None:
    """The run directory on a small filesystem: the first checkpoint fits, the second does not (ENOSPC while
    writing it). Then the filesystem is enlarged (`mount -o remount,size=`) and the run resumed."""
    out = ctx.work / row.name
    out.mkdir(parents=True)
    weights = (ctx.model / "model.safetensors").stat().st_size
    ckpt_est = 3 * weights + (256 << 10)  # weights + AdamW's two moments (the same dtype) + small files
    size = int(1.5 * ckpt_est)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(out)],
                             capture_output=True, text=True)
    preexec = None
    if mounted.returncode == 0:
        row.notes["disk"] = f"tmpfs of {size / 2**20:.1f} MiB (a checkpoint ~{ckpt_est / 2**20:.1f} MiB)"
    else:  # no mount here: every file is limited to less than a checkpoint's optimizer state (EFBIG)
        limit = 2 * weights - (64 << 10)
        row.notes["disk"] = (f"fallback, mount refused ({mounted.stderr.strip()}): RLIMIT_FSIZE {limit} bytes per "
                             "file (EFBIG, not ENOSPC; no checkpoint fits)")

        def preexec():
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    try:
        run = ctx.start(out, "full", preexec=preexec)
        if mounted.returncode == 0:
            wait_until(lambda: (ckpt_dir(out) / "step_1" / "COMPLETE").exists(), run, RUN_TIMEOUT_S,
                       "step_1 checkpoint")
            first = snapshot(out)
        rc = _finish(run, "the run on a full disk")
        row.observed = outcome(rc, run.text())
        row.notes.update(error=error_line(run.text()), tracebacks=tracebacks(run.text()), logged=logged_steps(out),
                         checkpoints=complete_steps(out))
        before = snapshot(out)
        check(row.observed == "stopped cleanly", f"the run {row.observed} (exit {rc}): {error_line(run.text())}")
        if not re.search(r"no space left|ENOSPC|errno 28|disk (is )?full|file too large|EFBIG", row.notes["error"], re.I):
            row.problems.append(f"the error does not say the disk is full: {row.notes['error'][:200]}")
        _steps_lost(row, before)
        if mounted.returncode != 0:
            row.data_lost = lost(before, out)
            _no_leftovers(row, run, "the stopped run")
            return
        row.data_lost = lost(first, out)
        check(not row.data_lost, f"the full disk destroyed data written before it: {row.data_lost}")
        subprocess.run(["mount", "-o", "remount,size=64m", str(out)], check=True)
        _resume(ctx, row, out, before, stopped=run)
    finally:
        if mounted.returncode == 0:
            for r in ctx.runs:
                r.cleanup()
            kept = ctx.work / f"{row.name}-contents"
            shutil.copytree(out, kept, dirs_exist_ok=True)  # the run directory outlives the mount (--keep)
            if subprocess.run(["umount", str(out)], capture_output=True).returncode:
                subprocess.run(["umount", "-l", str(out)], capture_output=True)


ROWS = [
    ("driver-mid-step", driver_mid_step, "SIGKILL of the driver in step 2 (step_1 saved)",
     "--resume continues from the newest checkpoint; each step logged once; nothing lost"),
    ("driver-sigterm", driver_sigterm, "SIGTERM to the driver in step 2 (a scheduler's stop; step_1 saved)",
     "stopped cleanly: one line naming the newest checkpoint, exit 143, nothing left running; --resume completes"),
    ("driver-mid-checkpoint", driver_mid_checkpoint, "SIGKILL of the driver while a checkpoint is written",
     "the half-written checkpoint is ignored; --resume continues from the one before; nothing lost"),
    ("rollout-worker", rollout_worker, "SIGKILL of the rollout engine actor after step 1",
     "survived: the worker is recreated (rollout/worker_restarts 1); no step lost"),
    ("policy-rank", policy_rank, "SIGKILL of the policy rank actor in step 2",
     "stopped cleanly, naming the rank and the last checkpoint; --resume completes"),
    ("reward-hangs-once", reward_hangs_once, "a reward call that sleeps forever (once)",
     "survived: reward_timeout_s fires, the call is retried (reward/retries)"),
    ("reward-hangs-always", reward_hangs_always, "a reward that sleeps forever on every call",
     "stopped cleanly: a reward failing on every sample of 2 steps stops the run"),
    ("damaged-checkpoint", damaged_checkpoint, "the newest checkpoint's weights truncated, then --resume",
     "--resume falls back to the newest intact checkpoint and completes; nothing else lost"),
    ("full-disk", full_disk, "disk full while writing the 2nd checkpoint (small tmpfs)",
     "stopped cleanly; step_1 and logs intact; after space is freed --resume completes"),
]


def run_row(ctx: Ctx, name: str, fn, fault: str, expected: str) -> Row:
    ctx = ctx.for_row()
    row = Row(name, fault, expected)
    print(f"faults: {name} ...", flush=True)
    t0 = time.monotonic()
    try:
        fn(ctx, row)
        check(not row.data_lost, f"data lost: {row.data_lost}")
        check(not row.problems, "; ".join(row.problems))
        row.result = "PASS"
    except RowFailed as e:
        row.result, row.detail = "FAIL", "; ".join([str(e), *[p for p in row.problems if p != str(e)]])
    except Exception as e:  # the harness itself broke: still a failed row, never a silent one
        row.result, row.detail = "FAIL", f"harness error: {type(e).__name__}: {e}"
    finally:
        for run in ctx.runs:
            run.cleanup()
        ctx.runs = []
        row.time_s = round(time.monotonic() - t0, 1)
    print(f"faults: {name}: {row.result} in {row.time_s:.0f} s{': ' + row.detail if row.detail else ''}", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="", help="comma-separated row names (default: all): " +
                    ", ".join(n for n, *_ in ROWS))
    ap.add_argument("--engine", default="hf", choices=("hf", "vllm"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "faults.json"))
    ap.add_argument("--keep", default="", help="work in this folder and keep it (run directories, logs)")
    ap.add_argument("--jobs", type=int, default=1, help="rows run at once (each run wants ~2 cores)")
    args = ap.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    unknown = sorted(set(names) - {n for n, *_ in ROWS})
    if unknown:
        ap.error(f"unknown row(s) {unknown}; rows: {', '.join(n for n, *_ in ROWS)}")
    work = pathlib.Path(args.keep or tempfile.mkdtemp(prefix="rlkit-faults-"))
    if args.keep and work.exists() and any(work.iterdir()):
        ap.error(f"--keep {work}: folder not empty")
    work.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(work, args.engine)
    t0, load0 = time.monotonic(), os.getloadavg()
    ctx.build_model()
    todo = [r for r in ROWS if not names or r[0] in names]
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        rows = list(pool.map(lambda r: run_row(ctx, *r), todo))
    total = time.monotonic() - t0
    print()
    print(table(rows))
    print(f"\n{sum(r.result == 'PASS' for r in rows)}/{len(rows)} rows passed in {total:.0f} s "
          f"(engine {args.engine}, {args.jobs} at a time; load average {load0[0]:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    result = {"engine": args.engine, "jobs": args.jobs, "max_steps": MAX_STEPS, "total_s": round(total, 1), "cpus": os.cpu_count(),
              "load_average": [round(load0[0], 2), round(os.getloadavg()[0], 2)], "commit": _commit(),
              "rows": [dataclasses.asdict(r) for r in rows]}
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"wrote {out}" + (f"; run directories and logs in {work}" if args.keep else ""))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(r.result == "PASS" for r in rows) else 1


def _commit() -> str:
    r = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
