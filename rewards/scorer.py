"""The scorer the training loop calls: rewards from the config, run under time limits, composed in one place.

Why: the loop must not know how rewards are found, isolated, timed or summed. It builds one `RewardScorer`
from the config's `rewards:` list (unknown names or paths fail here, at load time, listing what exists),
calls it once per step, and gets per-reward values, the weighted total used for advantages, and the
failures with their samples. A reward that raises, times out, or returns something unusable (the wrong number
of values, a non-number, NaN or an infinity) gives None for that sample and a `RewardFailure`; the caller decides
what failures mean (the GRPO loop: rlkit/step/reward_health.py), unless `strict=True` raises on the first. A call that hung (ran out of time) or whose worker
process died is retried on those samples, at most `retries` times (`reward_retries` in the config): a hang or a
crash can be transient (a loaded machine, a flaky service the reward calls), while a reward that raises
would raise again on the same input, so that is not retried. Retries are counted (`reward/retries`).

Composition (`compose`, the only place it is defined): total = sum over rewards of weight * value, skipping
None (not applicable, or failed). A sample for which every reward gave None gets total 0.0; how often that
happens is logged as `reward/all_none_frac`.
"""
from __future__ import annotations

import dataclasses
import importlib
import math
import os
import warnings
from typing import Callable

from rewards.calling import slice_columns, unknown_kwargs
from rewards.isolation import InlineRunner, NotPicklable, ProcessRunner, transient
from rewards.registry import get_reward, is_batched, is_path, load_path, needs_of

_TRUNC = 200


@dataclasses.dataclass(frozen=True)
class RewardSpec:
    """One entry of the config's `rewards:` list: exactly one of `name` (registered) or `path` (a callable).

    `completion_format="messages"` hands the reward TRL's conversational form
    (`[{"role": "assistant", "content": ...}]`, prompts as `[{"role": "user", ...}]`) for rewards written for
    conversational TRL datasets; the default "text" passes plain strings.
    """

    name: str | None = None
    path: str | None = None
    weight: float = 1.0
    kwargs: dict = dataclasses.field(default_factory=dict)
    completion_format: str = "text"

    def __post_init__(self):
        if bool(self.name) == bool(self.path):
            raise ValueError(f"a reward needs exactly one of 'name' or 'path', "
                             f"got name={self.name!r}, path={self.path!r}")
        if not isinstance(self.weight, (int, float)) or not math.isfinite(self.weight):
            raise ValueError(f"reward {self.name or self.path!r}: weight must be a finite number, got {self.weight!r}")
        if not isinstance(self.kwargs, dict):
            raise ValueError(f"reward {self.name or self.path!r}: kwargs must be a mapping, "
                             f"got {type(self.kwargs).__name__}")
        if self.completion_format not in ("text", "messages"):
            raise ValueError(f"reward {self.name or self.path!r}: completion_format must be 'text' or 'messages'")


@dataclasses.dataclass
class RewardFailure:
    """A reward call that raised, ran out of time, or returned something unusable for one sample (its value is
    None); `kind` names which."""

    reward: str
    index: int
    prompt: str
    completion: str  # truncated to 200 characters
    error: str  # "timeout: ..." for a time limit, else the exception type and message

    def __str__(self) -> str:
        return f"reward {self.reward!r} failed on sample {self.index}: {self.error} (completion: {self.completion!r})"

    @property
    def kind(self) -> str:
        """One of FAILURE_KINDS, read from the error text (rewards.calling and rewards.isolation write them)."""
        return failure_kind(self.error)


FAILURE_KINDS = ("raised", "timeout", "worker died", "wrong length", "wrong type", "not finite", "not loaded")


def failure_kind(error: str) -> str:
    """The kind of a failure's error text: a time-out, a dead worker, a return value of the wrong length or type,
    NaN/inf, a reward the worker could not load, else an exception the reward raised."""
    for prefix, kind in (("timeout", "timeout"), ("the worker process", "worker died"),
                         ("wrong length:", "wrong length"), ("wrong type:", "wrong type"),
                         ("not finite:", "not finite"), ("cannot load the reward", "not loaded"),
                         ("cannot unpickle", "not loaded")):
        if error.startswith(prefix):
            return kind
    return "raised"


class RewardError(RuntimeError):
    """Raised in strict mode on the first failure."""


def compose(per_reward: dict[str, list], weights: dict[str, float], n: int) -> list[float]:
    """The weighted total used for advantages: None values are skipped; all None gives 0.0.

    >>> compose({"a": [1.0, None, None], "b": [0.5, 1.0, None]}, {"a": 1.0, "b": 2.0}, 3)
    [2.0, 2.0, 0.0]
    """
    total = [0.0] * n
    for name, values in per_reward.items():
        w = weights[name]
        for i, v in enumerate(values):
            if v is not None:
                total[i] += w * v
    return total


