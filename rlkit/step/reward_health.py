"""Reward health in the GRPO loop: failures summarised per reward and step, the rule that stops a run whose
reward is broken, and steps with nothing to learn.

Why its own module: a reward that fails on every sample used to give a run of zero losses that exited 0 with a
checkpoint, printing one line per failed sample (or nothing, for NaN). Here, per step:
- each reward with failures gets one line: how many of how many samples, the kinds (rewards.FAILURE_KINDS) and
  the first failure's text with its file:line (where it raised; for the other kinds where the reward is defined);
- `reward/<name>/failures` and `reward/<name>/fail_streak` go to the metrics;
- a reward that fails on at least `reward_fail_frac` of a step's samples for `reward_fail_steps` consecutive
  steps (default: every sample, two steps) stops the run with `RewardStop`, one line naming the reward, what
  failed, where, and the last checkpoint written; `strict_rewards` stops at the first step with any failure.
  The check runs after scoring and before the update, so the step scored with the broken reward is neither
  trained on nor checkpointed;
- a step whose advantages are all zero (every group's rewards are equal, or the group filter kept none) is
  reported once per run of such consecutive steps with its reason and what to change, and counted in
  `train/nothing_to_learn` (this step) and `train/nothing_to_learn_steps` (this process's run so far).
The driver calls `RewardHealth.step` once per step; nothing else here knows the driver.
"""
from __future__ import annotations

import collections
import dataclasses
import inspect
from typing import Callable

from rewards import RewardError, ScoreResult

ZERO = 1e-6  # |advantage| below this is zero: equal rewards give exactly 0 up to rounding of the group mean


class RewardStop(RewardError):
    """The run stopped because a reward kept failing; the message is one line (the CLI prints it)."""


@dataclasses.dataclass
class StepFailures:
    """One reward's failures in one step."""

    reward: str
    failed: int
    of: int
    kinds: dict  # kind -> count, in order of first appearance
    first: str  # the first failure's error text, with its location

    def describe(self) -> str:
        kinds = ", ".join(f"{k} {c}" for k, c in self.kinds.items())
        return f"reward {self.reward!r} failed on {self.failed}/{self.of} samples ({kinds}); first: {self.first}"


def defined_at(fn) -> str:
    """'file:line' where a reward function is defined ('' when unknown: a builtin, a callable object)."""
    try:
        fn = inspect.unwrap(fn)
        code = getattr(fn, "__code__", None) or getattr(getattr(fn, "__call__", None), "__code__", None)
        return f"{code.co_filename}:{code.co_firstlineno}" if code else ""
    except Exception:  # noqa: BLE001 - only a hint in a message
        return ""


def step_failures(result: ScoreResult, sites: dict | None = None) -> dict[str, StepFailures]:
    """Per reward with at least one failure in `result`, its StepFailures. A first failure that carries no
    traceback location (a time-out, a bad return value) gets the reward's definition site from `sites`."""
    n, sites = len(result.total), sites or {}
    out: dict[str, StepFailures] = {}
    for f in result.failures:
        s = out.get(f.reward)
        if s is None:
            first = f.error
            if " (at " not in first and sites.get(f.reward):
                first += f" (reward defined at {sites[f.reward]})"
            s = out[f.reward] = StepFailures(f.reward, 0, n, {}, first)
        s.failed += 1
        s.kinds[f.kind] = s.kinds.get(f.kind, 0) + 1
    return out


