"""DPO-family preference losses over sequence log-probabilities, registered by name in `DPO_LOSSES`.

Why a registry of its own: a DPO loss takes a *pair* of sequences per prompt and a reference model's
log-probabilities, not per-token advantages, so it does not fit the policy-loss signature. The DPO
trainer reads `dpo.loss` from the config and calls `get_dpo_loss(name)(..., **dpo.loss_opts)`; it never
branches on a name. Conventions follow TRL 1.16's `DPOTrainer` (same formulas, same metric names), and
tests/test_dpo_losses.py checks each loss against TRL's own code on identical log-probabilities.

Every loss is

    fn(chosen_logps (B,), rejected_logps (B,), ref_chosen_logps (B,), ref_rejected_logps (B,), *,
       beta=0.1, chosen_lengths=None (B,), rejected_lengths=None (B,), **opts) -> (loss (), metrics)

where `*_logps` are the summed log-probabilities of each completion's tokens given the prompt (and images)
under the trained policy (requires grad) and the frozen reference (detached here), and `*_lengths` are the
completions' token counts (used by length-normalised losses, accepted by all). `loss` is the mean over the
B pairs. Metrics (floats, TRL's names): `rewards/chosen`, `rewards/rejected` (means of the implicit rewards
beta * (logp - ref_logp)), `rewards/margins` (mean of their difference), `rewards/accuracies` (share of
pairs with chosen reward strictly above rejected: 0 at the start, when policy == reference),
`logps/chosen`, `logps/rejected` (means).
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from .registry import Registry

DPO_LOSSES = Registry("DPO loss")

__all__ = ["DPO_LOSSES", "dpo_hinge", "dpo_ipo", "dpo_metrics", "dpo_sigmoid", "get_dpo_loss"]


def get_dpo_loss(name: str) -> Callable:
    """The DPO loss registered as ``name`` (``sigmoid``, ``ipo``, ``hinge``); ValueError listing them otherwise."""
    return DPO_LOSSES.get(name)


def _check(chosen, rejected, ref_chosen, ref_rejected, beta) -> None:
    shape = tuple(chosen.shape)
    if len(shape) != 1:
        raise ValueError(f"chosen_logps must have shape (B,), got {shape}")
    for name, t in (("rejected_logps", rejected), ("ref_chosen_logps", ref_chosen),
                    ("ref_rejected_logps", ref_rejected)):
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have the shape of chosen_logps {shape}, got {tuple(t.shape)}")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")


def dpo_metrics(chosen, rejected, ref_chosen, ref_rejected, beta: float) -> Dict[str, float]:
    """TRL's DPO metrics from the (B,) sequence log-probabilities (see the module docstring)."""
    with torch.no_grad():
        rc = beta * (chosen.detach() - ref_chosen.detach())
        rr = beta * (rejected.detach() - ref_rejected.detach())
        return {
            "rewards/chosen": float(rc.mean()),
            "rewards/rejected": float(rr.mean()),
            "rewards/margins": float((rc - rr).mean()),
            "rewards/accuracies": float((rc > rr).float().mean()),
            "logps/chosen": float(chosen.detach().mean()),
            "logps/rejected": float(rejected.detach().mean()),
        }


def _logratio_delta(chosen, rejected, ref_chosen, ref_rejected) -> torch.Tensor:
    """(B,) (logp_c - ref_c) - (logp_r - ref_r): the quantity every DPO loss is a function of."""
    return (chosen - ref_chosen.detach()) - (rejected - ref_rejected.detach())


@DPO_LOSSES.register("sigmoid")
def dpo_sigmoid(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    chosen_lengths: Optional[torch.Tensor] = None,
    rejected_lengths: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, Dict[str, float]]:
    """DPO (Rafailov et al. 2023, arXiv 2305.18290): ``-log sigmoid(beta * delta)``, mean over pairs.

    ``delta = (logp_c - ref_c) - (logp_r - ref_r)``. With ``label_smoothing = eps > 0`` (conservative DPO:
    the labels are assumed flipped with probability eps) the loss is
    ``-(1 - eps) log sigmoid(beta delta) - eps log sigmoid(-beta delta)``; eps = 0 is TRL's ``sigmoid``.
    Lengths are accepted and unused.
    """
    _check(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    z = beta * _logratio_delta(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    per_pair = -(1.0 - label_smoothing) * F.logsigmoid(z)
    if label_smoothing:
        per_pair = per_pair - label_smoothing * F.logsigmoid(-z)
    return per_pair.mean(), dpo_metrics(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)


@DPO_LOSSES.register("hinge")
def dpo_hinge(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    chosen_lengths: Optional[torch.Tensor] = None,
    rejected_lengths: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, Dict[str, float]]:
    """SLiC hinge (Zhao et al. 2023, arXiv 2305.10425) as TRL writes it: ``relu(1 - beta * delta)``.

    Zero loss (and gradient) once the implicit margin ``beta * delta`` reaches 1. Lengths are unused.
    """
    _check(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
    z = beta * _logratio_delta(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    per_pair = torch.relu(1.0 - z)
    return per_pair.mean(), dpo_metrics(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)


@DPO_LOSSES.register("ipo")
def dpo_ipo(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    length_normalize: bool = True,
    chosen_lengths: Optional[torch.Tensor] = None,
    rejected_lengths: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, Dict[str, float]]:
    """IPO (Azar et al. 2023, arXiv 2310.12036, eq. 17): ``(d - 1 / (2 beta))^2``, mean over pairs.

    With ``length_normalize`` (the default, TRL's form, confirmed by the IPO authors according to TRL) each
    log-ratio is divided by its completion's token count before the difference:
    ``d = (logp_c - ref_c) / len_c - (logp_r - ref_r) / len_r`` (lengths clamped to >= 1), so beta means the
    same at any length; it then needs ``chosen_lengths`` and ``rejected_lengths`` (B,). Without it,
    ``d = delta`` (the paper's sequence-level form).
    """
    _check(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
    c = chosen_logps - ref_chosen_logps.detach()
    r = rejected_logps - ref_rejected_logps.detach()
    if length_normalize:
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError("ipo with length_normalize=True needs chosen_lengths and rejected_lengths (B,)")
        c = c / chosen_lengths.to(c.dtype).clamp(min=1.0)
        r = r / rejected_lengths.to(r.dtype).clamp(min=1.0)
    per_pair = (c - r - 1.0 / (2.0 * beta)) ** 2
    return per_pair.mean(), dpo_metrics(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
