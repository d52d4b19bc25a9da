"""The machinery of benchmarks/faults.py: `rlkit grpo` runs in subprocesses that can be killed part by part,
snapshots of a run directory and the check that nothing in one was lost, and how a run ended.

Nothing here knows a particular fault; the rows in faults.py combine these pieces.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
# the environment every test and benchmark here runs under (2 shared cores, offline)
ENV = {"OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled",
       "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
       "PYTHONHASHSEED": "0"}
LOGS = ("metrics.jsonl", "samples.jsonl")
# a run's processes must be gone this long after its driver ended: Ray's dashboard and runtime-env agents poll
# for their raylet and outlive a SIGKILLed driver by ~65 s (measured here)
GRACE_S = 120.0


class RowFailed(AssertionError):
    """A row's check failed (data lost, an outcome other than the expected one, a run that hung)."""


def check(cond: bool, what: str) -> None:
    if not cond:
        raise RowFailed(what)


# ---- runs -------------------------------------------------------------------------------------------------

class Run:
    """One `rlkit grpo` process in a session of its own (so every process it starts can be found and, at the
    end, removed), its console output in `log`."""

    def __init__(self, out: pathlib.Path, args: list[str], log: pathlib.Path, resume: bool = False,
                 preexec=None):
        self.out, self.log = out, log
        env = {**os.environ, **{k: v for k, v in ENV.items() if k not in os.environ}, "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, "-m", "rlkit.cli", "grpo", f"output_dir={out}", *args] + (["--resume"] if resume else [])
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log_f = open(log, "wb")
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, stdout=self._log_f,
                                     stderr=subprocess.STDOUT, preexec_fn=preexec)
        self.pid = self.proc.pid
        self.seen: set[int] = set()  # every process of the run seen so far (Ray's included)
        self.ended_at: float | None = None
        self.gone_s: float | None = None

    def alive(self) -> bool:
        if self.proc.poll() is None:
            return True
        if self.ended_at is None:
            self.ended_at = time.monotonic()
        return False

    def wait(self, timeout: float) -> int | None:
        """The exit status, or None if the driver is still running after `timeout` s (a hung run)."""
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        self.alive()
        return rc

    def text(self) -> str:
        self._log_f.flush()
        return self.log.read_text(errors="replace")

    def processes(self) -> list[int]:
        """Live processes of this run: its session, and every descendant of the driver seen so far (Ray's
        workers may start sessions of their own)."""
        import psutil

        found = set(session_processes(self.pid))
        try:
            found |= {p.pid for p in psutil.Process(self.pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            pass
        self.seen |= found
        return sorted(p for p in found | self.seen if _alive(p))

    def actor_pid(self, name: str) -> int | None:
        """The process of the Ray actor class `name` (its title starts with `ray::<name>`, or `ray::Early<name>`:
        the same actor started early, rlkit/distributed/warm_start.py), None if none."""
        import psutil

        for pid in self.processes():
            try:
                cmd = psutil.Process(pid).cmdline()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if cmd and cmd[0].startswith((f"ray::{name}", f"ray::Early{name}")):
                return pid
        return None

    def kill_driver(self) -> None:
        """SIGKILL the driver process alone (an OOM kill or a crash of the driver); Ray's processes are left to
        notice. The run's processes are recorded first, to check later that none was left behind."""
        self.processes()
        os.kill(self.pid, signal.SIGKILL)
        self.proc.wait()
        self.alive()

    def leftovers(self, grace_s: float = GRACE_S) -> list[int]:
        """Processes of this run still alive `grace_s` s after the driver ended (polled); [] when none. Sets
        `gone_s`: seconds from the driver's end until the last of them was seen gone (None while some live)."""
        self.alive()
        end = (self.ended_at or time.monotonic()) + grace_s
        while True:
            left = self.processes()
            if not left:
                if self.gone_s is None:
                    self.gone_s = round(max(0.0, time.monotonic() - (self.ended_at or time.monotonic())), 1)
                return []
            if time.monotonic() >= end:
                return left
            time.sleep(0.5)

    def cleanup(self) -> None:
        """SIGKILL whatever of this run is still alive (the driver first)."""
        for pid in [self.pid, *self.processes()]:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self._log_f.close()


def describe(pids: list[int]) -> str:
    """'pid name' of each process, for a message."""
    import psutil

    names = []
    for pid in pids:
        try:
            names.append(f"{pid} {' '.join(psutil.Process(pid).cmdline())[:60]}")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            names.append(f"{pid} (gone)")
    return "; ".join(names)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is gone, only not reaped yet
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def session_processes(sid: int) -> list[int]:
    """Processes still alive in session `sid` (a run started with start_new_session=True and its children)."""
    out = []
    for d in pathlib.Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if os.getsid(int(d.name)) == sid:
                    out.append(int(d.name))
            except (ProcessLookupError, PermissionError):
                pass
    return out


def wait_until(cond, run: Run, timeout: float, what: str, poll: float = 0.005) -> None:
    """Poll `cond()` until true; fail the row if the run ends first or `timeout` s pass."""
    end = time.monotonic() + timeout
    while not cond():
        check(run.alive(), f"the run ended (exit {run.proc.returncode}) before {what}: {last_line(run.text())}")
        check(time.monotonic() < end, f"no {what} within {timeout:.0f} s")
        time.sleep(poll)


# ---- run directories ----------------------------------------------------------------------------------------

def ckpt_dir(out: pathlib.Path) -> pathlib.Path:
    return out / "checkpoints"


def complete_steps(out: pathlib.Path) -> list[int]:
    d = ckpt_dir(out)
    if not d.exists():
        return []
    return sorted(int(c.name.split("_")[1]) for c in d.iterdir()
                  if re.fullmatch(r"step_\d+", c.name) and (c / "COMPLETE").exists())


def logged_steps(out: pathlib.Path) -> list[int]:
    """Steps of metrics.jsonl's readable lines, in file order."""
    return [rec["step"] for rec in _records(out / "metrics.jsonl")]


def step_lines(out: pathlib.Path) -> dict[int, str]:
    """metrics.jsonl's whole lines by step (the last line of a step, if a step appears twice)."""
    p, found = out / "metrics.jsonl", {}
    if p.exists():
        for line in p.read_text(errors="replace").splitlines():
            if _whole(line):
                found[json.loads(line)["step"]] = line
    return found


def _records(path: pathlib.Path) -> list[dict]:
    out = []
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line torn by a kill: it was never written whole
                pass
    return out


def _sha(path: pathlib.Path) -> str:
    from rlkit.models.cache import sha256_file  # the manifest's own checksum

    return sha256_file(path)


def snapshot(out: pathlib.Path, skip: tuple[str, ...] = ()) -> dict:
    """What a run directory holds that must never be lost: every file of every complete checkpoint (by
    content) and every whole line of metrics.jsonl and samples.jsonl. `skip`: checkpoint names left out (a
    checkpoint the row damaged on purpose)."""
    files = {}
    for step in complete_steps(out):
        c = ckpt_dir(out) / f"step_{step}"
        if c.name in skip:
            continue
        for f in sorted(c.rglob("*")):
            if f.is_file():
                files[str(f.relative_to(out))] = _sha(f)
    lines = {}
    for name in LOGS:
        p = out / name
        if p.exists():
            lines[name] = [l for l in p.read_text(errors="replace").splitlines() if _whole(l)]
    return {"files": files, "lines": lines, "steps": complete_steps(out), "logged": logged_steps(out)}


def _whole(line: str) -> bool:
    try:
        json.loads(line)
        return True
    except json.JSONDecodeError:
        return False


def lost(before: dict, out: pathlib.Path) -> list[str]:
    """What of `before` (a snapshot) is nowhere in `out` now: checkpoint files (found by content anywhere
    under `out`: a file moved aside is kept, not lost) and log lines (in the log or any `<log>.*` file beside
    it, e.g. the `.orphaned-*` files of steps a resumed run redoes). Empty when nothing was lost."""
    here = {_sha(f) for f in out.rglob("*") if f.is_file()} if before["files"] else set()
    missing = [f"checkpoint file {rel}" for rel, sha in before["files"].items() if sha not in here]
    for name, lines in before["lines"].items():
        now = set()
        for p in out.glob(name + "*"):
            if p.is_file():
                now.update(p.read_text(errors="replace").splitlines())
        gone = [l for l in lines if l not in now]
        if gone:
            steps = sorted({json.loads(l).get("step") for l in gone}, key=str)
            missing.append(f"{len(gone)} line(s) of {name} (steps {steps})")
    return missing


def check_finished(out: pathlib.Path, max_steps: int) -> None:
    """A finished run: metrics.jsonl holds each step 1..max_steps once, in order; its newest complete
    checkpoint is step_<max_steps> and its weights load."""
    from safetensors import safe_open

    got = logged_steps(out)
    check(got == list(range(1, max_steps + 1)), f"metrics.jsonl holds steps {got}, not 1..{max_steps} once each")
    steps = complete_steps(out)
    check(bool(steps) and steps[-1] == max_steps, f"newest complete checkpoint is {steps[-1:]}, not {max_steps}")
    with safe_open(str(ckpt_dir(out) / f"step_{max_steps}" / "model.safetensors"), "pt") as f:
        check(len(list(f.keys())) > 0, "the final checkpoint's weights hold no tensor")


def last_metrics(out: pathlib.Path) -> dict:
    recs = _records(out / "metrics.jsonl")
    return recs[-1] if recs else {}


def all_metrics(out: pathlib.Path) -> list[dict]:
    return _records(out / "metrics.jsonl")


# ---- how a run ended ------------------------------------------------------------------------------------------

def _rlkit_errors() -> set[str]:
    """Names of the exception classes rlkit's packages define (an error the project raised on purpose)."""
    names = set()
    for pkg in ("rlkit", "rewards", "rollout", "preference"):
        for f in (ROOT / pkg).rglob("*.py"):
            names |= set(re.findall(r"^class (\w+)\(\w*(?:Error|Exception)\w*\)", f.read_text(), re.M))
    return names


RLKIT_ERRORS = _rlkit_errors()
_ERROR_LINE = re.compile(r"^(?:[\w.]+\.)?(\w+(?:Error|Exception|Interrupt)\w*)(?:\(\w+\))?: ")


def error_line(text: str) -> str:
    """The run's final error: its last 'rlkit: error: ...' line or the last 'SomeError: ...' line."""
    lines = [_strip(l) for l in text.splitlines()]
    for line in reversed(lines):
        if line.startswith("rlkit: error:") or _ERROR_LINE.match(line):
            return line
    return ""


def _strip(line: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", line).strip()


def last_line(text: str) -> str:
    lines = [_strip(l) for l in text.splitlines() if _strip(l)]
    return lines[-1][:300] if lines else ""


def outcome(rc: int | None, text: str) -> str:
    """survived (exit 0) | stopped cleanly (non-zero exit whose final error is one rlkit raises on purpose:
    'rlkit: error: ...', an rlkit exception class, or a message naming a config key) | crashed (any other
    error, or a signal) | hung (still running at the row's time limit)."""
    if rc is None:
        return "hung"
    if rc == 0:
        return "survived"
    if rc < 0:
        return f"crashed (signal {-rc})"
    if rc in (130, 143) and re.match(r"rlkit: \w+ (interrupted|stopped by SIGTERM); ", last_line(text)):
        return "stopped cleanly"  # Ctrl-C / SIGTERM: rlkit's one line after the run's clean-up (rlkit/cli.py)
    line = error_line(text)
    m = _ERROR_LINE.match(line)
    if line.startswith("rlkit: error:") or (m and m.group(1) in RLKIT_ERRORS) or "config key" in line:
        return "stopped cleanly"
    return "crashed"


def tracebacks(text: str) -> int:
    return text.count("Traceback (most recent call last)")


# ---- the table ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Row:
    name: str
    fault: str
    expected: str
    observed: str = ""
    resumed: str = "-"
    steps_lost: int | None = None
    data_lost: list = dataclasses.field(default_factory=list)
    time_s: float = 0.0
    result: str = ""
    detail: str = ""
    problems: list = dataclasses.field(default_factory=list)  # failed checks that let the row go on (reported)
    notes: dict = dataclasses.field(default_factory=dict)


def table(rows: list[Row]) -> str:
    head = "| row | fault | expected | observed | resumed | steps lost | data lost | time s | result |"
    out = [head, "| --- | --- | --- | --- | --- | ---: | --- | ---: | --- |"]
    for r in rows:
        lost_ = "none" if not r.data_lost else "; ".join(r.data_lost)
        steps = "-" if r.steps_lost is None else str(r.steps_lost)
        res = r.result if r.result == "PASS" else f"**FAIL**: {r.detail[:240]}"
        out.append(f"| {r.name} | {r.fault} | {r.expected} | {r.observed or '-'} | {r.resumed} | {steps} | {lost_} | "
                   f"{r.time_s:.0f} | {res} |")
    return "\n".join(out)
