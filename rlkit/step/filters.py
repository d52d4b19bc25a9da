"""Group filters: which prompt groups of a GRPO step are kept for the update (the driver refills the rest).

Why: a group whose rewards barely differ gives (almost) zero advantage to all its samples, so it only
dilutes the batch. Two rules, registered by name in `FILTERS` (the driver looks them up from the config
and never branches on a name):

- `all_equal` (DAPO's dynamic sampling): drop groups whose rewards are all equal.
- `std_ema` (RLPR's std filter): drop groups whose reward std is below `beta * EMA`, where the EMA tracks
  the mean group std of past steps. Probability rewards are continuous, so groups are rarely exactly
  equal; a threshold relative to the run's typical spread removes the nearly-flat ones.
- `none`: keep everything.

Interface (every filter): `update_and_mask(group_rewards, step) -> list[bool]` (True = keep; one entry
per group, each group the list of its samples' total rewards), `state_dict()` / `load_state_dict()`
(JSON-able, for the checkpoint), `metrics()` (the last call's `filter/...` values). The driver may call
`update_and_mask` several times in one step (the first batch, then refill batches): statistics gathered in
a step only enter the EMA when the next step starts, so every call of a step uses the same threshold.

Pure Python plus `rlkit.algorithms` (the std convention is the GRPO advantage's: sample std, Bessel-corrected;
a group of one has std 0).
"""
from __future__ import annotations

import math

import torch

from rlkit.algorithms import Registry, group_std, informative_groups

FILTERS = Registry("group filter")


def get_filter(name: str, **kwargs):
    """A new filter instance: `get_filter("std_ema", beta=0.5)`. Unknown names list the registered ones."""
    return FILTERS.get(name)(**kwargs)


def _flat(group_rewards: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    if any(len(g) == 0 for g in group_rewards):
        raise ValueError("every group needs at least one reward")
    rewards = torch.tensor([float(r) for g in group_rewards for r in g], dtype=torch.float64)
    ids = torch.tensor([i for i, g in enumerate(group_rewards) for _ in g], dtype=torch.long)
    return rewards, ids


def group_stds(group_rewards: list[list[float]]) -> list[float]:
    """Sample std of each group (0 for a group of one), in group order.

    >>> [round(s, 6) for s in group_stds([[0.0, 1.0], [2.0, 2.0, 2.0], [5.0]])]
    [0.707107, 0.0, 0.0]
    """
    if not group_rewards:
        return []
    return group_std(*_flat(group_rewards)).tolist()


@FILTERS.register("none")
class NoFilter:
    """Keeps every group."""

    def __init__(self):
        self.last: dict[str, float] = {}

    def update_and_mask(self, group_rewards: list[list[float]], step: int) -> list[bool]:
        self.last = {"filter/groups": float(len(group_rewards)), "filter/filtered_frac": 0.0}
        return [True] * len(group_rewards)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def metrics(self) -> dict[str, float]:
        return dict(self.last)


@FILTERS.register("all_equal")
class AllEqualFilter(NoFilter):
    """Dynamic sampling (DAPO): drop groups whose rewards are all equal (exactly; a group of one too),
    from `start_step` on."""

    def __init__(self, start_step: int = 0):
        super().__init__()
        self.start_step = int(start_step)

    def update_and_mask(self, group_rewards: list[list[float]], step: int) -> list[bool]:
        if step < self.start_step or not group_rewards:
            keep = [True] * len(group_rewards)
        else:
            keep = [bool(k) for k in informative_groups(*_flat(group_rewards)).tolist()]
        self.last = {"filter/groups": float(len(keep)),
                     "filter/filtered_frac": (len(keep) - sum(keep)) / len(keep) if keep else 0.0}
        return keep


@FILTERS.register("std_ema")
class StdFilter:
    """RLPR's std filter. Keep a group iff its reward std >= beta * EMA (once the filter is active).

    - Steps >= `ema_start_step` contribute their mean group std m_s (over every group seen in the step,
      filtered or not, refills included; NaN stds ignored).
    - At the first step t >= `filter_start_step`, the EMA starts as the plain mean of the collected m_s
      (steps ema_start_step .. t-1; with none collected yet, it starts from the first one collected later).
    - Each later step: EMA <- ema * EMA + (1 - ema) * m_{previous step}.
    - The threshold of step t is beta * EMA_t, so a step's own groups never move its threshold.

    Reference values (RLPR's training script): beta 0.5, ema 0.99, EMA from step 6, filter from step 11.
    """

    def __init__(self, beta: float = 0.5, ema: float = 0.99, ema_start_step: int = 6, filter_start_step: int = 11):
        try:
            beta, ema = float(beta), float(ema)
        except (TypeError, ValueError):
            raise ValueError(f"beta and ema must be numbers, got beta={beta!r}, ema={ema!r}") from None
        if not beta >= 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        if not 0.0 <= ema < 1.0:
            raise ValueError(f"ema must be in [0, 1), got {ema}")
        self.beta, self.ema_factor = beta, ema
        self.ema_start_step, self.filter_start_step = int(ema_start_step), int(filter_start_step)
        self.ema: float | None = None
        self.warmup: list[float] = []  # step means collected before the EMA starts
        self.pending: list[float] = []  # group stds of the step in progress
        self.pending_step: int | None = None
        self.last: dict[str, float] = {}

    def _fold(self) -> None:
        stds = [s for s in self.pending if math.isfinite(s)]
        if stds:
            m = sum(stds) / len(stds)
            if self.ema is None:
                self.warmup.append(m)
            else:
                self.ema = self.ema_factor * self.ema + (1.0 - self.ema_factor) * m
        self.pending, self.pending_step = [], None

    def threshold(self, step: int) -> float | None:
        """beta * EMA when the filter is active at `step` (call after `update_and_mask` for that step)."""
        if step < self.filter_start_step or self.ema is None:
            return None
        return self.beta * self.ema

    def update_and_mask(self, group_rewards: list[list[float]], step: int) -> list[bool]:
        if self.pending_step is not None and step != self.pending_step:
            self._fold()
        if self.ema is None and step >= self.filter_start_step and self.warmup:
            self.ema = sum(self.warmup) / len(self.warmup)
            self.warmup = []
        stds = group_stds(group_rewards)
        thr = self.threshold(step)
        keep = [True] * len(stds) if thr is None else [s >= thr for s in stds]
        if step >= self.ema_start_step:
            self.pending.extend(stds)
            self.pending_step = step
        finite = [s for s in stds if math.isfinite(s)]
        self.last = {
            "filter/groups": float(len(keep)),
            "filter/filtered_frac": (len(keep) - sum(keep)) / len(keep) if keep else 0.0,
            "filter/threshold": thr if thr is not None else float("nan"),
            "filter/ema": self.ema if self.ema is not None else float("nan"),
            "filter/std_mean": sum(finite) / len(finite) if finite else float("nan"),
            "filter/active": 0.0 if thr is None else 1.0,
        }
        return keep

    def state_dict(self) -> dict:
        return {"ema": self.ema, "warmup": list(self.warmup), "pending": list(self.pending),
                "pending_step": self.pending_step}

    def load_state_dict(self, state: dict) -> None:
        self.ema = None if state.get("ema") is None else float(state["ema"])
        self.warmup = [float(x) for x in state.get("warmup", [])]
        self.pending = [float(x) for x in state.get("pending", [])]
        self.pending_step = state.get("pending_step")

    def metrics(self) -> dict[str, float]:
        return dict(self.last)


__all__ = ["FILTERS", "AllEqualFilter", "NoFilter", "StdFilter", "get_filter", "group_stds"]
