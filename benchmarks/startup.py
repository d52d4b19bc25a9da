"""Start-up of a tiny-model GRPO run, phase by phase: from the command to the first rollout.

    python benchmarks/startup.py [--base /path/to/other/checkout] [--reps 3] [--out FILE.json] [key=value ...]

Each repetition runs `rlkit grpo --config examples/easy_vqa/grpo.yaml` (the README's first example: a tiny
vision-language model built from its config, vLLM rollout, one policy actor) in a fresh process and a fresh
output_dir, and stops it when the first step's update is done. The times are seconds since the command was
launched, taken in that process by wrapping the tree's own functions (so they measure any tree that has them):

    python      the interpreter runs the first line of this script
    imports     `rlkit.cli` and `rlkit.drivers.grpo` imported (torch, transformers, datasets, ...)
    prepare     `rlkit.drivers.grpo.prepare` returned (config checks, data, the tiny model built, rewards)
    ray_init    `rlkit.distributed.orchestration.init_ray` returned
    policy      the policy actor's constructor finished (Ray's `__ray_ready__`, asked right after the spawn; for
                an actor started early and bare, rlkit/distributed/warm_start.py, after its `construct` call)
    engine      the engine actor's constructor finished (vLLM started; likewise)
    rollout     the first step's rollout and rewards are back (`rlkit.drivers.grpo.collect` returned)
    update      the first step's optimizer step is done (`rlkit.drivers.grpo.Update.finish` returned)

and `cpu_s` (`cpu_s_update`), the CPU seconds the command's whole process tree (driver, Ray's processes, the
actors) used until the first rollout (update), with `cpu_by_process` splitting the first by process: on a
loaded machine the wall times above stretch with the load, the work much less. `driver_cpu` holds the driver
process's own CPU seconds (all its threads) at each phase.

With `--base`, the other tree (e.g. `git worktree add --detach DIR a7d7561`) runs in the same repetitions,
alternating which side goes first, so both see the same machine load; the load average (os.getloadavg) is
recorded before each run. Prints a table of medians and writes the JSON (all runs) to --out.
"""
from __future__ import annotations

import time

_T_PYTHON = time.time()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import pathlib  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402

PHASES = ("python", "imports", "prepare", "ray_init", "policy", "engine", "rollout", "update")
HERE = pathlib.Path(__file__).resolve().parents[1]


class _Stop(Exception):
    """Raised after the first rollout: the run's own clean-up closes the actors."""


def child(t0: float, trace: str, argv: list[str]) -> int:
    """In the measured process (cwd and PYTHONPATH: the tree under test)."""
    marks: dict[str, float] = {"python": _T_PYTHON - t0}
    lock = threading.Lock()

    driver_cpu: dict[str, float] = {}

    def mark(name: str) -> None:
        with lock:
            marks.setdefault(name, time.time() - t0)
            usage = resource.getrusage(resource.RUSAGE_SELF)  # this process (the driver) alone, all its threads
            driver_cpu.setdefault(name, usage.ru_utime + usage.ru_stime)

    import rlkit.cli as cli
    import rlkit.drivers.grpo as grpo
    import rlkit.distributed.orchestration as orch

    mark("imports")

    def wrap_end(module, name, phase, after=None):
        fn = getattr(module, name)

        def wrapped(*a, **k):
            out = fn(*a, **k)
            mark(phase)
            if after:
                after(out)
            return out

        setattr(module, name, wrapped)

    wrap_end(grpo, "prepare", "prepare")
    wrap_end(orch, "init_ray", "ray_init")

    def watched(spawn):
        def spawn_watched(cls, *a, **k):
            handle = spawn(cls, *a, **k)
            if getattr(cls, "construct", None) is not None and spawn is orch_spawn:
                return handle  # a bare actor (rlkit/distributed/warm_start.py): ready when its `construct` call is done
            phase = "engine" if "Engine" in cls.__name__ else "policy"

            def wait():  # an actor runs its calls in order: this answers after the constructor (or `construct`)
                import ray

                try:
                    ray.get(handle.__ray_ready__.remote())
                    mark(phase)
                except Exception:
                    pass

            threading.Thread(target=wait, daemon=True).start()
            return handle

        return spawn_watched

    orch_spawn = orch.spawn
    orch.spawn = watched(orch_spawn)
    try:
        import rlkit.distributed.warm_start as warm_start  # trees with the early start: the pools spawn through it
    except ImportError:
        warm_start = None
    if warm_start is not None:
        early_spawn = warm_start.EarlyStart.spawn
        warm_start.EarlyStart.spawn = lambda self, cls, *a, **k: watched(
            lambda c, *a2, **k2: early_spawn(self, c, *a2, **k2))(cls, *a, **k)

    def at_rollout(_):
        marks["cpu_s"] = tree_cpu_seconds(os.getpid())
        marks["cpu_by_process"] = tree_cpu_seconds(os.getpid(), by_process=True)
        if not hasattr(grpo, "Update"):  # a tree without the named update phase: stop at the rollout
            raise _Stop

    wrap_end(grpo, "collect", "rollout", after=at_rollout)
    if hasattr(grpo, "Update"):
        finish = grpo.Update.finish

        def finish_then_stop(self, *a, **k):
            finish(self, *a, **k)
            mark("update")
            marks["cpu_s_update"] = tree_cpu_seconds(os.getpid())
            raise _Stop

        grpo.Update.finish = finish_then_stop
    try:
        cli.main(["grpo", *argv])
    except _Stop:
        pass
    marks["driver_cpu"] = driver_cpu
    pathlib.Path(trace).write_text(json.dumps(marks))
    return 0


