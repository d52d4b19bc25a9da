"""Ray placement: start or join Ray, and put the policy worker and rollout engine in actors.

The only modules (with rlkit/distributed/pool.py and the drivers) that import Ray. Local runs bind every Ray service to
127.0.0.1 and turn off its dashboard and token auth (`init_ray`); `ray.address` joins an existing cluster
(`ray start --head` on the head node, docs/scaling.md).
Every actor gets one torch/OpenMP thread per reserved CPU (2-core machines are 10-30x slower otherwise).

Placement (`ray.placement`): by default Ray's scheduler puts each actor wherever its resources fit. With
"colocate", rollout worker i and policy rank i share one placement-group bundle holding both their resources
(one GPU split 0.5 + 0.5, say), so an engine and a rank always sit on the same device and node, as in verl's
and OpenRLHF's colocated mode; the engines can then free their memory while the rank trains (`rollout.sleep`).
With "separate", the rollout workers and the policy ranks get a placement group each, one bundle per actor:
two disjoint pools, each packed (or spread) by `ray.placement_strategy`. Bundles are reserved before any
actor starts, so a placement the cluster cannot hold fails at once, naming what was asked (`place`).
In every placement ("none" included), `place` first checks that the actors fit the cluster's nodes at all
(`check_capacity`, rlkit/distributed/resources.py): a local Ray fails within seconds; a cluster (`ray.address`) may still
grow, so it waits up to `ray.placement_timeout_s` after saying so. Actors still starting after a minute are
named with their resources and the cluster's free ones (`StartWatch`), so no wait on Ray is silent.
"""
from __future__ import annotations

import dataclasses
import os
import time

from rlkit.console import LOG_DIR_ENV, VERBOSE_ENV, stop_on_sigterm

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def actor_env(num_cpus: float, extra: dict | None = None) -> dict:
    threads = str(max(1, int(num_cpus)))
    env = {k: threads for k in THREAD_ENV}
    env.update({
        "TOKENIZERS_PARALLELISM": "false",
        "VLLM_ENABLE_V1_MULTIPROCESSING": os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "0"),
        "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
        "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"),
        "TRANSFORMERS_VERBOSITY": os.environ.get("TRANSFORMERS_VERBOSITY", "error"),
        "HF_HUB_DISABLE_PROGRESS_BARS": os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
    })
    if LOG_DIR_ENV in os.environ:  # the run's log folder; vLLM logs as usual there (rlkit/console.py)
        env.update({k: os.environ[k] for k in (LOG_DIR_ENV, VERBOSE_ENV)}, VLLM_CONFIGURE_LOGGING="1")
    env.update(extra or {})
    return env


def init_ray(address: str = "", num_cpus: int = 0, loopback: bool = True) -> None:
    """Join the cluster at `address`, or start a local Ray (`num_cpus`, 0: all cores) without a dashboard.

    `loopback` (local Ray only): every Ray service (GCS, raylet, object manager, workers, runtime-env agent)
    listens on 127.0.0.1 only. Ray 2.60 turns `_node_ip_address="127.0.0.1"` into the machine's address
    (`services.resolve_ip_for_localhost`) and its servers then listen on every interface; only its
    single-machine mode (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, read into `ray_constants.ENABLE_RAY_CLUSTER`
    when Ray is imported) uses the loopback address as the node address, so both are set here.
    tests/test_scale.py checks the listening sockets.
    """
    import ray

    from rlkit.console import adopt_library_loggers

    adopt_library_loggers()  # Ray's logger prints to the console on its own: into the run's log instead
    if ray.is_initialized():  # (started in a thread: the early start) SIGTERM is rlkit's from the main thread on,
        stop_on_sigterm()  # over the C++ handler Ray's core worker installed there, which aborted the exit (-6)
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_worker_niceness", "0")  # actors at the driver's priority (runtime_env.py)
    if address:
        address = join_address(address)  # an address nothing answers on fails here, in seconds, naming it
        try:
            ray.init(address=address, log_to_driver=True)
        except ConnectionError as e:  # something answers, but not a Ray cluster's GCS (after Ray's own ~20 s)
            from rlkit.distributed.resources import ResourceError

            raise ResourceError(f"config key 'ray.address': {str(e).splitlines()[0]}") from None
    else:
        if loopback:
            _single_machine_mode()
        ray.init(
            address="local",  # a new local instance even when another user's cluster runs on this machine
            num_cpus=num_cpus or os.cpu_count(),
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            log_to_driver=True,
            configure_logging=False,
            # no idle Python workers started in advance: rlkit's actors carry their own environment, so Ray
            # never hands them one, and on a small machine their start-up takes CPU from the actors' own
            _system_config={"prestart_worker_first_driver": False, "enable_worker_prestart": False},
        )
    stop_on_sigterm()  # ray.init (main thread) replaced it with `sys.exit`: SIGTERM stops a run as Ctrl-C does


