"""Per-token estimators of KL(pi_theta || pi_ref) from log-probabilities of sampled tokens.

Why: the policy samples x ~ pi_theta, so the KL to a reference policy is estimated from the two
log-probabilities of each sampled token (Schulman, "Approximating KL Divergence", 2020). With
``log_r = ref_logprobs - logprobs`` (r = pi_ref(x) / pi_theta(x)):

- ``k1 = -log_r``             unbiased, high variance, can be negative.
- ``k2 = 0.5 * log_r ** 2``   biased (low for close policies), low variance, >= 0.
- ``k3 = (r - 1) - log_r``    unbiased, low variance, >= 0 (GRPO's choice in DeepSeekMath).

Every estimator is ``(logprobs (B, T), ref_logprobs (B, T)) -> (B, T)``, elementwise (mask and aggregate
like any per-token loss). Where it is applied -- added to the loss with ``kl_coef`` or subtracted from the
reward -- is the trainer's concern; ``kl_coef: 0`` means no reference model is loaded at all.
"""

from __future__ import annotations

import torch

from .registry import KL_ESTIMATORS

__all__ = ["k1", "k2", "k3", "kl_penalized_rewards", "sequence_k1"]

# exp(20) ~ 5e8: beyond this the estimate is meaningless anyway, and the clamp keeps masked or diverged
# positions from producing inf (verl's "low_var_kl" clamps the same way).
_LOG_RATIO_BOUND = 20.0


def _log_ratio(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(
            f"logprobs and ref_logprobs must have the same shape (B, T), "
            f"got {tuple(logprobs.shape)} and {tuple(ref_logprobs.shape)}"
        )
    return (ref_logprobs.detach() - logprobs).clamp(-_LOG_RATIO_BOUND, _LOG_RATIO_BOUND)


@KL_ESTIMATORS.register("k1")
def k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """``logprobs - ref_logprobs``: ``(B, T), (B, T) -> (B, T)``."""
    return -_log_ratio(logprobs, ref_logprobs)


@KL_ESTIMATORS.register("k2")
def k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """``0.5 * (logprobs - ref_logprobs) ** 2``: ``(B, T), (B, T) -> (B, T)``."""
    return 0.5 * _log_ratio(logprobs, ref_logprobs) ** 2


@KL_ESTIMATORS.register("k3")
def k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """``exp(ref - lp) - (ref - lp) - 1``: ``(B, T), (B, T) -> (B, T)``, >= 0, 0 iff equal."""
    log_r = _log_ratio(logprobs, ref_logprobs)
    return torch.expm1(log_r) - log_r


def sequence_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T) x3 -> (B,): `sum_t mask * (logprobs - ref_logprobs)`, the k1 estimate of KL(policy || ref) of
    each sampled sequence (padding holding -inf/nan is zeroed, never multiplied)."""
    diff = torch.where(mask > 0, logprobs - ref_logprobs, torch.zeros_like(logprobs))
    return diff.sum(-1)


def kl_penalized_rewards(rewards: torch.Tensor, seq_kl: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """(N,), (N,) -> (N,): `r - kl_coef * sum_t k1`, the KL-in-reward form (InstructGPT / PPO-RLHF)."""
    return rewards - kl_coef * seq_kl