class RewardHealth:
    """Counts, summarises and judges reward failures step by step (see the module docstring).

    - `names`: the scorer's reward names; `sites`: name -> where the reward is defined.
    - `fail_steps`: consecutive failing steps that stop the run (0: never); `fail_frac`: the share of a step's
      samples a reward must fail on for the step to count; `strict`: any failure stops the run.
    - `say`: where the lines go (print)."""

    def __init__(self, names: list[str], fail_steps: int = 2, fail_frac: float = 1.0, strict: bool = False,
                 sites: dict | None = None, say: Callable[[str], None] = print):
        if fail_steps < 0:
            raise ValueError(f"fail_steps must be >= 0, got {fail_steps}")
        if not 0 < fail_frac <= 1:
            raise ValueError(f"fail_frac must be in (0, 1], got {fail_frac}")
        self.names, self.fail_steps, self.fail_frac, self.strict = list(names), fail_steps, fail_frac, strict
        self.sites, self.say = dict(sites or {}), say
        self.streak = {name: [] for name in self.names}  # the current run of failing steps: (step, StepFailures)
        self.idle_steps = 0  # steps with nothing to learn, so far
        self.idle_run = 0  # length of the current run of such steps
        self.broken: list[str] = []  # rewards that failed on every sample of the last step scored

    @classmethod
    def from_config(cls, cfg, scorer, say: Callable[[str], None] = print) -> "RewardHealth":
        """From a GRPOConfig's reward_fail_steps, reward_fail_frac and strict_rewards, over a RewardScorer."""
        return cls(scorer.names, cfg.reward_fail_steps, cfg.reward_fail_frac, cfg.strict_rewards,
                   {p.name: defined_at(p.fn) for p in scorer.plans}, say)

    def failures(self, step: int, result: ScoreResult, last_checkpoint: Callable[[], object] = lambda: None) -> dict:
        """Summarise `result`'s failures (one line per failing reward) and return the failure metrics; raise
        RewardStop past the threshold. `last_checkpoint()`: the newest checkpoint written (None: none)."""
        found = step_failures(result, self.sites)
        self.broken = [name for name, s in found.items() if s.failed == s.of]
        metrics = {}
        for name in self.names:
            s = found.get(name)
            if s is not None:
                self.say(f"rlkit: step {step}: {s.describe()}")
            counts = s is not None and (self.strict or s.failed >= self.fail_frac * s.of)
            self.streak[name] = self.streak[name] + [(step, s)] if counts else []
            metrics[f"reward/{name}/failures"] = float(s.failed if s else 0)
            metrics[f"reward/{name}/fail_streak"] = float(len(self.streak[name]))
        for name in self.names:
            run = self.streak[name]
            if run and (self.strict or (self.fail_steps and len(run) >= self.fail_steps)):
                raise RewardStop(self._stop_message(name, run, last_checkpoint()))
        return metrics

    def _stop_message(self, name: str, run: list, checkpoint) -> str:
        first_step, last_step = run[0][0], run[-1][0]
        kinds = collections.Counter()
        for _, s in run:
            kinds.update(s.kinds)
        counts = ", ".join(f"{s.failed}/{s.of}" for _, s in run)
        steps = f"step {first_step}" if len(run) == 1 else f"steps {first_step}-{last_step}"
        if self.strict:
            what, rule = f"failed on {counts} samples of step {last_step}", "strict_rewards: the first failure stops the run"
        else:
            share = "every sample" if self.fail_frac >= 1 else f"at least {self.fail_frac:g} of the samples"
            what = f"failed on {share} of {steps} ({counts})"
            rule = f"reward_fail_steps={self.fail_steps}, reward_fail_frac={self.fail_frac:g}"
        where = (f"last checkpoint: {checkpoint} (fix the reward, then --resume continues from it)" if checkpoint
                 else "no checkpoint was written")
        return (f"reward {name!r} {what}: {', '.join(f'{k} {c}' for k, c in kinds.items())}; first: {run[0][1].first}; "
                f"the run stopped before training on step {last_step} ({rule}); {where}")

    def advantages(self, step: int, samples: list, everything: list) -> dict:
        """Report a step with nothing to learn (once per run of such steps) and return its metrics. `samples`:
        the trained samples with advantages; `everything`: every sample drawn (group filter's drops included)."""
        reason = nothing_to_learn(samples, everything, self.broken)
        if reason is None:
            self.idle_run = 0
        else:
            self.idle_steps += 1
            self.idle_run += 1
            if self.idle_run == 1:
                self.say(f"rlkit: step {step}: nothing to learn: {reason} (said once per run of such steps; "
                         "counted in train/nothing_to_learn_steps)")
        return {"train/nothing_to_learn": float(reason is not None), "train/nothing_to_learn_steps": float(self.idle_steps)}

    def step(self, step: int, result: ScoreResult, samples: list, everything: list,
             last_checkpoint: Callable[[], object] = lambda: None) -> dict:
        """Both checks of one step (failures first: a stop wins); their metrics."""
        return {**self.failures(step, result, last_checkpoint), **self.advantages(step, samples, everything)}


def nothing_to_learn(samples: list, everything: list, broken: list[str] = ()) -> str | None:
    """Why a step's update can learn nothing (every trained advantage is zero, or nothing was kept to train on),
    with what to change; None when some advantage is not zero. Samples need `.advantage`, `.reward`, `.group`
    (kept samples: unique per step) and `.row` (the drawn row object: one per group). `broken`: rewards that
    failed on every sample of the step (then they are the reason)."""
    if samples:
        if any(abs(s.advantage) > ZERO for s in samples):
            return None
        groups = _groups(samples, lambda s: s.group)
        lead = f"all {len(groups)} groups have equal rewards"
    elif everything:
        groups = _groups(everything, lambda s: id(s.row))
        lead = f"the group filter kept none of the {len(groups)} groups drawn"
    else:
        return None
    values = sorted({s.reward for s in (samples or everything)})
    uniform = all(len({s.reward for s in g}) == 1 for g in groups)
    if not uniform:  # advantages zero although a group's rewards differ: subgroups (algorithm.mode_groups) alike
        return (f"every advantage is zero, though rewards differ within some of the {len(groups)} groups: the "
                "advantage groups (algorithm.mode_groups) have equal rewards; raise rollout.n or rollout.temperature")
    if broken:
        names = ", ".join(repr(b) for b in broken)
        lead += f" (all {values[0]:g})" if len(values) == 1 else ""
        advice = f"reward {names} failed on every sample (see the line above): fix it"
    elif len(values) == 1:
        v = values[0]
        lead += f" (all {v:g})"
        if v == 0:
            advice = ("the policy never earns a reward: start from a checkpoint that sometimes succeeds, use easier "
                      "prompts, or check the reward's values in samples.jsonl")
        else:
            advice = ("every completion earns the same reward: check that the reward separates good completions "
                      "from bad ones, or use harder prompts")
    else:
        lead += f" within each group ({len(values)} distinct values across groups)"
        advice = "each prompt's completions score alike: raise rollout.n or rollout.temperature for more varied ones"
    return f"{lead}; {advice}"


def _groups(samples: list, key) -> list[list]:
    out: dict = {}
    for s in samples:
        out.setdefault(key(s), []).append(s)
    return list(out.values())