def _single_machine_mode() -> None:
    """Ray keeps 127.0.0.1 as the node address instead of turning it into the machine's (see `init_ray`)."""
    from ray._private import ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # inherited by every Ray process started from here
    ray_constants.ENABLE_RAY_CLUSTER = False  # Ray may have been imported before the line above


def join_address(address: str, timeout_s: float = 5.0) -> str:
    """The host:port `ray.init(address=...)` will connect to, checked to answer within `timeout_s`.

    Ray turns a loopback host ("127.0.0.1", "localhost") into the machine's own address before it connects, and
    then retries a GCS that does not answer for minutes, its messages in the run's log only: a typo in
    `ray.address` looked like a hang. A cluster that listens on the loopback address alone (started with
    `ray start --head --node-ip-address=127.0.0.1`, or by another rlkit run) is joined there, in the single-machine
    mode a local rlkit Ray uses (`init_ray`). Anything else that does not answer raises `ResourceError`, one line
    naming the address."""
    import socket

    from ray._private import services

    from rlkit.distributed.resources import ResourceError

    try:
        given = services.get_ray_address_from_environment(address, None)  # "auto": the last `ray start`'s
        resolved = services.canonicalize_bootstrap_address_or_die(address)  # loopback host -> the machine's
    except (ConnectionError, ValueError) as e:  # "auto" with no cluster running, or a malformed address
        raise ResourceError(f"config key 'ray.address' ({address!r}): {e}".splitlines()[0]) from None
    host, _, port = resolved.rpartition(":")

    def answers(h: str) -> str | None:
        try:
            socket.create_connection((h, int(port)), timeout=timeout_s).close()
            return None
        except (OSError, ValueError) as e:
            return e.strerror or type(e).__name__

    why = answers(host)
    if why is None:
        return resolved
    given_host = (services.parse_address(given) or ("",))[0] if given and given != "auto" else ""
    if given_host and services.is_localhost(given_host) and answers("127.0.0.1") is None:
        _single_machine_mode()
        return f"127.0.0.1:{port}"
    raise ResourceError(f"config key 'ray.address' ({address!r}): no Ray cluster answers at {resolved} ({why} "
                        f"within {timeout_s:g} s). Start one there with `ray start --head --port={port}`, or leave "
                        "ray.address empty to start a local Ray")


PLACEMENTS = ("none", "colocate", "separate")


