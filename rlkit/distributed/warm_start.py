"""Start-up: the GRPO command reaches its first rollout sooner and computes the same thing (issue #17, point 7;
measured in docs/performance.md, "Start-up").

- `EarlyStart`: once the config and the data have passed their checks (`grpo.prepare` calls `start`), Ray, the
  placement groups and the actors start in a thread while the driver builds (or copies) the model. The actors
  start *bare* (`EarlyEngineActor`, `EarlyPolicyRank`): their constructor only imports what the real one will
  need (vLLM, torch, transformers, the model's classes: most of an actor's start-up). `EarlyStart.spawn`, which the
  driver's pools call where they would call `orchestration.spawn`, hands the real constructor's arguments to a bare
  actor with the same resources, bundle and environment as its first call (`construct`). Ray runs an actor's calls
  in order, so every later call (`__ray_ready__` and `wait_ready` included) waits for it. Anything else (more actors
  than were started early, an actor a pool recreates after a failure) starts the usual way.
- Tiny models are built once and copied (rlkit/models/cache.py), so the build overlaps little.
- `warm`: the bare actors' imports run with Python's cyclic garbage collector paused, then everything imported is
  frozen out of its reach (`gc.freeze`, as vLLM does after its own start): the imports allocate millions of
  long-lived objects that every full collection would rescan (vLLM calls `gc.collect()` five times while starting).
  The pause covers naming the imports too (`engine_imports` imports vLLM's platform and model registry: most of
  vLLM), and the driver's processor load (`load_quietly`, its transformers imports; paused, not frozen).

Failures keep their shape: the checks that ran before Ray still run before it (`prepare`); a placement the cluster
cannot hold raises its one-line `ResourceError` from `EarlyStart.wait`; an actor that cannot start is named by
`StartWatch` as before. A bare engine whose `construct` fails exits, so the engine pool sees a dead worker and
recreates it the usual way (whose constructor then reports the error as before); a bare policy rank whose
`construct` failed answers every later call with that error (the policy group stops, naming the rank and it).
"""
from __future__ import annotations

import contextlib
import gc
import importlib
import json
import pathlib
import threading
import time
import traceback

from rlkit.distributed.orchestration import EngineActor
from rlkit.distributed.pool import PolicyRank

# The tiny models' classes (rlkit/models/tiny.py): what a bare actor imports before the model exists.
TINY_ARCH = {"vlm": ("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration"), "text": ("qwen3", "Qwen3ForCausalLM")}


