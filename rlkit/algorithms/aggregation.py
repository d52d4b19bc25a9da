"""Loss aggregation: how per-token losses ``(B, T)`` become the scalar that is differentiated.

Why a separate registry: the choice is orthogonal to the policy loss and changes the objective
(GRPO averages within each sequence, which weights a short answer's tokens more; DAPO averages over all
tokens of the batch; Dr.GRPO divides by a constant so that neither length nor batch composition rescales
the gradient). Every function is ``(values (B, T), mask (B, T), *, norm_length=None) -> scalar`` and
never returns NaN: rows whose mask is all zero (empty completions) contribute nothing.
"""

from __future__ import annotations

from typing import Optional

import torch

from .registry import AGGREGATIONS

__all__ = ["aggregate", "masked_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm", "token_mean"]


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over positions where ``mask`` is nonzero (any shape); 0 if the mask is empty."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


@AGGREGATIONS.register("token_mean")
def token_mean(values: torch.Tensor, mask: torch.Tensor, *, norm_length: Optional[int] = None) -> torch.Tensor:
    """DAPO: ``sum_{b,t} m*v / sum_{b,t} m`` -- every valid token of the batch weighs the same.

    ``(B, T), (B, T) -> ()``. ``norm_length`` is accepted and ignored (uniform signature).
    """
    return masked_mean(values, mask)


@AGGREGATIONS.register("seq_mean_token_mean")
def seq_mean_token_mean(
    values: torch.Tensor, mask: torch.Tensor, *, norm_length: Optional[int] = None
) -> torch.Tensor:
    """GRPO (DeepSeekMath) / GSPO: ``mean_b [ sum_t m*v / sum_t m ]`` over non-empty rows.

    ``(B, T), (B, T) -> ()``. Empty rows are left out of the outer mean (verl's ``agg_loss`` would
    divide by zero there), so an empty completion neither NaNs nor dilutes the others. ``norm_length``
    is ignored.
    """
    mask = mask.to(values.dtype)
    counts = mask.sum(-1)
    per_seq = (values * mask).sum(-1) / counts.clamp(min=1)
    nonempty = (counts > 0).to(values.dtype)
    return (per_seq * nonempty).sum() / nonempty.sum().clamp(min=1)


@AGGREGATIONS.register("seq_mean_token_sum_norm")
def seq_mean_token_sum_norm(
    values: torch.Tensor, mask: torch.Tensor, *, norm_length: Optional[int] = None
) -> torch.Tensor:
    """Dr.GRPO: ``sum_{b,t} m*v / (B * norm_length)`` with a *constant* ``norm_length``.

    ``(B, T), (B, T) -> ()``. Set ``norm_length`` to the generation budget (max new tokens); it is
    required because the padded ``T`` changes from batch to batch, which would reintroduce the length
    bias this aggregation exists to remove.
    """
    if norm_length is None or norm_length <= 0:
        raise ValueError(
            "seq_mean_token_sum_norm needs a positive constant loss_opts.norm_length "
            f"(the max response length), got {norm_length!r}"
        )
    mask = mask.to(values.dtype)
    return (values * mask).sum() / (max(values.shape[0], 1) * float(norm_length))


def aggregate(
    values: torch.Tensor, mask: torch.Tensor, mode: str = "token_mean", *, norm_length: Optional[int] = None
) -> torch.Tensor:
    """Aggregate ``values (B, T)`` under ``mask (B, T)`` with the registered ``mode`` -> scalar."""
    if values.dim() != 2 or mask.shape != values.shape:
        raise ValueError(
            f"values and mask must both have shape (B, T), got {tuple(values.shape)} and {tuple(mask.shape)}"
        )
    return AGGREGATIONS.get(mode)(values, mask, norm_length=norm_length)