def process_label(pid: int) -> str:
    """A short name for a process of the tree: Ray's process title (e.g. "ray::EarlyEngineActor") or the program
    and its first argument that names a module or script."""
    try:
        argv = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [a.decode(errors="replace") for a in argv if a]
    if not words:
        return "?"
    if words[0].startswith("ray::"):
        return words[0].split(".")[0].split()[0]
    prog = os.path.basename(words[0])
    script = next((os.path.basename(w) for w in words[1:] if w.endswith(".py") or w.startswith("ray.")), "")
    return f"{prog} {script}".strip()


def tree_cpu_seconds(pid: int, by_process: bool = False):
    """CPU seconds (user + system) used so far by process `pid` and every live descendant (Ray's GCS, raylet,
    agents, the actors; children that exited and were reaped count through their parent's cutime/cstime):
    the start-up's work, which, unlike its wall time, hardly depends on what else the machine runs. With
    `by_process`, a dict {process label: CPU seconds} instead of the total (the driver is "driver")."""
    tick = os.sysconf("SC_CLK_TCK")
    stats = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(d)] = (int(fields[1]), sum(int(x) for x in fields[11:15]))  # ppid, utime+stime+cutime+cstime
    children: dict[int, list] = {}
    for p, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(p)
    total, todo, parts = 0, [pid], {}
    while todo:
        p = todo.pop()
        total += stats.get(p, (0, 0))[1]
        if by_process:
            label = "driver" if p == pid else process_label(p)
            parts[label] = round(parts.get(label, 0) + stats.get(p, (0, 0))[1] / tick, 2)
        todo += children.get(p, [])
    return parts if by_process else total / tick


def alternate(names: list[str], run_one, reps: int) -> dict[str, list]:
    """`run_one(name)` for each name in every repetition, the order reversed every other one (both sides see the
    same load); prints a line per run. Returns {name: [run, ...]}, each run {"marks": {...}, "load1": ...}."""
    runs: dict[str, list] = {n: [] for n in names}
    for rep in range(reps):
        for name in (names if rep % 2 == 0 else names[::-1]):
            r = run_one(name)
            runs[name].append(r)
            m = r["marks"]
            print(f"rep {rep} {name}: first rollout at {m.get('rollout', float('nan')):.1f} s, "
                  f"{m.get('cpu_s', float('nan')):.1f} CPU-s (load {r['load1']:.2f})", flush=True)
    return runs


def median_mark(runs: dict[str, list], name: str, key: str) -> float:
    vals = [r["marks"][key] for r in runs[name] if key in r["marks"]]
    return statistics.median(vals) if vals else float("nan")


