"""Pure RL algorithms (torch only), looked up by name from the config.

Why a package of registries: the trainer reads ``algorithm: {advantage: grpo, policy_loss: ppo_clip,
loss_opts: {...}, kl_estimator: k3, kl_coef: 0.0}`` and calls ``get_advantage_fn(...)``,
``get_policy_loss(...)``, ``get_kl_estimator(...)``; adding a variant is registering a function, not
editing the trainer. Shapes and formulas live in each function's docstring and in docs/algorithms.md.
"""

from __future__ import annotations

from typing import Callable

from . import advantages as _advantages  # noqa: F401  (registers)
from . import aggregation as _aggregation  # noqa: F401  (registers)
from . import corrections as _corrections  # noqa: F401  (registers)
from . import dpo as _dpo  # noqa: F401  (registers)
from . import kl as _kl  # noqa: F401  (registers)
from . import losses as _losses  # noqa: F401  (registers)
from .advantages import MODE_GROUPS, advantage_groups, combine_group_ids, group_index, group_std, informative_groups
from .aggregation import aggregate, masked_mean
from .dpo import DPO_LOSSES, get_dpo_loss
from .registry import ADVANTAGES, AGGREGATIONS, CORRECTIONS, KL_ESTIMATORS, POLICY_LOSSES, Registry


def get_advantage_fn(name: str) -> Callable:
    """``(rewards (N,), group_ids (N,), **opts) -> (N,)`` registered as ``name``."""
    return ADVANTAGES.get(name)


def get_policy_loss(name: str) -> Callable:
    """``(logprobs, old_logprobs (B, T), advantages (B,), mask (B, T), **opts) -> (loss, metrics)``."""
    return POLICY_LOSSES.get(name)


def get_kl_estimator(name: str) -> Callable:
    """``(logprobs (B, T), ref_logprobs (B, T)) -> (B, T)`` registered as ``name``."""
    return KL_ESTIMATORS.get(name)


def get_correction(name: str) -> Callable:
    """``(log_ratio (B, T), mask (B, T), **opts) -> (weight (B, T), metrics)`` registered as ``name``."""
    return CORRECTIONS.get(name)


def get_aggregation(name: str) -> Callable:
    """``(values (B, T), mask (B, T), *, norm_length=None) -> ()`` registered as ``name``."""
    return AGGREGATIONS.get(name)


__all__ = [
    "ADVANTAGES",
    "AGGREGATIONS",
    "CORRECTIONS",
    "DPO_LOSSES",
    "KL_ESTIMATORS",
    "MODE_GROUPS",
    "POLICY_LOSSES",
    "Registry",
    "advantage_groups",
    "aggregate",
    "combine_group_ids",
    "get_advantage_fn",
    "get_aggregation",
    "get_correction",
    "get_dpo_loss",
    "get_kl_estimator",
    "get_policy_loss",
    "group_index",
    "group_std",
    "informative_groups",
    "masked_mean",
]
