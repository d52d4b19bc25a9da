"""Run the vision tower once per distinct image of a batch, not once per sequence.

Why: a GRPO batch holds n completions of each prompt, so every image appears n times (8 is typical). The
policy's forward would encode each copy (and, in training, backpropagate through each copy), spending
n times the vision compute that the batch needs. Here the distinct images are encoded once and their
features are handed to the model through transformers' `mm_encoder_outputs` argument (the precomputed
encoder outputs that multimodal models accept in place of `pixel_values`); `image_grid_thw` still lists
every image, so positions (mrope) are unchanged. The result is the same computation: the same features
enter the same places, and in backward the gradients of the copies add up in the one encoding.

Applies only where it is safe: the model's forward takes `mm_encoder_outputs`, it has `get_image_features`,
and the encoder output carries nothing per image but `pooler_output` (a model that also returns per-image
side features, such as Qwen3-VL's deepstack features, keeps the plain path). Otherwise, and when a batch
has no repeated image, the batch is passed through unchanged, unless `always` (trainer.strategy fsdp2): then
the tower runs here, before the model's forward, whatever the batch holds, because under FSDP2 the vision
tower and the root are separate units whose weight all-gathers are collectives: every rank must reach them
in the same order, and a rank whose micro-batch happens to repeat an image must not take another path than
one whose micro-batch does not.
"""
from __future__ import annotations

import inspect
from typing import Any

import torch

# encoder-output fields that are not per-image data the language model consumes
_IGNORED_FIELDS = {"pooler_output", "last_hidden_state", "hidden_states", "attentions"}


def _unwrap(model):
    """The transformers model under a peft wrapper (whose forward passes keyword arguments through)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supports_dedup(model) -> bool:
    """True if `model` accepts precomputed image features (`mm_encoder_outputs`) and can compute them."""
    base = _unwrap(model)
    try:
        params = inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False
    return "mm_encoder_outputs" in params and callable(getattr(base, "get_image_features", None))


def image_inputs(model, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor, image_keys: list,
                 always: bool = False) -> dict[str, Any]:
    """The image keyword arguments for `model(...)`, encoding each distinct image once.

    pixel_values: (sum_i patches_i, D) patch rows of every image in batch order (patches_i = prod(grid_thw[i]));
    image_grid_thw: (I, 3); image_keys: I hashable keys, equal keys meaning the same image (same tensor rows).
    Returns {"pixel_values", "image_grid_thw"} (plain path) or {"mm_encoder_outputs", "image_grid_thw"}.
    """
    plain = {"pixel_values": pixel_values, "image_grid_thw": image_grid_thw}
    if len(image_keys) != int(image_grid_thw.shape[0]):
        raise ValueError(f"{len(image_keys)} image keys for {int(image_grid_thw.shape[0])} images")
    first: dict = {}
    for i, k in enumerate(image_keys):
        first.setdefault(k, i)
    if (len(first) == len(image_keys) and not always) or not supports_dedup(model):
        return plain
    sizes = image_grid_thw.prod(-1).tolist()
    starts = [0]
    for s in sizes[:-1]:
        starts.append(starts[-1] + s)
    unique = sorted(first.values())
    rows = torch.cat([pixel_values[starts[u]:starts[u] + sizes[u]] for u in unique])
    out = _unwrap(model).get_image_features(rows, image_grid_thw[unique], return_dict=True)
    extra = [f for f, v in out.items() if v is not None and f not in _IGNORED_FIELDS]
    if extra:  # per-image side outputs we would have to expand too: keep the plain path
        return plain
    slot = {u: j for j, u in enumerate(unique)}
    out.pooler_output = tuple(out.pooler_output[slot[first[k]]] for k in image_keys)
    return {"mm_encoder_outputs": {"image": out}, "image_grid_thw": image_grid_thw}