# ---------------------------------------------------------------------------------------------- imports, gc
@contextlib.contextmanager
def paused_gc(freeze: bool = True):
    """Cyclic GC off for the block, then (`freeze`) what exists is frozen (never rescanned) and GC resumes."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            if freeze:
                gc.freeze()
            gc.enable()


def warm(modules) -> list[str]:
    """Import `modules` ("pkg.mod" or "pkg.mod:attr" for a lazily exported name) with GC paused; best effort: a
    name that fails to import only costs its time later. Returns the names that failed."""
    failed = []
    with paused_gc():
        for name in modules:
            mod, _, attr = name.partition(":")
            try:
                m = importlib.import_module(mod)
                if attr:
                    getattr(m, attr)
            except Exception:
                failed.append(name)
    return failed


def load_quietly(load, *args):
    """`load(*args)` with the collector paused (the driver's processor: transformers' imports, ~0.4-0.9 CPU-s of
    collections otherwise). Nothing is frozen in the driver: its Ray objects must stay collectable before
    `ray.shutdown`, and frozen nanobind objects (triton's) print ~30 lines of "leaked" objects at exit."""
    with paused_gc(freeze=False):
        return load(*args)


def model_classes(path: str) -> tuple[str, str]:
    """(transformers model_type, architecture) of a model path, `tiny:*` included, from config.json without
    importing anything; ("", "") when unknown (a hub id not downloaded yet)."""
    if path.startswith("tiny:"):
        return TINY_ARCH.get(path.split(":", 1)[1], ("", ""))
    try:
        cfg = json.loads((pathlib.Path(path).expanduser() / "config.json").read_text())
        return str(cfg.get("model_type", "")), str((cfg.get("architectures") or [""])[0])
    except (OSError, ValueError):
        return "", ""


def engine_imports(kind: str, model_type: str, arch: str) -> list[str]:
    """What a rollout engine actor of `kind` imports while it starts (vllm_engine.py, vLLM's engine and worker)."""
    names = ["torch", "rollout", "transformers", f"transformers.models.{model_type}" if model_type else ""]
    if kind != "vllm":
        return [n for n in names if n] + ["rollout.hf_engine", "transformers:AutoModelForCausalLM",
                                          "transformers:AutoModelForImageTextToText", "transformers:AutoProcessor"]
    names += ["vllm", "vllm:LLM", "rollout.vllm_engine", "vllm.v1.engine.llm_engine", "vllm.v1.engine.core",
              "vllm.v1.executor.uniproc_executor", "compressed_tensors", "mistral_common"]
    try:
        from vllm.platforms import current_platform

        worker = "cpu" if current_platform.is_cpu() else "gpu"
        names += [f"vllm.v1.worker.{worker}_worker", f"vllm.v1.worker.{worker}_model_runner"]
        from vllm.model_executor.models.registry import _VLLM_MODELS

        if arch in _VLLM_MODELS:
            names.append(f"vllm.model_executor.models.{_VLLM_MODELS[arch][0]}")
    except Exception:
        pass
    return [n for n in names if n]


def policy_imports(model_type: str) -> list[str]:
    """What a policy rank imports while it loads the model (rlkit/worker.py, rlkit/models/loading.py)."""
    names = ["torch", "transformers", "transformers:AutoConfig", "transformers:AutoModelForCausalLM",
             "transformers:AutoModelForImageTextToText", "transformers:AutoProcessor", "transformers:AutoTokenizer"]
    if model_type:
        names += [f"transformers.models.{model_type}.modeling_{model_type}",
                  f"transformers.models.{model_type}.processing_{model_type}"]
    return names


# ---------------------------------------------------------------------------------------------- bare actors
class _Bare:
    """Mixed into an actor class: the constructor only warms the imports; `construct` runs the real one."""

    exit_on_failure = False  # True: a failed `construct` ends the actor (callers see a dead actor)
    _construct_error: BaseException | None = None

    def __init__(self, *hints):
        from rlkit.console import actor_setup

        actor_setup()  # output to the run's log folder before anything is imported (rlkit/console.py)
        with paused_gc():  # naming the imports imports most of vLLM already (its platform, its model registry)
            warm(self.imports(*hints))

    def construct(self, *args, **kwargs) -> None:
        real = next(c for c in type(self).__mro__[1:] if c is not _Bare and not issubclass(c, _Bare))
        try:
            real.__init__(self, *args, **kwargs)
        except BaseException as e:
            traceback.print_exc()
            self._construct_error = e
            if self.exit_on_failure:
                import ray

                ray.actor.exit_actor()
            raise

    def _check_constructed(self) -> None:
        if self._construct_error is not None:
            raise self._construct_error


def _guarded(cls):
    """Every public method of `cls` first re-raises the error of a failed `construct`."""
    import functools
    import inspect

    def guard(fn):
        @functools.wraps(fn)
        def method(self, *a, **k):
            self._check_constructed()
            return fn(self, *a, **k)

        return method

    for name in dir(cls):
        if not name.startswith("_") and name != "construct" and inspect.isfunction(inspect.getattr_static(cls, name)):
            setattr(cls, name, guard(getattr(cls, name)))
    return cls


class EarlyEngineActor(_Bare, EngineActor):
    """`orchestration.EngineActor`, started before its model exists (`construct` builds the engine)."""

    exit_on_failure = True  # the engine pool recreates a dead worker the usual way
    imports = staticmethod(engine_imports)  # (kind, model_type, arch): resolved here, not in the driver


@_guarded
class EarlyPolicyRank(_Bare, PolicyRank):
    """`pool.PolicyRank`, started before its model exists (`construct` loads it)."""

    imports = staticmethod(policy_imports)  # (model_type,)


EARLY = {EngineActor: EarlyEngineActor, PolicyRank: EarlyPolicyRank}


def _bundle_key(bundle):
    return None if bundle is None else (bundle[0].id.hex(), bundle[1])


class EarlyStart:
    """Ray, the placement and bare actors, started in a thread (`start`) while the driver goes on.

    start_ray(): start or join Ray (`orchestration.init_ray`); place(): reserve the placement (a `Placement`);
    plan(placement): the actors to start, in the order the driver's pools will ask for them, as
    (cls, hints for the bare class's `imports`, dict(num_cpus=, num_gpus=, env=, bundle=)) with the exact options
    the pools pass to `spawn`.
    The thread lives as long as the Ray it started: Linux ends the processes a thread started when that thread ends.
    """

    def __init__(self, start_ray, place, plan, enabled: bool = True):
        self._start_ray, self._place, self._plan = start_ray, place, plan
        self.enabled = enabled
        self._lock = threading.Lock()
        self._ready = threading.Event()  # Ray up, placement reserved, bare actors spawned (or an error)
        self._closed = False
        self._thread = None
        self._error: BaseException | None = None
        self._placement = None
        self._bare: list = []  # [real class, handle, options key]
        self.taken = 0  # bare actors handed to the pools (tests; docs/performance.md)

    def start(self) -> None:
        """Called by `prepare` once the checks that come before Ray have passed."""
        if not self.enabled or self._thread is not None:
            return
        import ray

        if not ray.is_initialized():  # ray.init in the thread installs no SIGTERM handler: rlkit's (as init_ray)
            from rlkit.console import stop_on_sigterm

            stop_on_sigterm()
        self._thread = threading.Thread(target=self._run, name="rlkit-early-start", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import ray

        started_here = not ray.is_initialized()
        try:
            self._start_ray()
            placement = self._place()
            with self._lock:
                self._placement = placement
                if not self._closed:
                    from rlkit.distributed.orchestration import spawn

                    for cls, hints, opts in self._plan(placement):
                        handle = spawn(EARLY[cls], *hints, num_cpus=opts["num_cpus"], num_gpus=opts["num_gpus"],
                                       bundle=opts["bundle"], env={"RLKIT_ACTOR_NAME": cls.__name__, **opts["env"]})
                        self._bare.append((cls, handle, _options_key(**opts)))
        except BaseException as e:
            self._error = e
        finally:
            self._ready.set()
        while started_here and ray.is_initialized():  # keep Ray's processes alive (see the class docstring)
            time.sleep(0.5)

    def wait(self):
        """The placement reserved in the thread (None when no early start ran); raises the thread's error (a
        `ResourceError` names what the cluster cannot hold)."""
        if self._thread is None:
            return None
        self._ready.wait()
        if self._error is not None:
            raise self._error
        return self._placement

    def spawn(self, cls, *args, num_cpus: float = 1.0, num_gpus: float = 0.0, env: dict | None = None, bundle=None,
              **kwargs):
        """`orchestration.spawn`'s signature: the next bare actor of `cls` started with these options, given
        `cls(*args, **kwargs)`'s arguments; otherwise a new actor the usual way."""
        from rlkit.distributed.orchestration import spawn

        key = _options_key(num_cpus, num_gpus, env, bundle)
        with self._lock:
            i = next((i for i, (c, _, _) in enumerate(self._bare) if c is cls), None)
            bare = self._bare.pop(i) if i is not None else None
        if bare is not None:
            if bare[2] == key:
                bare[1].construct.remote(*args, **kwargs)
                self.taken += 1
                return bare[1]
            _kill(bare[1])  # started with other options than the driver asks for now: start anew
        return spawn(cls, *args, num_cpus=num_cpus, num_gpus=num_gpus, env=env, bundle=bundle, **kwargs)

    def close(self) -> None:
        """Bare actors nobody took are stopped (a run that failed before it needed them). With `abandon`, also
        wait for the thread and stop the Ray it started, so nothing of a run that failed in `prepare` lives on."""
        with self._lock:
            self._closed = True
            left, self._bare = self._bare, []
        for _, handle, _ in left:
            _kill(handle)

    def abandon(self) -> None:
        """`prepare` failed after `start`: stop what the thread started (it may still be starting Ray)."""
        if self._thread is None:
            return
        self._ready.wait()
        self.close()
        if self._placement is not None:
            self._placement.remove()


def _options_key(num_cpus=1.0, num_gpus=0.0, env=None, bundle=None):
    return (float(num_cpus), float(num_gpus), tuple(sorted((env or {}).items())), _bundle_key(bundle))


def _kill(handle) -> None:
    import ray

    try:
        ray.kill(handle)
    except Exception:
        pass


def grpo_plan(cfg, policy_env: dict):
    """`plan` for `EarlyStart` in the GRPO driver: rollout.num_workers engines (worker i in placement.worker(i)),
    then trainer.num_ranks policy ranks (rank j in placement.rank(j)), with the options `rlkit.drivers.grpo._engines`
    and `_policy` pass to `spawn` (a difference only costs the early start: `EarlyStart.spawn` starts anew)."""
    r, t = cfg.rollout, cfg.trainer
    model_type, arch = model_classes(cfg.model.path)

    def plan(placement):
        out = [(EngineActor, (r.engine, model_type, arch), dict(num_cpus=r.num_cpus, num_gpus=r.num_gpus,
                env={}, bundle=placement.worker(i) if placement else None)) for i in range(max(1, r.num_workers))]
        out += [(PolicyRank, (model_type,), dict(num_cpus=t.num_cpus, num_gpus=t.num_gpus, env=policy_env,
                 bundle=placement.rank(j) if placement else None)) for j in range(max(1, t.num_ranks))]
        return out

    return plan