def print_cpu_and_load(runs: dict[str, list], width: int) -> None:
    """Where the CPU seconds went, process by process (median over the runs that had the process), and the load."""
    labels = sorted({k for rs in runs.values() for r in rs for k in r["marks"].get("cpu_by_process", {})})
    for label in labels:
        vals = [[r["marks"]["cpu_by_process"][label] for r in rs if label in r["marks"].get("cpu_by_process", {})]
                for rs in runs.values()]
        print(f"  CPU s {label[:width - 8]}".ljust(width) + "".join(
            f"{statistics.median(v) if v else float('nan'):>10.1f}" for v in vals))
    loads = [r["load1"] for rs in runs.values() for r in rs]
    print(f"load average (1 min) before each run: {min(loads):.2f}-{max(loads):.2f} on {os.cpu_count()} cores")


def run_once(root: pathlib.Path, overrides: list[str], timeout_s: float, fresh_vllm_cache: bool = False) -> dict:
    out_dir = tempfile.mkdtemp(prefix="rlkit-startup-")
    trace = os.path.join(out_dir, "trace.json")
    env = dict(os.environ, PYTHONPATH=str(root), RLKIT_BENCH_T0=repr(time.time()))
    if fresh_vllm_cache:  # as on a machine's first run: vLLM has no cached model-class facts (modelinfos)
        env["VLLM_CACHE_ROOT"] = os.path.join(out_dir, "vllm-cache")
    load = os.getloadavg()[0]
    t0 = float(env["RLKIT_BENCH_T0"])
    cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "--child", "--t0", repr(t0), "--trace", trace,
           "--", "--config", "examples/easy_vqa/grpo.yaml", f"output_dir={out_dir}/run", "max_steps=1", *overrides]
    p = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout_s)
    wall = time.time() - t0
    if p.returncode != 0 or not os.path.exists(trace):
        raise RuntimeError(f"startup run in {root} failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    marks = json.loads(pathlib.Path(trace).read_text())
    return {"marks": marks, "load1": load, "wall_s": wall, "console_lines": len(p.stdout.splitlines())
            + len(p.stderr.replace("\r", "\n").splitlines())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="", help="the other source tree ('before'); omitted: this tree alone")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default="", help="JSON output (default: print only)")
    ap.add_argument("--timeout-s", type=float, default=600)
    ap.add_argument("--fresh-vllm-cache", action="store_true",
                    help="an empty VLLM_CACHE_ROOT for every run (a machine's first run)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--t0", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--trace", default="", help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help="dotted overrides for both sides, e.g. rollout.num_cpus=1")
    args = ap.parse_args()
    if args.child:
        return child(args.t0, args.trace, args.overrides)

    sides = {"this": HERE}
    if args.base:
        sides = {"base": pathlib.Path(args.base).resolve(), "this": HERE}
    runs = alternate(list(sides), lambda side: run_once(sides[side], args.overrides, args.timeout_s,
                                                        args.fresh_vllm_cache), args.reps)

    def med(side, phase):
        return median_mark(runs, side, phase)

    header = "phase (s since command)".ljust(26) + "".join(f"{s:>10}" for s in sides)
    print("\n" + header)
    for phase in PHASES:
        print(phase.ljust(26) + "".join(f"{med(s, phase):>10.1f}" for s in sides))
    print("CPU s to the first rollout".ljust(26) + "".join(f"{med(s, 'cpu_s'):>10.1f}" for s in sides))
    print("CPU s to the first update".ljust(26) + "".join(f"{med(s, 'cpu_s_update'):>10.1f}" for s in sides))
    print("console lines".ljust(26) + "".join(f"{statistics.median(r['console_lines'] for r in runs[s]):>10.0f}"
                                              for s in sides))
    print_cpu_and_load(runs, 42)
    result = {"phases": list(PHASES), "cpus": os.cpu_count(), "overrides": args.overrides,
              "fresh_vllm_cache": args.fresh_vllm_cache,
              "sides": {s: str(p) for s, p in sides.items()},
              "median": {s: {ph: med(s, ph) for ph in (*PHASES, "cpu_s", "cpu_s_update")} for s in sides}, "runs": runs}
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(result, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