@dataclasses.dataclass
class ScoreResult:
    per_reward: dict[str, list]  # display name -> one float or None per sample
    total: list[float]  # `compose(per_reward, weights)`
    failures: list[RewardFailure]
    weights: dict[str, float] = dataclasses.field(default_factory=dict)
    retries: int = 0  # sample calls retried after a hang or a dead worker (see `rewards.isolation.transient`)

    def stats(self) -> dict[str, float]:
        """Per reward: mean over non-None values (NaN if none), share returned None, share failed; the total's mean."""
        n = len(self.total)
        failed: dict[str, set] = {name: set() for name in self.per_reward}
        for f in self.failures:
            failed.setdefault(f.reward, set()).add(f.index)
        out: dict[str, float] = {}
        for name, values in self.per_reward.items():
            vals = [v for v in values if v is not None]
            out[f"reward/{name}/mean"] = sum(vals) / len(vals) if vals else float("nan")
            out[f"reward/{name}/none_frac"] = (sum(v is None for v in values) - len(failed[name])) / n if n else 0.0
            out[f"reward/{name}/fail_frac"] = len(failed[name]) / n if n else 0.0
        out["reward/mean"] = sum(self.total) / n if n else float("nan")
        all_none = sum(all(vs[i] is None for vs in self.per_reward.values()) for i in range(n))
        out["reward/all_none_frac"] = all_none / n if n else 0.0
        out["reward/retries"] = float(self.retries)
        return out


@dataclasses.dataclass
class _Plan:
    name: str
    spec: RewardSpec
    fn: Callable
    ref: tuple | None  # how a worker process finds fn; None: run in-process
    batched: bool
    needs: tuple


def _worker_ref(spec: RewardSpec, fn: Callable) -> tuple | None:
    """("file", abs path, attr) / ("import", module, qualname), or None when a worker could not find `fn`."""
    if spec.path:
        module_part, _, attr = spec.path.rpartition(":")
        if module_part.endswith(".py") or "/" in module_part or os.sep in module_part:
            return ("file", os.path.abspath(module_part), attr)
        return ("import", module_part, attr)
    module, qual = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not module or not qual or module == "__main__" or "<" in qual:
        return None
    try:
        obj = importlib.import_module(module)
        for part in qual.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        return None
    return ("import", module, qual) if obj is fn else None


