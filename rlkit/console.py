"""What a run prints, and where everything else goes.

The console shows rlkit's own lines, the progress bar, errors and the end-of-run summary. Third-party output
(vLLM, Ray, transformers, torch: INFO and WARNING log records, Python warnings, progress bars, C++ warnings) goes
to a log folder of its own in the run directory, `output_dir/logs/<command>-<time>-<pid>/`, one per invocation
(a resumed run gets a new one: nothing written is overwritten or mixed):

    driver.log               the driver's log records and Python warnings
    <ActorClass>-<pid>.log   everything a Ray actor writes to stdout/stderr (vLLM's start-up, warnings, ...)

In the actors the capture is at the file-descriptor level (`capture_process_output`, called first thing by the
actors' constructors: `rlkit.distributed.orchestration.EngineActor`, `rlkit.distributed.pool.PolicyRank`),
so output from C/C++ and from vLLM's own processes lands there too; records at ERROR or above still reach the
console (Ray forwards them to the driver), as do the actors' exceptions (raised by the driver's `ray.get`).
`logging.verbose` (or `rlkit ... --verbose`) shows everything on the console as before, and still writes the
files. The run's `RLKIT_LOG_DIR` / `RLKIT_VERBOSE` environment variables carry the choice to the actors
(`rlkit.distributed.orchestration.actor_env`).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import sys
import time

LOG_DIR_ENV = "RLKIT_LOG_DIR"
VERBOSE_ENV = "RLKIT_VERBOSE"
# loggers of the libraries whose INFO/WARNING records leave the console (they always reach the log file)
THIRD_PARTY = ("vllm", "ray", "transformers", "torch", "datasets", "huggingface_hub", "accelerate", "filelock",
               "urllib3", "httpx", "PIL", "py.warnings")
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_state: dict = {}


def verbose_of(cfg, flag: bool = False) -> bool:
    """--verbose, or the config's logging.verbose."""
    return bool(flag or getattr(getattr(cfg, "logging", None), "verbose", False))


def start_run_log(out_dir: str | os.PathLike, command: str, verbose: bool = False) -> pathlib.Path:
    """Open this invocation's log folder under `out_dir/logs/` and route third-party output there (module doc).
    Returns the folder. Calling it again in the same process (tests) moves the driver log to the new folder.

    In this process: every record of INFO and above goes to driver.log; the libraries' own console handlers
    (transformers, vLLM, Ray install them) are taken off and their records propagate to the root logger, whose
    console handler shows the libraries' ERROR records (verbose: INFO) and everyone else's WARNING records."""
    stop_run_log()
    log_dir = pathlib.Path(out_dir) / "logs" / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    created = [d for d in (log_dir, *log_dir.parents) if not d.exists()]  # removed again if nothing is logged
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # the first thing a run writes: an output_dir it cannot create or write is one line
        from rlkit.config import ConfigError

        raise ConfigError(f"config key 'output_dir': cannot write in {out_dir}: {e.strerror or e}") from None
    root = logging.getLogger()
    saved = {"created": created, "root_level": root.level, "loggers": {}, "env": {k: os.environ.get(k) for k in _ENV}}
    os.environ[LOG_DIR_ENV] = str(log_dir.resolve())
    os.environ[VERBOSE_ENV] = "1" if verbose else "0"
    if "vllm" not in sys.modules:  # vLLM's records propagate here instead of going to its own stdout handler
        os.environ["VLLM_CONFIGURE_LOGGING"] = "0"
    to_file = logging.FileHandler(log_dir / "driver.log", encoding="utf-8")
    to_file.setFormatter(logging.Formatter(_FORMAT))
    to_console = logging.StreamHandler(sys.stderr)
    to_console.addFilter(_ConsoleFilter(logging.INFO if verbose else logging.ERROR))
    to_console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(to_file)
    root.addHandler(to_console)
    saved["handlers"] = [to_file, to_console]
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    logging.captureWarnings(True)  # Python warnings -> the "py.warnings" logger -> the file
    _state.update(saved, log_dir=log_dir, t_start=time.perf_counter())
    adopt_library_loggers()
    if not verbose:
        _progress_bars_off()
    return log_dir


