"""The policy worker's batch layout: prompt encodings and the padded tensors of one (micro-)batch.

    [left pad][prompt (images expanded)][completion][right pad]
                                      ^ every completion starts in the same column P

so `logits_to_keep = Tc + 1` returns exactly the logits that predict the completion tokens. Also the helpers
that carry per-item values across layouts and scale micro-batch losses to the whole batch's aggregate. Plain
functions over `TrainItem`s (rlkit.records), tested through the worker.
"""
from __future__ import annotations

import hashlib
from typing import Any

import torch

from rlkit.algorithms import aggregate
from rlkit.records import TrainItem


def image_digest(image, memo: dict[int, str]) -> str:
    """A content key for an image (PIL image, array or tensor): equal pixels give equal keys."""
    if id(image) not in memo:
        if hasattr(image, "tobytes") and hasattr(image, "size") and hasattr(image, "mode"):  # PIL
            data, shape = image.tobytes(), f"{image.mode}{image.size}"
        else:
            arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else image
            data, shape = arr.tobytes(), f"{arr.dtype}{arr.shape}"
        memo[id(image)] = shape + hashlib.blake2b(data, digest_size=16).hexdigest()
    return memo[id(image)]


def encode_prompt(processor, tokenizer, prompt_text: str, images: list) -> dict[str, torch.Tensor]:
    """`{"ids": (P,)}` plus, with images and a processor, `pixel_values`, `image_grid_thw`, `mm_types` (P,)."""
    if processor is not None and images:
        enc = processor(text=[prompt_text], images=list(images), return_tensors="pt", add_special_tokens=False)
        entry = {"ids": enc["input_ids"][0], "pixel_values": enc["pixel_values"], "image_grid_thw": enc["image_grid_thw"]}
        if "mm_token_type_ids" in enc:  # transformers 5: which prompt tokens are image tokens (mrope)
            entry["mm_types"] = torch.as_tensor(enc["mm_token_type_ids"][0])
        return entry
    return {"ids": tokenizer(prompt_text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]}


def build_batch(items: list[TrainItem], prompts: list[dict], pad: int) -> dict[str, Any]:
    """Tensors for `items` (prompts[i] = encode_prompt of items[i]): input_ids / attention_mask (B, P+Tc),
    completion_ids / mask / rollout_logprobs (B, Tc), Tc, and for VLMs mm_token_type_ids (B, P+Tc),
    pixel_values, image_grid_thw (I, 3) and image_keys (I,) (equal keys: the same encoding)."""
    P = max(len(p["ids"]) for p in prompts)
    Tc = max(1, max(len(it.completion_ids) for it in items))
    B = len(items)
    ids = torch.full((B, P + Tc), pad, dtype=torch.long)
    attn = torch.zeros((B, P + Tc), dtype=torch.long)
    comp = torch.full((B, Tc), pad, dtype=torch.long)
    mask = torch.zeros((B, Tc), dtype=torch.float32)
    rollout = torch.zeros((B, Tc), dtype=torch.float32)
    mm_types = torch.zeros((B, P + Tc), dtype=torch.long) if any("mm_types" in p for p in prompts) else None
    for b, (it, p) in enumerate(zip(items, prompts)):
        n = len(p["ids"])
        ids[b, P - n:P] = p["ids"]
        if mm_types is not None and "mm_types" in p:
            mm_types[b, P - n:P] = p["mm_types"]
        attn[b, P - n:P] = 1
        c = torch.tensor(it.completion_ids, dtype=torch.long)
        ids[b, P:P + len(c)] = c
        attn[b, P:P + len(c)] = 1
        comp[b, :len(c)] = c
        mask[b, :len(c)] = 1.0
        if it.rollout_logprobs:
            rollout[b, :len(it.rollout_logprobs)] = torch.tensor(it.rollout_logprobs[:Tc], dtype=torch.float32)
    batch = {"input_ids": ids, "attention_mask": attn, "completion_ids": comp, "mask": mask,
             "rollout_logprobs": rollout, "Tc": Tc}
    if mm_types is not None:
        batch["mm_token_type_ids"] = mm_types
    imgs = [p for p in prompts if "pixel_values" in p]
    if imgs:
        # one entry per sequence, in order (shared prompts repeat their tensors, as the model expects)
        batch["pixel_values"] = torch.cat([p["pixel_values"] for p in prompts if "pixel_values" in p])
        batch["image_grid_thw"] = torch.cat([p["image_grid_thw"] for p in prompts if "image_grid_thw" in p])
        # equal keys = the same processor output (a shared prompt): its images are encoded once
        batch["image_keys"] = [(id(p), k) for p in imgs for k in range(len(p["image_grid_thw"]))]
    return batch


# ---- per-item values and loss scaling across micro-batches (used by the worker's update)
def _per_item(logprobs: torch.Tensor, mb: dict) -> dict[int, torch.Tensor]:
    """(B, Tc) -> {item index: (L_i,) its completion's values}, keyed by `mb["rows"]`."""
    lengths = mb["mask"].sum(-1).long().tolist()
    return {r: logprobs[b, :lengths[b]].detach() for b, r in enumerate(mb["rows"])}