class RewardScorer:
    """Scores a batch with every configured reward; see the module docstring.

    - `timeout_s`: limit per sample (per call for `batched` rewards).
    - `isolation`: "process" (default: killable worker processes) or "inline" (threads; for debugging).
    - `workers`: worker processes sharing a batch; `memory_mb`: extra address space a worker may use per call.
    - `resources`: an object whose attributes are model handles (e.g. `.policy`); a reward declaring
      `needs = ("policy",)` gets it as the keyword `resources` and runs in-process.
    - `retries`: a sample whose call hung or whose worker died is scored again, at most this many times.
    """

    def __init__(self, specs: list[RewardSpec], timeout_s: float = 10.0, strict: bool = False, resources=None,
                 isolation: str = "process", workers: int = 1, memory_mb: int = 2048, retries: int = 0):
        if not specs:
            raise ValueError("at least one reward is needed")
        if not (timeout_s > 0):
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an integer >= 0, got {retries!r}")
        self.retries = retries
        if isolation not in ("process", "inline"):
            raise ValueError(f"isolation must be 'process' or 'inline', got {isolation!r}")
        self.timeout_s, self.strict, self.resources, self.isolation = timeout_s, strict, resources, isolation
        self.plans: list[_Plan] = []
        used: set[str] = set()
        for spec in specs:
            if isinstance(spec, dict):
                spec = RewardSpec(**spec)
            label = spec.name or spec.path
            if spec.name and is_path(spec.name):
                raise ValueError(f"reward name {spec.name!r} looks like a path: give it as 'path:' instead of 'name:'")
            fn = get_reward(spec.name) if spec.name else load_path(spec.path)
            bad = unknown_kwargs(fn, spec.kwargs)
            if bad:
                raise ValueError(f"reward {label!r} takes no keyword argument(s) {bad}")
            needs = needs_of(fn)
            if needs:
                if resources is None:
                    raise ValueError(f"reward {label!r} needs resources {needs}: pass RewardScorer(..., resources=...)")
                missing = [k for k in needs if not hasattr(resources, k)]
                if missing:
                    raise ValueError(f"reward {label!r} needs resources {missing}, which the resources object lacks")
            base = spec.name or getattr(fn, "__name__", None) or spec.path.rpartition(":")[2]
            name, k = base, 2
            while name in used:
                name, k = f"{base}_{k}", k + 1
            used.add(name)
            ref = None if (needs or isolation == "inline") else _worker_ref(spec, fn)
            if ref is None and not needs and isolation == "process":
                warnings.warn(f"reward {label!r} is not importable by name (defined in __main__ or a closure); it "
                              "runs in-process, where a hung call is abandoned rather than killed", RuntimeWarning)
            self.plans.append(_Plan(name, spec, fn, ref, is_batched(fn), needs))
        self._procs = ProcessRunner(workers=workers, memory_mb=memory_mb) if any(p.ref for p in self.plans) else None
        self._inline = InlineRunner()

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.plans]

    @property
    def weights(self) -> dict[str, float]:
        return {p.name: float(p.spec.weight) for p in self.plans}

    def start(self) -> None:
        """Start the worker processes now (optional: the first call starts them otherwise)."""
        if self._procs:
            self._procs.start()

    def close(self) -> None:
        if self._procs:
            self._procs.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __call__(self, prompts: list, completions: list, columns: dict | None = None,
                 only: list[str] | None = None) -> ScoreResult:
        """Score every completion with every reward, or only with the rewards named in `only` (names as in
        `names`; the total then sums those alone). Held-out evaluation grades with one reward this way."""
        n = len(completions)
        plans = self.plans
        if only is not None:
            unknown = [name for name in only if name not in self.names]
            if unknown:
                raise ValueError(f"unknown reward(s) {unknown}; this scorer has {', '.join(self.names)}")
            plans = [p for p in self.plans if p.name in only]
        if len(prompts) != n:
            raise ValueError(f"got {len(prompts)} prompts for {n} completions")
        columns = dict(columns or {})
        for key, col in columns.items():
            if isinstance(col, (list, tuple)) and len(col) != n:
                raise ValueError(f"column {key!r} has {len(col)} values for {n} completions")
        per_reward: dict[str, list] = {}
        failures: list[RewardFailure] = []
        retried = 0
        for plan in plans:
            outcomes = self._run(plan, prompts, completions, columns) if n else []
            for attempt in range(1, self.retries + 1):
                redo = [i for i, (_, error) in enumerate(outcomes) if transient(error)]
                if not redo:
                    break
                retried += len(redo)
                print(f"rlkit: reward {plan.name!r} hung or lost its worker on {len(redo)} sample(s); "
                      f"retrying them (attempt {attempt} of {self.retries}, config key 'reward_retries')")
                again = self._run(plan, [prompts[i] for i in redo], [completions[i] for i in redo],
                                  slice_columns(columns, redo, n))
                for i, outcome in zip(redo, again):
                    outcomes[i] = outcome
            per_reward[plan.name] = [v for v, _ in outcomes]
            for i, (_, error) in enumerate(outcomes):
                if error is not None:
                    failure = RewardFailure(plan.name, i, _trunc(prompts[i]), _trunc(completions[i]), error)
                    if self.strict:
                        raise RewardError(str(failure))
                    failures.append(failure)
        weights = {p.name: float(p.spec.weight) for p in plans}
        return ScoreResult(per_reward, compose(per_reward, weights, n), failures, weights, retried)

    def _run(self, plan: _Plan, prompts: list, completions: list, columns: dict) -> list:
        if plan.spec.completion_format == "messages":
            prompts = [[{"role": "user", "content": p}] if isinstance(p, str) else p for p in prompts]
            completions = [[{"role": "assistant", "content": c}] if isinstance(c, str) else c for c in completions]
        if plan.needs:
            columns = {**columns, "resources": self.resources}
        kwargs = dict(plan.spec.kwargs)
        if plan.ref is not None:
            try:
                return self._procs.run(plan.ref, kwargs, prompts, completions, columns, not plan.batched,
                                       self.timeout_s)
            except NotPicklable as e:
                warnings.warn(f"reward {plan.name!r}: inputs cannot be sent to a worker process ({e}); running it "
                              "in-process", RuntimeWarning)
        return self._inline.run(plan.fn, kwargs, prompts, completions, columns, not plan.batched, self.timeout_s)


def _trunc(x) -> str:
    text = x if isinstance(x, str) else repr(x)
    return text if len(text) <= _TRUNC else text[:_TRUNC] + f"... [{len(text)} chars]"