def bundles(placement: str, num_workers: int, num_ranks: int, rollout: dict, trainer: dict):
    """The placement groups to reserve and where each actor goes (pure: no Ray call).

    rollout / trainer: one actor's resources, e.g. {"CPU": 1, "GPU": 0.5}. Returns (groups, workers, ranks):
    groups is a list of bundle lists (one per placement group), workers[i] and ranks[j] are (group, bundle)
    indices. "none" reserves nothing (empty lists).

    >>> bundles("colocate", 2, 1, {"CPU": 1, "GPU": 0.5}, {"CPU": 2, "GPU": 0.5})
    ([[{'CPU': 3, 'GPU': 1.0}, {'CPU': 1, 'GPU': 0.5}]], [(0, 0), (0, 1)], [(0, 0)])
    >>> bundles("separate", 1, 2, {"CPU": 1}, {"CPU": 1})
    ([[{'CPU': 1}], [{'CPU': 1}, {'CPU': 1}]], [(0, 0)], [(1, 0), (1, 1)])
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, got {placement!r}")
    if placement == "none":
        return [], [], []
    if placement == "separate":
        return ([[_nonzero(rollout)] * num_workers, [_nonzero(trainer)] * num_ranks],
                [(0, i) for i in range(num_workers)], [(1, j) for j in range(num_ranks)])
    group = []
    for i in range(max(num_workers, num_ranks)):
        parts = ([rollout] if i < num_workers else []) + ([trainer] if i < num_ranks else [])
        group.append(_nonzero({k: sum(p.get(k, 0) for p in parts) for k in ("CPU", "GPU")}))
    return [group], [(0, i) for i in range(num_workers)], [(0, j) for j in range(num_ranks)]


def _nonzero(resources: dict) -> dict:
    return {k: v for k, v in resources.items() if v}


@dataclasses.dataclass
class Placement:
    """Reserved placement groups, and the (group, bundle) of each rollout worker and policy rank."""

    groups: list
    workers: list
    ranks: list

    def worker(self, i: int):
        return self._at(self.workers, i)

    def rank(self, j: int):
        return self._at(self.ranks, j)

    def _at(self, where: list, i: int):
        if not where:
            return None
        g, b = where[i]
        return self.groups[g], b

    def remove(self) -> None:
        from ray.util import remove_placement_group

        for pg in self.groups:
            try:
                remove_placement_group(pg)
            except Exception:
                pass


def place(placement: str, strategy: str, num_workers: int, num_ranks: int, rollout: dict, trainer: dict,
          timeout_s: float = 120.0, grow: bool = False) -> Placement:
    """Check that the actors fit the cluster (`check_capacity`, every placement, "none" included), then reserve
    the placement groups of `bundles(...)` and wait until Ray has placed every bundle; a placement the cluster
    cannot satisfy within `timeout_s` raises, naming the bundles and what the cluster has. `grow`: the cluster
    may still gain nodes (`ray.address`: an autoscaler), so a run that does not fit yet waits up to `timeout_s`."""
    import ray
    from ray.util import placement_group

    from rlkit.distributed.resources import ResourceError

    specs, workers, ranks = bundles(placement, num_workers, num_ranks, rollout, trainer)
    check_capacity(num_workers, num_ranks, rollout, trainer, specs, strategy, wait_s=timeout_s if grow else 0.0)
    groups = [placement_group(b, strategy=strategy, name=f"rlkit-{placement}-{k}") for k, b in enumerate(specs)]
    out = Placement(groups, workers, ranks)
    deadline = time.monotonic() + timeout_s
    for pg, spec in zip(groups, specs):
        try:
            ray.get(pg.ready(), timeout=max(0.1, deadline - time.monotonic()))
        except ray.exceptions.GetTimeoutError:
            out.remove()
            raise ResourceError(
                f"config key 'ray.placement' = {placement!r} (strategy {strategy}): Ray could not place the bundles "
                f"{spec} within {timeout_s:g} s (ray.placement_timeout_s); the cluster has "
                f"{ray.cluster_resources()}. Lower rollout/trainer num_cpus or num_gpus, or add nodes.") from None
    return out


def check_capacity(num_workers: int, num_ranks: int, rollout: dict, trainer: dict, groups: list | None = None,
                   strategy: str = "PACK", wait_s: float = 0.0, poll_s: float = 2.0) -> None:
    """ResourceError, one line naming what the run asks, what the cluster has and the keys to change, when the
    actors cannot fit the cluster's nodes (rlkit/distributed/resources.py). `wait_s` > 0 (a cluster that may grow): say so
    once, then wait that long for enough nodes before failing."""
    import ray

    from rlkit.distributed.resources import ResourceError, capacity_problem

    deadline, said = time.monotonic() + wait_s, False
    while True:
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        problem = capacity_problem(num_workers, num_ranks, rollout, trainer, nodes, groups, strategy)
        if problem is None:
            return
        if time.monotonic() >= deadline:
            waited = f" (waited {wait_s:g} s: ray.placement_timeout_s)" if wait_s else ""
            raise ResourceError(problem + waited)
        if not said:
            print(f"rlkit: {problem}; waiting up to {wait_s:g} s (ray.placement_timeout_s) for the cluster to grow",
                  flush=True)
            said = True
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))


def check_local_capacity(address: str, num_cpus: int, placement: str, strategy: str, num_workers: int,
                         num_ranks: int, rollout: dict, trainer: dict) -> None:
    """Before a local Ray starts (`address` ""): ResourceError when the actors need more CPUs than it will have
    (`num_cpus`, 0: this machine's). GPUs are left to `check_capacity` (Ray counts them when it starts). No-op
    for a cluster or a Ray already running in this process (its own resources count)."""
    import sys

    from rlkit.distributed.resources import ResourceError, capacity_problem

    ray = sys.modules.get("ray")
    if address or (ray is not None and ray.is_initialized()):
        return
    cpus = num_cpus or os.cpu_count() or 1
    groups = bundles(placement, num_workers, num_ranks, rollout, trainer)[0]
    problem = capacity_problem(num_workers, num_ranks, rollout, trainer, [{"CPU": cpus}], groups, strategy,
                               kinds=("CPU",), where=f"a local Ray (ray.num_cpus {num_cpus}"
                               f"{': this machine' if not num_cpus else ''}) has")
    if problem:
        raise ResourceError(problem)


class StartWatch:
    """Says what the driver is waiting for while Ray actors start: every actor `spawn` creates is watched until
    it is running (its `__ray_ready__` answers: placed and constructed); one still starting after `first_s`
    (then every `every_s`) gets a line naming the pending actors, their resources and what the cluster has free
    (an actor that does not fit what is free waits for resources, silently otherwise). A daemon thread; it
    ends when nothing is pending, or at `stop` (before Ray shuts down: `shutdown`, and at exit)."""

    first_s = 60.0
    every_s = 120.0
    poll_s = 1.0

    def __init__(self):
        import threading

        self._lock = threading.Lock()
        self._pending: dict = {}  # ready ref -> (what, resources, spawned at)
        self._thread = None
        self._stop = threading.Event()
        self._at_exit = False

    def add(self, actor, what: str, resources: dict) -> None:
        import threading

        ready = actor.__ray_ready__.remote()
        with self._lock:
            self._pending[ready] = (what, resources, time.monotonic())
            if self._thread is None or not self._thread.is_alive():
                if not self._at_exit:  # registered after ray.init's own hook, so it runs before Ray's shutdown
                    import atexit

                    atexit.register(self.stop)
                    self._at_exit = True
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="rlkit-start-watch", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        """End the watch and drop its object refs while Ray is still up. A thread inside `ray.wait`, or an object
        ref freed, after `ray.shutdown()` ends the whole process ("The core worker has already been shutdown ...
        The process will exit"): the silent exits of pytest in CI."""
        import threading

        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10 * self.poll_s)
        with self._lock:
            self._pending.clear()
            self._thread = None

    def _run(self) -> None:
        import ray

        last_said = -1e18
        while not self._stop.wait(self.poll_s):
            try:
                if not ray.is_initialized():
                    return
                with self._lock:
                    refs = list(self._pending)
                done, _ = ray.wait(refs, num_returns=len(refs), timeout=0) if refs else ([], [])
                now = time.monotonic()
                with self._lock:
                    for ref in done:  # running, or dead (its caller hears of that)
                        self._pending.pop(ref, None)
                    if not self._pending:
                        self._thread = None
                        return
                    pending = dict(self._pending)
                oldest = max(now - t0 for _, _, t0 in pending.values())
                if oldest >= self.first_s and now - last_said >= self.every_s:
                    last_said = now
                    print(self.message(pending, now), flush=True)
            except Exception:  # never let a notice kill the run (e.g. Ray shutting down)
                return

    @staticmethod
    def message(pending: dict, now: float) -> str:
        import ray

        from rlkit.distributed.resources import KINDS

        oldest = max(now - t0 for _, _, t0 in pending.values())
        names = ", ".join(f"{what} {{{', '.join(f'{k}: {res.get(k, 0):g}' for k in KINDS)}}}"
                          for what, res, _ in pending.values())
        free, total = ray.available_resources(), ray.cluster_resources()
        fmt = lambda r: "{" + ", ".join(f"{k}: {r.get(k, 0):g}" for k in KINDS) + "}"  # noqa: E731
        return (f"rlkit: still waiting after {oldest:.0f} s for {len(pending)} Ray actor(s) to start: {names}; the "
                f"cluster has {fmt(free)} free of {fmt(total)} (an actor that does not fit waits for resources: "
                "lower rollout/trainer num_cpus/num_gpus, or free or add nodes)")


START_WATCH = StartWatch()


def spawn(cls, *args, num_cpus: float = 1.0, num_gpus: float = 0.0, env: dict | None = None, bundle=None,
          **kwargs):
    """`cls(*args, **kwargs)` inside a Ray actor with `num_cpus` (and `num_gpus`) reserved and its thread env set.
    Ray makes only the reserved GPUs visible to the actor (CUDA_VISIBLE_DEVICES). `bundle`: (placement group,
    bundle index) to take those resources from (`Placement.worker(i)` / `.rank(j)`), None for anywhere."""
    import ray

    options, env = {}, dict(env or {})
    if bundle is not None:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
            placement_group=bundle[0], placement_group_bundle_index=bundle[1],
            placement_group_capture_child_tasks=True)  # e.g. vLLM's own workers stay in the bundle
        env["RLKIT_BUNDLE"] = str(bundle[1])  # Ray does not tell an actor its bundle index (`where_am_i`)
    runtime_env = {"env_vars": actor_env(num_cpus, {"RLKIT_ACTOR_NAME": cls.__name__, **env})}
    actor_cls = ray.remote(cls).options(
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        runtime_env=runtime_env,
        max_concurrency=1,
        **options,
    )
    actor = actor_cls.remote(*args, **kwargs)
    START_WATCH.add(actor, getattr(cls, "__name__", "actor"), {"CPU": num_cpus, "GPU": num_gpus})
    return actor


