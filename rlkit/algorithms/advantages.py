"""Group-relative advantage estimators and the group statistics dynamic sampling filters on.

Why: GRPO-family trainers replace a learned critic with a baseline computed from the other completions
sampled for the same prompt. The variants differ only in that baseline and in the scale, so each is a
small pure function ``(rewards (N,), group_ids (N,), **opts) -> advantages (N,)`` registered by name.

Conventions shared by every function here:
- ``rewards``: ``(N,)`` float, one scalar per completion. ``group_ids``: ``(N,)`` integer; completions
  with the same id form one group. Ids need not be contiguous, sorted or 0-based, and groups may have
  unequal sizes (e.g. after failed samples were dropped).
- The grouping key is an input: to normalise within a sub-group (e.g. the fast and the deep completions
  of one prompt separately) pass ``combine_group_ids(prompt_ids, mode_ids)`` instead of ``prompt_ids``.
- A group of one has no baseline to compare with and gets advantage 0 (verl instead gives it its raw
  reward; we prefer no learning signal over an unbaselined one).
- Standard deviations are the *sample* (unbiased, Bessel-corrected, ``torch.std``) std by default: that is
  what TRL's GRPOTrainer and verl's GRPO estimator compute, so advantages and std-filter thresholds
  reproduce theirs. ``group_std(..., unbiased=False)`` gives the population std when wanted.
- Per-group results ``(G,)`` are ordered like ``torch.unique(group_ids)`` (ascending ids); use
  ``group_index`` to map them back to samples: ``per_group[group_index(group_ids)[1]]``.
"""

from __future__ import annotations

from typing import Tuple

import torch

from .registry import ADVANTAGES

__all__ = [
    "MODE_GROUPS",
    "advantage_groups",
    "batch_std",
    "combine_group_ids",
    "dr_grpo",
    "group_index",
    "group_std",
    "grpo",
    "informative_groups",
    "rloo",
]