def _gather(per_item, mb: dict, like: torch.Tensor) -> torch.Tensor:
    """Per-item values back into the (B, Tc) layout of `mb`; padding holds `like` (detached), so a masked
    position's difference to `like` is 0, never inf."""
    out = like.detach().clone()
    for b, r in enumerate(mb["rows"]):
        out[b, :len(per_item[r])] = per_item[r]
    return out


def _length_mask(lengths: list[int]) -> torch.Tensor:
    # float64: the aggregation weights and scales derived from it are a few numbers per step, and their
    # rounding must not depend on how a batch is split into micro-batches or ranks (tests/test_fsdp.py)
    T = max(1, max(lengths) if lengths else 1)
    return (torch.arange(T).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).to(torch.float64)


def _weights(mask: torch.Tensor, mode: str, norm_length) -> torch.Tensor:
    """d aggregate / d values: the weight each token has in the aggregated scalar (all aggregations are linear)."""
    with torch.enable_grad():  # also under no_grad (PolicyWorker.loss)
        v = torch.zeros_like(mask, requires_grad=True)
        aggregate(v, mask, mode, norm_length=norm_length).backward()
    return v.grad


def _aggregation_scale(full_weights: torch.Tensor, start: int, micro_mask: torch.Tensor, mode: str,
                       norm_length) -> float:
    """Factor that turns a micro-batch's own aggregate into its share of the whole batch's aggregate.

    `full_weights`: `_weights` of the whole (mini-)batch's mask, computed once per optimizer step. Every
    registered aggregation is a weighted sum of token values whose weights, restricted to a subset of rows,
    are proportional to the weights the subset gets on its own; the factor is the ratio of the two weight
    totals. No branch on the aggregation's name.
    """
    B, T = micro_mask.shape
    full_w = full_weights[start:start + B].sum()
    own_w = _weights(micro_mask.to(torch.float64), mode, norm_length).sum()
    return float(full_w / own_w) if float(own_w) > 0 else 0.0


def new_accumulator() -> dict:
    """What the worker's `accumulate` adds to over micro-batches: summed scaled loss, token count, and
    token-weighted metric sums."""
    return {"loss": 0.0, "weight": 0.0, "totals": {}}


def add_to_accumulator(acc: dict, loss: float, mb: dict, metrics: dict) -> None:
    """Add one micro-batch's scaled loss, its token count and its token-weighted metrics to `acc`."""
    w = float(mb["mask"].sum())
    acc["loss"] += loss
    acc["weight"] += w
    for k, v in metrics.items():
        acc["totals"][k] = acc["totals"].get(k, 0.0) + float(v) * w


def relative_row_weights(lengths: list[int], mode: str, norm_length) -> torch.Tensor:
    """(B,) each row's weight in the aggregate, relative to a fixed reference row (one token long).

    The weights of a streamed step (rlkit/policy/streaming.py), whose batch arrives in parts: the aggregate's
    normaliser (total tokens, total sequences) is known only when the last part is in, but the ratio of two
    rows' weights does not depend on the rest of the batch (the property `_aggregation_scale` relies on), so
    each part's rows are weighted against a reference row appended to that part alone. The whole batch's
    aggregate is these weights times `sum(_weights(batch)) / sum(relative weights of every row)`.
    """
    w = _weights(_length_mask(list(lengths) + [1]), mode, norm_length).sum(-1)
    if not float(w[-1]) > 0:
        raise ValueError(f"aggregation {mode!r} gives a one-token row no weight; it cannot be streamed")
    return w[:-1] / w[-1]


def step_metrics(update_log: list[dict], lengths: list[int], compute_s: float, skipped_updates: int) -> dict:
    """A train step's metrics from its optimizer steps' entries (`_weight`: their token weight): token-weighted
    means of their metrics; loss, grad norm and skips averaged over steps; the run's skipped updates so far."""
    totals: dict[str, float] = {}
    weight_sum, n_steps = 0.0, len(update_log)
    for entry in update_log:
        weight_sum += entry["_weight"]
        for key, v in entry.items():
            if key not in ("epoch", "mini_batch", "items", "_weight", "loss", "grad_norm", "update_skipped"):
                totals[key] = totals.get(key, 0.0) + v * entry["_weight"]
    out = {f"train/{k}": v / max(weight_sum, 1.0) for k, v in totals.items()}
    out.update({
        "train/loss": sum(e["loss"] for e in update_log) / n_steps,
        "train/grad_norm": sum(e["grad_norm"] for e in update_log) / n_steps,
        "train/skipped_updates": float(skipped_updates),
        "train/update_skipped": sum(e["update_skipped"] for e in update_log) / n_steps,
        "train/optimizer_steps": float(n_steps),
        "train/tokens": float(sum(lengths)),
        "time/update_compute_s": compute_s,
    })
    return out
