"""Policy-gradient losses for GRPO-family post-training.

Why one function with options rather than one function per paper: PPO-clip (GRPO), DAPO's clip-higher,
dual-clip, GSPO's sequence-level ratio and truncated importance sampling (TIS) are orthogonal switches on
the same clipped surrogate, and runs compare them one switch at a time. The trainer calls
``get_policy_loss(cfg.algorithm.policy_loss)(logprobs, old_logprobs, advantages, mask, **cfg.loss_opts)``
and never branches on a name; an option the loss does not take is a TypeError naming it.

Every loss is ``(logprobs (B, T), old_logprobs (B, T), advantages (B,) or (B, T), mask (B, T), **opts)
-> (loss (), metrics: dict[str, float])``. Positions where ``mask`` is 0 (padding, prompt, empty
completions) never affect the loss, its gradient or the metrics, whatever values they hold.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from .aggregation import aggregate, masked_mean
from .registry import AGGREGATIONS, CORRECTIONS, POLICY_LOSSES

__all__ = ["ppo_clip"]

# verl clamps log-ratios to +-20 too: exp(20) ~ 5e8 is already "infinitely off-policy" and a finite cap
# keeps a single diverged token from producing inf * 0 = NaN downstream.
_LOG_RATIO_BOUND = 20.0


def _check_shapes(logprobs, old_logprobs, advantages, mask, rollout_logprobs) -> None:
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs must have shape (B, T), got {tuple(logprobs.shape)}")
    shape = tuple(logprobs.shape)
    for name, t in (("old_logprobs", old_logprobs), ("mask", mask), ("rollout_logprobs", rollout_logprobs)):
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"{name} must have the shape of logprobs {shape}, got {tuple(t.shape)}")
    if tuple(advantages.shape) not in ((shape[0],), shape):
        raise ValueError(f"advantages must have shape (B,)=({shape[0]},) or (B, T)={shape}, "
                         f"got {tuple(advantages.shape)}")


def _k3(log_ratio: torch.Tensor) -> torch.Tensor:
    """KL(p || q) estimator per sample x ~ p, given log(q(x)/p(x)): (r - 1) - log r >= 0."""
    return torch.expm1(log_ratio) - log_ratio


@POLICY_LOSSES.register("ppo_clip")
def ppo_clip(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: Optional[float] = None,
    ratio_level: str = "token",
    aggregation: str = "token_mean",
    norm_length: Optional[int] = None,
    rollout_logprobs: Optional[torch.Tensor] = None,
    tis_cap: Optional[float] = None,
    correction: Optional[str] = None,
    correction_opts: Optional[dict] = None,
) -> Tuple[torch.Tensor, Dict[str, float]]:
    """Clipped surrogate ``max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high))``, aggregated.

    Args:
        logprobs: ``(B, T)`` log pi_theta of the sampled tokens (requires grad).
        old_logprobs: ``(B, T)`` log pi_old from the trainer before this rollout batch's first update
            (detached here).
        advantages: ``(B,)`` per completion (broadcast over tokens) or ``(B, T)`` per token (detached).
        mask: ``(B, T)`` bool/0-1, 1 on completion tokens that are trained; rows may be all zero.
        clip_low, clip_high: ratio range ``[1 - clip_low, 1 + clip_high]``; DAPO's clip-higher is
            e.g. 0.2 / 0.28, GSPO uses ~3e-4 / 4e-4 with ``ratio_level="sequence"``.
        dual_clip: c > 1 (Ye et al. 2020): for ``A < 0`` the loss is also capped at ``-A c``, so a
            token whose ratio exploded cannot dominate the batch. None disables.
        ratio_level: ``"token"`` (PPO/GRPO) or ``"sequence"`` (GSPO): every token of row b uses
            ``s_b = exp(mean_t m (logprobs - old_logprobs))``; implemented in the GSPO-token form
            ``sg[s_b] * exp(lp_t - sg[lp_t])`` so per-token advantages also work and the gradient of
            ``seq_mean_token_mean`` equals GSPO's exactly.
        aggregation: a registered AGGREGATIONS name (``token_mean``, ``seq_mean_token_mean``,
            ``seq_mean_token_sum_norm``); ``norm_length`` is its constant (Dr.GRPO).
        rollout_logprobs: ``(B, T)`` logprobs the rollout engine (vLLM) reported for the same tokens.
            When given, the engine/trainer mismatch is measured (metrics ``mismatch_*``).
        tis_cap: truncated importance sampling (Yao et al.): multiply each token's loss by
            ``min(exp(old_logprobs - rollout_logprobs), tis_cap)`` (detached). Needs ``rollout_logprobs``.
        correction: a registered off-policy correction (rlkit/algorithms/corrections.py: ``tis``, ``seq_mask``,
            ``icepop``, ``none``) with its keyword options ``correction_opts``: each token's loss is multiplied
            by its weight from ``old_logprobs - rollout_logprobs`` (0 masks it). Needs ``rollout_logprobs``;
            its metrics (``is_weight_mean``, ``is_weight_max``, ``is_masked_frac``, ...) join these.

    Returns:
        ``loss`` (scalar) and float metrics: ``clip_frac`` (= ``clip_frac_low + clip_frac_high``: share of
        valid tokens whose gradient the clip removed), ``approx_kl`` (k3 estimate of KL(old || new) over
        valid tokens), ``ratio_mean``; ``dual_clip_frac`` with ``dual_clip``; ``mismatch_kl`` (k3 estimate
        of KL(rollout || old)), ``mismatch_abs_logprob_diff`` with ``rollout_logprobs``; ``tis_weight_mean``,
        ``tis_frac_capped`` with ``tis_cap``.
    """
    _check_shapes(logprobs, old_logprobs, advantages, mask, rollout_logprobs)
    AGGREGATIONS.get(aggregation)  # unknown name -> ValueError listing the registered ones, before any work
    if ratio_level not in ("token", "sequence"):
        raise ValueError(f"ratio_level must be 'token' or 'sequence', got {ratio_level!r}")
    if not (0.0 <= clip_low < 1.0) or clip_high < 0.0:
        raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0, got {clip_low}, {clip_high}")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    if tis_cap is not None and rollout_logprobs is None:
        raise ValueError("tis_cap needs rollout_logprobs (the rollout engine's logprobs)")
    correct = None
    if correction is not None:
        correct = CORRECTIONS.get(correction)  # unknown name -> ValueError listing the registered ones
        if rollout_logprobs is None:
            raise ValueError(f"correction {correction!r} needs rollout_logprobs (the rollout engine's logprobs: "
                             "rollout.temperature 1.0)")
    elif correction_opts:
        raise ValueError("correction_opts given without a correction")

    valid = mask.bool()
    mask_f = valid.to(logprobs.dtype)
    old = old_logprobs.detach()
    adv = advantages.detach().to(logprobs.dtype)
    adv = adv.unsqueeze(-1).expand_as(logprobs) if adv.dim() == 1 else adv

    token_log_ratio = torch.where(valid, logprobs - old, torch.zeros_like(logprobs))
    token_log_ratio = token_log_ratio.clamp(-_LOG_RATIO_BOUND, _LOG_RATIO_BOUND)
    if ratio_level == "sequence":
        seq_log_ratio = (token_log_ratio * mask_f).sum(-1) / mask_f.sum(-1).clamp(min=1)  # (B,)
        lp = torch.where(valid, logprobs, torch.zeros_like(logprobs))
        log_ratio = seq_log_ratio.detach().unsqueeze(-1) + lp - lp.detach()
    else:
        log_ratio = token_log_ratio
    ratio = torch.exp(log_ratio)

    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped)
    metrics: Dict[str, float] = {}
    if dual_clip is not None:
        cap = -adv * dual_clip
        dual_active = (adv < 0) & (cap < per_token)
        per_token = torch.where(adv < 0, torch.minimum(per_token, cap), per_token)
        metrics["dual_clip_frac"] = float(masked_mean(dual_active.to(mask_f.dtype), mask_f))

    if rollout_logprobs is not None:
        engine_log_ratio = torch.where(valid, old - rollout_logprobs.detach(), torch.zeros_like(old))
        engine_log_ratio = engine_log_ratio.clamp(-_LOG_RATIO_BOUND, _LOG_RATIO_BOUND)
        metrics["mismatch_kl"] = float(masked_mean(_k3(engine_log_ratio), mask_f))
        metrics["mismatch_abs_logprob_diff"] = float(masked_mean(engine_log_ratio.abs(), mask_f))
        if tis_cap is not None:
            raw = torch.exp(engine_log_ratio)
            weight = raw.clamp(max=tis_cap)
            per_token = per_token * weight
            metrics["tis_weight_mean"] = float(masked_mean(weight, mask_f))
            metrics["tis_frac_capped"] = float(masked_mean((raw > tis_cap).to(mask_f.dtype), mask_f))
        if correct is not None:
            weight, corr_metrics = correct(engine_log_ratio, valid, **(correction_opts or {}))
            per_token = per_token * weight.detach().to(per_token.dtype)
            metrics.update(corr_metrics)

    loss = aggregate(per_token, mask_f, aggregation, norm_length=norm_length)

    with torch.no_grad():
        r = ratio.detach()
        low = ((r < 1.0 - clip_low) & (adv < 0)).to(mask_f.dtype)
        high = ((r > 1.0 + clip_high) & (adv > 0)).to(mask_f.dtype)
        metrics["clip_frac_low"] = float(masked_mean(low, mask_f))
        metrics["clip_frac_high"] = float(masked_mean(high, mask_f))
        metrics["clip_frac"] = metrics["clip_frac_low"] + metrics["clip_frac_high"]
        metrics["approx_kl"] = float(masked_mean(_k3(token_log_ratio.detach()), mask_f))
        metrics["ratio_mean"] = float(masked_mean(r, mask_f))
    return loss, metrics