def _check(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must have shape (N,), got {tuple(rewards.shape)}")
    if group_ids.shape != rewards.shape:
        raise ValueError(
            f"group_ids must have the shape of rewards {tuple(rewards.shape)}, got {tuple(group_ids.shape)}"
        )
    if group_ids.dtype.is_floating_point or group_ids.dtype == torch.bool:
        raise ValueError(f"group_ids must be an integer tensor, got {group_ids.dtype}")
    return rewards if rewards.dtype.is_floating_point else rewards.to(torch.get_default_dtype())


def group_index(group_ids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Unique group ids ``(G,)`` (ascending) and each sample's group position ``(N,)`` in ``[0, G)``."""
    if group_ids.dim() != 1:
        raise ValueError(f"group_ids must have shape (N,), got {tuple(group_ids.shape)}")
    unique, inverse = torch.unique(group_ids, sorted=True, return_inverse=True)
    return unique, inverse


def combine_group_ids(*keys: torch.Tensor) -> torch.Tensor:
    """One ``(N,)`` long id per distinct tuple of keys, e.g. ``combine_group_ids(prompt_ids, mode_ids)``.

    Each key is ``(N,)`` integer. Two samples share the result iff they agree on every key.
    """
    if not keys:
        raise ValueError("combine_group_ids needs at least one key")
    n = keys[0].shape
    for k in keys:
        if k.dim() != 1 or k.shape != n:
            raise ValueError(f"every key must have shape {tuple(n)} (N,), got {tuple(k.shape)}")
    _, inverse = torch.unique(torch.stack([k.long() for k in keys], dim=1), dim=0, return_inverse=True)
    return inverse


MODE_GROUPS = ("prompt", "mode")


def advantage_groups(prompt_ids: torch.Tensor, mode_ids: torch.Tensor, by: str = "prompt") -> torch.Tensor:
    """The ``group_ids`` (N,) advantages are normalised over, when a prompt's samples may mix modes.

    ``prompt_ids``, ``mode_ids``: ``(N,)`` integer. ``by="prompt"``: each prompt's whole group, all modes
    together (returns ``prompt_ids``); ``by="mode"``: each (prompt, mode) subgroup on its own
    (``combine_group_ids(prompt_ids, mode_ids)``). The config key is ``algorithm.mode_groups``.
    """
    if by not in MODE_GROUPS:
        raise ValueError(f"mode groups must be one of {', '.join(MODE_GROUPS)}, got {by!r}")
    if prompt_ids.shape != mode_ids.shape or prompt_ids.dim() != 1:
        raise ValueError(f"prompt_ids and mode_ids must both have shape (N,), got {tuple(prompt_ids.shape)} "
                         f"and {tuple(mode_ids.shape)}")
    return prompt_ids.long() if by == "prompt" else combine_group_ids(prompt_ids, mode_ids)


def _stats(rewards: torch.Tensor, group_ids: torch.Tensor):
    """Per-sample inverse (N,), counts (G,), means (G,), sums of squared deviations (G,)."""
    _, inverse = group_index(group_ids)
    g = int(inverse.max()) + 1 if inverse.numel() else 0
    zeros = rewards.new_zeros(g)
    counts = zeros.index_add(0, inverse, torch.ones_like(rewards))
    means = zeros.index_add(0, inverse, rewards) / counts.clamp(min=1)
    sq = zeros.index_add(0, inverse, (rewards - means[inverse]) ** 2)
    return inverse, counts, means, sq


def _std(sq: torch.Tensor, counts: torch.Tensor, unbiased: bool) -> torch.Tensor:
    denom = counts - 1 if unbiased else counts
    return torch.where(denom > 0, sq / denom.clamp(min=1), torch.zeros_like(sq)).sqrt()


def group_std(rewards: torch.Tensor, group_ids: torch.Tensor, *, unbiased: bool = True) -> torch.Tensor:
    """Std of the rewards within each group, ``(G,)`` ordered by ascending group id.

    Sample (Bessel-corrected) std by default, like ``torch.std``; a group of one has std 0. This is the
    quantity RLPR's std filter compares with ``beta * EMA(mean std)``; the EMA is trainer state.
    """
    rewards = _check(rewards, group_ids)
    _, counts, _, sq = _stats(rewards, group_ids)
    return _std(sq, counts, unbiased)


def informative_groups(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """``(G,)`` bool, ordered by ascending group id: True where the group's rewards are not all equal.

    DAPO's dynamic sampling keeps only these (an all-equal group has zero advantage everywhere, so it only
    dilutes the batch). Exact comparison of max and min, so no eps; a group of one is not informative.
    Per-sample mask: ``informative_groups(r, g)[group_index(g)[1]]``.
    """
    rewards = _check(rewards, group_ids)
    _, inverse = group_index(group_ids)
    g = int(inverse.max()) + 1 if inverse.numel() else 0
    zeros = rewards.new_zeros(g)
    hi = zeros.scatter_reduce(0, inverse, rewards, reduce="amax", include_self=False)
    lo = zeros.scatter_reduce(0, inverse, rewards, reduce="amin", include_self=False)
    return hi > lo


@ADVANTAGES.register("grpo")
def grpo(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    std_normalize: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """GRPO (DeepSeekMath): ``A_i = (r_i - mean_g) / (std_g + eps)``, std = sample std of the group.

    Shapes: rewards ``(N,)`` float, group_ids ``(N,)`` int -> ``(N,)``. With ``std_normalize=False`` this
    is ``dr_grpo``. All-equal groups and groups of one give 0.
    """
    rewards = _check(rewards, group_ids)
    inverse, counts, means, sq = _stats(rewards, group_ids)
    adv = rewards - means[inverse]
    if std_normalize:
        adv = adv / (_std(sq, counts, unbiased=True)[inverse] + eps)
    return torch.where(counts[inverse] > 1, adv, torch.zeros_like(adv))


@ADVANTAGES.register("dr_grpo")
def dr_grpo(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Dr.GRPO ("Understanding R1-Zero-Like Training"): ``A_i = r_i - mean_g``, no std division.

    Shapes: ``(N,)``, ``(N,)`` -> ``(N,)``. Pair with the ``seq_mean_token_sum_norm`` loss aggregation
    to also drop GRPO's per-sequence length normalisation.
    """
    return grpo(rewards, group_ids, std_normalize=False)


@ADVANTAGES.register("batch_std")
def batch_std(rewards: torch.Tensor, group_ids: torch.Tensor, *, eps: float = 1e-6) -> torch.Tensor:
    """Group-mean baseline, batch-level scale: ``A_i = (r_i - mean_g) / (std_batch + eps)``.

    ``std_batch`` is the sample std of all N rewards (REINFORCE++-baseline, and "Lite PPO" in
    "Tricks or Traps? A Deep Dive into RL for LLM Reasoning"): groups with a small spread are not blown
    up to unit scale. Shapes: ``(N,)``, ``(N,)`` -> ``(N,)``; groups of one give 0.
    """
    rewards = _check(rewards, group_ids)
    inverse, counts, means, _ = _stats(rewards, group_ids)
    n = rewards.numel()
    std = rewards.std(unbiased=True) if n > 1 else rewards.new_zeros(())
    adv = (rewards - means[inverse]) / (std + eps)
    return torch.where(counts[inverse] > 1, adv, torch.zeros_like(adv))


batch_std.batch_level = True  # needs the whole batch at once (no streamed update: rlkit/policy/streaming.py)


@ADVANTAGES.register("rloo")
def rloo(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """RLOO (Ahmadian et al., "Back to Basics"): ``A_i = r_i - mean_{j != i in g} r_j``.

    Equals ``n/(n-1) * (r_i - mean_g)`` for a group of n. Shapes: ``(N,)``, ``(N,)`` -> ``(N,)``;
    groups of one give 0.
    """
    rewards = _check(rewards, group_ids)
    inverse, counts, means, _ = _stats(rewards, group_ids)
    n = counts[inverse]
    adv = (rewards - means[inverse]) * n / (n - 1).clamp(min=1)
    return torch.where(n > 1, adv, torch.zeros_like(adv))