def wait_ready(actors: list, what: str) -> float:
    """Wait until every actor's constructor has finished (model loaded, vLLM started), saying what it waits for;
    returns the seconds since the run started (`rlkit.console.since_start`). A constructor that failed is not
    raised here: the first call to that actor raises it, where the pools handle it (restart, or stop naming
    the rank)."""
    import ray

    from rlkit.console import duration, say, since_start

    t0 = time.perf_counter()
    say(f"starting {what} ...")
    refs = [a.__ray_ready__.remote() for a in actors]
    ray.wait(refs, num_returns=len(refs), fetch_local=False)
    dt = since_start(t0)
    say(f"{what} ready; {duration(dt)} since the start; training")
    return dt


def where_am_i() -> dict:
    """Inside an actor: its placement group id as Ray reports it (hex; None outside one), the bundle index it was
    spawned into (None: any) and its node id."""
    import ray

    ctx = ray.get_runtime_context()
    bundle = os.environ.get("RLKIT_BUNDLE")
    return {"placement_group": ctx.get_placement_group_id(), "bundle": None if bundle is None else int(bundle),
            "node": ctx.get_node_id()}


def shutdown() -> None:
    """Stop this process's Ray. The start watch's thread ends and drops its object refs first (`StartWatch.stop`:
    a thread inside `ray.wait` during the shutdown ended the process), then reference cycles are collected: Ray objects held only by a cycle (an object
    ref in a caught exception's traceback, `ray.remote`'s actor classes) and collected after `ray.shutdown()` can
    end the process ("The core worker has already been shutdown ... The process will exit"), as the two-rank test
    in tests/test_streaming.py did whenever the garbage collector's next run fell after the shutdown."""
    import gc

    import ray

    if ray.is_initialized():
        START_WATCH.stop()  # no thread of ours inside Ray, and none of its object refs left, past this point
        gc.collect()
        ray.shutdown()


class EngineActor:
    """A rollout engine (`rollout.make_engine(kind, ...)`) as the body of a Ray actor."""

    def __init__(self, kind: str, **kwargs):
        from rlkit.console import actor_setup

        actor_setup()  # this actor's output to the run's log folder, when it has one (rlkit/console.py)
        import torch

        from rollout import make_engine

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        self.engine = make_engine(kind, **kwargs)
        from rlkit.console import errors_to_console

        errors_to_console("vllm")  # vLLM replaced its logger's handlers when it was imported

    def generate(self, requests, sampling):
        return self.engine.generate(requests, sampling)

    def where(self) -> dict:
        return where_am_i()

    def update_weights(self, state_dict) -> None:
        self.engine.update_weights(state_dict)

    def sleep(self) -> bool:
        return self.engine.sleep()

    def close(self) -> None:
        self.engine.close()
