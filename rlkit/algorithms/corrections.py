"""Off-policy corrections: per-token weights for samples that a different policy (the rollout engine, possibly
several versions behind: rollout.max_staleness) generated than the one being trained.

Why a registry of its own: the corrections are orthogonal to the surrogate (PPO-clip, GSPO, ...) and runs compare
them one at a time; the policy loss looks one up by name (``loss_opts: {correction: icepop, correction_opts:
{...}}``) and multiplies its per-token loss by the weights, as TIS always did.

Every correction is ``(log_ratio (B, T), mask (B, T) bool, **opts) -> (weight (B, T), metrics)``:

- ``log_ratio = old_logprobs - rollout_logprobs``: log pi_trainer - log pi_engine of each sampled token, where
  pi_trainer is the policy before this batch's first update (the "proximal" policy of AReaL's decoupled PPO) and
  pi_engine the weights that sampled it (staleness and engine/trainer numerics both show up here), clamped to
  +-20 by the caller.
- ``weight`` is detached and multiplies the per-token loss; 0 masks a token (its loss and gradient vanish while
  the aggregation's denominator keeps counting it, so micro-batch accumulation stays exact: the worker fixes
  each micro-batch's share from the lengths alone). Positions where ``mask`` is 0 get weight 1 (they never
  count anyway).
- metrics (floats, over valid tokens): ``is_weight_mean``, ``is_weight_max`` (over this call's tokens; the worker
  averages calls token-weighted, so over several micro-batches it is the mean of their maxima), ``is_masked_frac``
  (share of valid tokens with weight 0), ``is_ratio_mean`` (the raw ratio before truncation or masking).
"""
from __future__ import annotations

import math
from typing import Dict, Tuple

import torch

from .registry import CORRECTIONS

Out = Tuple[torch.Tensor, Dict[str, float]]


def _metrics(weight: torch.Tensor, raw: torch.Tensor, valid: torch.Tensor) -> Dict[str, float]:
    n = int(valid.sum())
    if n == 0:
        return {"is_weight_mean": 1.0, "is_weight_max": 1.0, "is_masked_frac": 0.0, "is_ratio_mean": 1.0}
    w, r = weight[valid], raw[valid]
    return {"is_weight_mean": float(w.mean()), "is_weight_max": float(w.max()),
            "is_masked_frac": float((w == 0).float().mean()), "is_ratio_mean": float(r.mean())}


def _band(low: float, high: float, name: str) -> None:
    if not (0.0 < low <= 1.0 <= high) or not math.isfinite(high):
        raise ValueError(f"{name}: need 0 < low <= 1 <= high (finite), got low={low}, high={high}")


@CORRECTIONS.register("none")
def no_correction(log_ratio: torch.Tensor, mask: torch.Tensor) -> Out:
    """Weight 1 everywhere (on-policy, or an explicit choice to ignore the gap); metrics still measure it."""
    valid = mask.bool()
    return torch.ones_like(log_ratio), _metrics(torch.ones_like(log_ratio), log_ratio.exp(), valid)


@CORRECTIONS.register("tis")
def truncated_is(log_ratio: torch.Tensor, mask: torch.Tensor, *, cap: float = 2.0) -> Out:
    """Token-level truncated IS (Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL
    training"): ``w_t = min(exp(log_ratio_t), cap)``; also ``is_frac_capped``.

    Worked example (tests/test_corrections.py): log ratios ``[ln 0.5, 0, ln 3]``, cap 2 -> weights ``[0.5, 1, 2]``,
    mean 3.5/3, max 2, capped share 1/3."""
    if not cap > 0:
        raise ValueError(f"tis: cap must be > 0, got {cap}")
    valid = mask.bool()
    raw = log_ratio.exp()
    weight = torch.where(valid, raw.clamp(max=cap), torch.ones_like(raw))
    m = _metrics(weight, raw, valid)
    m["is_frac_capped"] = float((raw[valid] > cap).float().mean()) if bool(valid.any()) else 0.0
    return weight, m


@CORRECTIONS.register("seq_mask")
def sequence_masked_is(log_ratio: torch.Tensor, mask: torch.Tensor, *, low: float = 0.5, high: float = 2.0,
                       level: str = "geometric", reweight: bool = False) -> Out:
    """Sequence-level masked IS: a whole sequence is dropped (weight 0 on every token) when its ratio leaves
    ``[low, high]``; kept sequences get weight 1, or their ratio with ``reweight``.

    The sequence ratio is ``level="geometric"``: ``exp(mean_t log_ratio_t)`` (length-independent, as GSPO's
    ratio and verl's geometric level), or ``"product"``: ``exp(sum_t log_ratio_t)`` (the exact sequence
    likelihood ratio, which drifts with length). TRL's async trainer masks sequences this way by default.

    Worked example (tests/test_corrections.py): two rows, valid lengths 2 and 2, log ratios
    ``[[ln 2, ln 2], [ln 0.25, 0]]``; geometric ratios ``[2, 0.5]``, products ``[4, 0.25]``. With
    ``[0.5, 2]``, geometric: both kept (bounds inclusive), weights all 1; product: both masked (4 > 2, 0.25 < 0.5),
    masked share 1."""
    if level not in ("geometric", "product"):
        raise ValueError(f"seq_mask: level must be 'geometric' or 'product', got {level!r}")
    _band(low, high, "seq_mask")
    valid = mask.bool()
    lr = torch.where(valid, log_ratio, torch.zeros_like(log_ratio))
    seq = lr.sum(-1)
    if level == "geometric":
        seq = seq / valid.sum(-1).clamp(min=1)
    ratio = seq.exp()  # (B,)
    keep = (ratio >= low) & (ratio <= high)
    per_row = torch.where(keep, ratio if reweight else torch.ones_like(ratio), torch.zeros_like(ratio))
    weight = torch.where(valid, per_row.unsqueeze(-1).expand_as(lr), torch.ones_like(lr))
    m = _metrics(weight, log_ratio.exp(), valid)
    rows = valid.any(-1)
    m["is_seq_masked_frac"] = float((~keep[rows]).float().mean()) if bool(rows.any()) else 0.0
    return weight, m


@CORRECTIONS.register("icepop")
def icepop(log_ratio: torch.Tensor, mask: torch.Tensor, *, low: float = 0.5, high: float = 5.0,
           reweight: bool = True) -> Out:
    """Token masking outside a ratio band (IcePop: the Ling team's note "Small leak can sink a great ship" and
    their Ring-1T report, 2025): a token whose ratio ``k_t = exp(log_ratio_t)`` lies outside ``[low, high]`` gets
    weight 0; inside it gets ``k_t`` (the calibration ``M(k) = k`` on the band), or 1 with ``reweight=False``.

    Worked example (tests/test_corrections.py): log ratios ``[ln 0.25, ln 0.5, 0, ln 4, ln 8]``, band
    ``[0.5, 5]`` -> weights ``[0, 0.5, 1, 4, 0]``: mean 5.5/5 = 1.1, max 4, masked share 2/5."""
    _band(low, high, "icepop")
    valid = mask.bool()
    raw = log_ratio.exp()
    inside = (raw >= low) & (raw <= high)
    kept = raw if reweight else torch.ones_like(raw)
    weight = torch.where(valid, torch.where(inside, kept, torch.zeros_like(raw)), torch.ones_like(raw))
    return weight, _metrics(weight, raw, valid)