def adopt_library_loggers() -> None:
    """While a run log is open: take the THIRD_PARTY loggers' own console handlers off (kept, and put back by
    `stop_run_log`) and let their records propagate to the run's handlers. Again after importing a library
    that installs its handler on import (Ray: `rlkit.distributed.orchestration.init_ray`)."""
    if "log_dir" not in _state:
        return
    for name in THIRD_PARTY:
        lg = logging.getLogger(name)
        own = [h for h in lg.handlers if _on_console(h)]
        propagate, kept = _state["loggers"].get(name, (lg.propagate, []))
        _state["loggers"][name] = (propagate, kept + own)
        for h in own:
            lg.removeHandler(h)
        lg.propagate = True


_ENV = (LOG_DIR_ENV, VERBOSE_ENV, "VLLM_CONFIGURE_LOGGING", "HF_HUB_DISABLE_PROGRESS_BARS",
        "HF_DATASETS_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY")


class _ConsoleFilter(logging.Filter):
    """Third-party records (THIRD_PARTY loggers) from `level` up; everyone else's from WARNING up."""

    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        third = any(record.name == n or record.name.startswith(n + ".") for n in THIRD_PARTY)
        return record.levelno >= (self.level if third else logging.WARNING)


def stop_run_log() -> None:
    """Undo `start_run_log` (the end of a command; tests running several in one process)."""
    if not _state or "log_dir" not in _state:
        return
    root = logging.getLogger()
    for h in _state["handlers"]:
        root.removeHandler(h)
        h.close()
    root.setLevel(_state["root_level"])
    for name, (propagate, own) in _state["loggers"].items():
        lg = logging.getLogger(name)
        lg.propagate = propagate
        for h in own:
            lg.addHandler(h)
    logging.captureWarnings(False)
    for k, v in _state["env"].items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    log_dir, created = _state["log_dir"], _state["created"]
    _state.clear()
    files = list(log_dir.iterdir()) if log_dir.exists() else []
    if all(f.is_file() and f.stat().st_size == 0 for f in files):  # nothing logged (a config error, say)
        for f in files:
            f.unlink()
        with contextlib.suppress(OSError):  # the folders this run created, while empty (not output_dir's files)
            for d in [log_dir, log_dir.parent, *created]:
                if d.exists():
                    d.rmdir()


def _on_console(h: logging.Handler) -> bool:
    return (isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
            and getattr(h, "stream", None) in (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__))


