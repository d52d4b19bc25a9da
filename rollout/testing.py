"""Helpers for rollout tests and debugging: a reference (teacher-forced) logprob pass and weight noise.

Why here and not in tests/: both engine test files, and anyone chasing a logprob mismatch between a rollout
engine and the trainer, need the same question answered: "what does one plain transformers forward pass of
prompt + completion say the logprobs of these completion tokens are?". (Tiny checkpoints come from
`rlkit.models`, which `rollout` must not import; tests get them from conftest fixtures.)
"""
from __future__ import annotations

from typing import Any, Sequence

import torch


def chat_prompt(tokenizer: Any, text: str, with_image: bool = False, enable_thinking: bool = False) -> str:
    """Render one user turn (optionally with one image placeholder) plus the generation prompt."""
    content: Any = [{"type": "image"}, {"type": "text", "text": text}] if with_image else text
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True,
        enable_thinking=enable_thinking,
    )


@torch.no_grad()
def reference_logprobs(
    model: Any, processor: Any, prompt: str, images: Sequence[Any], completion_ids: Sequence[int]
) -> tuple[list[int], list[float]]:
    """(prompt ids, raw logprob of each completion token) from one forward pass of prompt + completion.

    `processor` is the model's processor for vision-language models, its tokenizer for text models.
    """
    if images:
        enc = processor(text=[prompt], images=list(images), return_tensors="pt")
    elif hasattr(processor, "image_processor"):
        enc = processor(text=[prompt], return_tensors="pt")
    else:
        enc = processor([prompt], return_tensors="pt")
    n_prompt = enc["input_ids"].shape[1]
    comp = torch.tensor([list(completion_ids)], dtype=enc["input_ids"].dtype)
    ids = torch.cat([enc["input_ids"], comp], dim=1)
    extra = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask")}
    if "mm_token_type_ids" in extra:  # per-token modality ids (transformers 5): completion tokens are text (0)
        t = extra["mm_token_type_ids"]
        extra["mm_token_type_ids"] = torch.cat([t, torch.zeros(1, comp.shape[1], dtype=t.dtype)], dim=1)
    device = next(model.parameters()).device
    args = {k: v.to(device) for k, v in dict(input_ids=ids, attention_mask=torch.ones_like(ids), **extra).items()}
    logits = model(**args).logits[0, n_prompt - 1 : -1].float()
    lps = torch.log_softmax(logits, dim=-1).gather(-1, comp[0, :, None].to(device))[:, 0]
    return enc["input_ids"][0].tolist(), lps.cpu().tolist()


@torch.no_grad()
def perturb_(model: torch.nn.Module, scale: float = 0.05, seed: int = 0, prefix: str = "") -> list[str]:
    """Add Gaussian noise to every parameter whose name starts with `prefix`, in place. Returns the names."""
    gen = torch.Generator().manual_seed(seed)
    names = []
    for name, p in model.named_parameters():  # tied weights appear once, so they move once
        if name.startswith(prefix):
            p.add_(torch.randn(p.shape, generator=gen).to(p) * scale)
            names.append(name)
    return names