def _progress_bars_off() -> None:
    """The libraries' own progress bars ("Writing model shards", "Map", ...), not rlkit's step bar. The switches
    of a library imported later are environment variables it reads on import (datasets: "Generating train split"
    for a local data file)."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
    for module, fn in (("transformers.utils.logging", "disable_progress_bar"),
                       ("huggingface_hub.utils", "disable_progress_bars"), ("datasets", "disable_progress_bars")):
        if module.split(".")[0] in sys.modules:
            try:
                getattr(__import__(module, fromlist=[fn]), fn)()
            except Exception:
                pass


# ---------------------------------------------------------------------------------------------- in the actors
class _ErrorsTo(logging.Handler):
    """Log records at ERROR or above, to the file descriptor the process had as stderr (Ray forwards it)."""

    def __init__(self, fd: int):
        super().__init__(logging.ERROR)
        self.stream = os.fdopen(fd, "w", buffering=1, encoding="utf-8", errors="replace")
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + "\n")
        except Exception:
            pass


def capture_process_output(log_dir: str, name: str, verbose: bool = False) -> pathlib.Path | None:
    """Send this process's stdout and stderr (file descriptors 1 and 2: Python, C++ and child processes alike) to
    `log_dir/<name>-<pid>.log`. Quiet: ERROR records still go to the old stderr; verbose: everything also does
    (through `tee`). Returns the file, or None when the folder cannot be written (output left as it was)."""
    try:
        pathlib.Path(log_dir).mkdir(parents=True, exist_ok=True)
        path = pathlib.Path(log_dir) / f"{name}-{os.getpid()}.log"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError:
        return None
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    old_err = os.dup(2)
    if verbose:
        import subprocess

        os.close(fd)
        tee = subprocess.Popen(["tee", "-a", str(path)], stdin=subprocess.PIPE, stdout=old_err,
                               stderr=subprocess.DEVNULL, close_fds=True, start_new_session=True)
        fd = tee.stdin.fileno()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    if not verbose:
        os.close(fd)
        _state["errors_to"] = _ErrorsTo(old_err)
        for name in ("", "vllm"):
            errors_to_console(name)
    to_file = logging.StreamHandler(sys.stderr)  # (now the file) what Python's last-resort handler would print
    to_file.setLevel(logging.WARNING)
    to_file.setFormatter(logging.Formatter(_FORMAT))
    logging.getLogger().addHandler(to_file)
    return path


def errors_to_console(logger_name: str) -> None:
    """In a captured actor: ERROR records of `logger_name` (one that does not propagate, like vLLM's) reach the
    console too. vLLM sets its logger's handlers when imported, so the engine actor calls this after."""
    h = _state.get("errors_to")
    lg = logging.getLogger(logger_name or None)
    if h is not None and h not in lg.handlers:
        lg.addHandler(h)


def actor_setup() -> None:
    """First thing in an rlkit actor's constructor: capture its output when the driver opened a run log (the
    actor's env has RLKIT_LOG_DIR, from `rlkit.distributed.orchestration.actor_env`). Once per process."""
    if _state.get("captured"):
        return
    _state["captured"] = True
    log_dir = os.environ.get(LOG_DIR_ENV)
    if log_dir:
        capture_process_output(log_dir, os.environ.get("RLKIT_ACTOR_NAME", "actor"),
                               os.environ.get(VERBOSE_ENV) == "1")


# ---------------------------------------------------------------------------------------------- the console
def say(msg: str) -> None:
    """One rlkit status line on the console (stderr, where the progress bar is)."""
    print(f"rlkit: {msg}", file=sys.stderr, flush=True)


def since_start(t0: float) -> float:
    """Seconds since `start_run_log` (since `t0`, a `time.perf_counter()`, without a run log)."""
    return time.perf_counter() - _state.get("t_start", t0)


def duration(s: float) -> str:
    """12.3 s, 4 min 05 s, 1 h 02 min."""
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m} min {sec:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def summary_lines(command: str, summary: dict, out_dir: str | os.PathLike, wall_s: float,
                  log_dir: pathlib.Path | None = None) -> list[str]:
    """The end-of-run summary of `rlkit grpo|dpo|rlaifv` as lines: what ran, the last scores, held-out scores,
    where the checkpoint, metrics and logs are, and the wall time."""
    out = pathlib.Path(out_dir)
    s = summary or {}
    lines = []
    if command == "rlaifv":
        lines.append(f"rlkit rlaifv: done: {s.get('round', 0)} round(s) in {duration(wall_s)}")
        rows = [("pairs kept (last round)", s.get("pairs/kept")),
                ("DPO reward accuracy", s.get("dpo/rewards/accuracies")), ("model", s.get("model"))]
    elif command == "dpo":
        lines.append(f"rlkit dpo: done: {s.get('step', 0)} steps in {duration(wall_s)}")
        rows = [("held-out loss", s.get("eval/loss")), ("held-out reward accuracy", s.get("eval/rewards/accuracies")),
                ("held-out reward margin", s.get("eval/rewards/margins")), ("checkpoint", s.get("checkpoint"))]
    else:
        startup = s.get("time/startup_s")
        lines.append(f"rlkit {command}: done: {s.get('step', 0)} steps in {duration(wall_s)}"
                     + (f" (start-up {duration(startup)})" if startup else ""))
        rows = [("reward (last step)", s.get("reward/mean"))]
        first = _step0_eval(out / "metrics.jsonl")
        for k in sorted(k for k in s if k.startswith("eval/") and k.endswith("/accuracy")):
            start = f"  (step 0: {_fmt(first[k])})" if k in first else ""
            rows.append((f"held-out {k[len('eval/'):].replace('/', ' ')}", f"{_fmt(s[k])}{start}"))
        rows.append(("checkpoint", s.get("checkpoint")))
    rows += [("metrics", out / "metrics.jsonl" if (out / "metrics.jsonl").exists() else None), ("logs", log_dir)]
    width = max(len(k) for k, v in rows if v is not None) if rows else 0
    lines += [f"  {k.ljust(width)}  {_fmt(v)}" for k, v in rows if v is not None]
    return lines


def _step0_eval(metrics: pathlib.Path) -> dict:
    """The held-out scores of the initial policy (the step-0 record of metrics.jsonl), {} when none."""
    try:
        with open(metrics, encoding="utf-8") as f:
            for line in f:
                rec = json.loads(line)
                if rec.get("step") == 0 and any(k.startswith("eval/") for k in rec):
                    return rec
    except (OSError, ValueError):
        pass
    return {}


_SIGTERM = {"received": False}  # set by `stop_on_sigterm`'s handler


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's stop, `kill`), raised in the main thread as Ctrl-C is (`stop_on_sigterm`), so a run
    stops the same way: its clean-up, then one line (exit status 143)."""


def stop_on_sigterm() -> None:
    """SIGTERM raises `Terminated` in the main thread (the CLI's start, and again after `ray.init`, which installs
    its own `sys.exit` handler; rlkit/distributed/orchestration.py). Elsewhere than the main thread: nothing."""
    import signal
    import threading

    def handler(signum, frame):
        _SIGTERM["received"] = True  # Ray turns an error raised in its C++ waits into KeyboardInterrupt
        raise Terminated

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def stop_words(e: BaseException) -> tuple[str, int]:
    """How an interrupt is said, and the exit status: Ctrl-C 130, SIGTERM 143 (128 + the signal)."""
    sigterm = isinstance(e, Terminated) or _SIGTERM["received"]
    return ("stopped by SIGTERM", 143) if sigterm else ("interrupted", 130)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM in a run, after the driver's clean-up: which command, its output_dir and log folder (None if
    none), and how (`stop_words`), for the CLI's one line on where the run stands (rlkit/cli.py; no traceback)."""

    def __init__(self, command: str, output_dir, log_dir, how: str = "interrupted", exit_code: int = 130):
        super().__init__(command)
        self.command, self.output_dir, self.log_dir = command, output_dir, log_dir
        self.how, self.exit_code = how, exit_code


@contextlib.contextmanager
def run_console(cfg, command: str, verbose: bool = False):
    """Around one `rlkit grpo|dpo|rlaifv`: the run's log folder (`start_run_log`) while it runs, then the
    summary (`summary_lines`, from what the body puts in the yielded dict under "summary"); when the body
    raises, one line saying where the logs are before the error goes on."""
    t0 = time.perf_counter()
    log_dir = start_run_log(cfg.output_dir, command, verbose_of(cfg, verbose))
    result: dict = {}
    try:
        yield result
    except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM: the driver's clean-up has run; the CLI says where it stands
        stop_run_log()
        raise Interrupted(command, cfg.output_dir, log_dir if log_dir.exists() else None, *stop_words(e)) from None
    except BaseException:
        stop_run_log()
        if log_dir.exists():
            say(f"{command} stopped; its logs are in {log_dir}")
        raise
    stop_run_log()
    print("\n".join(summary_lines(command, result.get("summary") or {}, cfg.output_dir, time.perf_counter() - t0,
                                  log_dir if log_dir.exists() else None)), flush=True)
