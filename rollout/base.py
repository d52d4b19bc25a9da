"""Records and the engine interface shared by every rollout backend.

Why so small: a rollout engine has one job in RL post-training, "sample n completions per prompt and say
how likely each sampled token was under the policy that sampled it", plus "take the trainer's new weights".
Everything else (chat templates, rewards, advantages) lives elsewhere. Keeping the records plain dataclasses
(no vLLM or transformers types) lets the trainer, the reward code and the tests handle outputs from either
backend (`VLLMEngine` for speed, `HFEngine` as the reference) without knowing which produced them.

Conventions (as in verl / TRL):
- prompts arrive already rendered with the chat template (`rlkit.models.chat_template`); the engine only
  tokenises them (and expands image placeholders through the model's processor);
- `Completion.logprobs[i]` is log p(token_ids[i] | prompt, token_ids[:i]) under the *raw* model
  distribution, i.e. log_softmax of the unprocessed logits (no temperature, top-p or penalties applied).
  That is vLLM's default `logprobs_mode="raw_logprobs"`, and it is what an importance ratio against the
  trainer's own forward pass needs.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:  # keep `import rollout` free of torch / PIL at import time
    import torch
    from PIL.Image import Image


@dataclasses.dataclass
class SamplingConfig:
    """How to sample. The same object means the same thing to every engine.

    temperature: 0 means greedy (argmax); otherwise logits are divided by it before sampling.
    top_p: nucleus sampling mass in (0, 1]; 1 disables it.
    max_tokens: most new tokens per completion (finish_reason 'length' when reached).
    n: completions per request (a request's own `n` overrides it); GRPO's group size.
    seed: makes sampling reproducible for a given engine (None: not seeded).
    stop_token_ids: extra ids that end a completion besides the model's EOS (the stop id is kept in
        `token_ids`, as vLLM does for EOS).
    banned_token_ids: ids never sampled (logit set to -inf before sampling; reported logprobs stay raw).
        Engines for vision-language models always add the vision placeholder ids (`<|image_pad|>`,
        `<|vision_start|>`, ...): they are input-only, and a completion holding one would make the
        trainer's forward pass look for an image that is not there (random tiny models do sample them).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 64
    n: int = 1
    seed: int | None = None
    stop_token_ids: list[int] | None = None
    banned_token_ids: list[int] | None = None


@dataclasses.dataclass
class RolloutRequest:
    """One prompt to complete.

    prompt: text already rendered with the chat template (image placeholders included, one per image).
    images: PIL images, in the order their placeholders appear in `prompt`; empty for text-only prompts.
    n: completions for this request; None means `SamplingConfig.n`.
    request_id: the caller's index / key, carried through untouched so results can be joined back.
    """

    prompt: str
    images: list[Image] = dataclasses.field(default_factory=list)
    n: int | None = None
    request_id: Any = None


@dataclasses.dataclass
class Completion:
    """One sampled completion.

    text: the decoded completion (special tokens skipped, as the tokenizer's `decode` gives it).
    token_ids: the sampled token ids, EOS / stop id included when the completion stopped on it.
    logprobs: one float per entry of `token_ids`: the sampled token's log-probability under the raw
        (untempered) distribution of the weights that sampled it.
    prompt_token_ids: the prompt as the engine tokenised it (image placeholders expanded to one id per
        image token), so the trainer can rebuild exactly the sequence that was sampled.
    finish_reason: 'stop' (EOS or a stop id), 'length' (max_tokens reached) or 'prompt_too_long' (the prompt does
        not fit the engine's context, vLLM's `max_model_len`: nothing was sampled, `token_ids` is empty).
    """

    text: str
    token_ids: list[int]
    logprobs: list[float]
    prompt_token_ids: list[int]
    finish_reason: str


@runtime_checkable
class Engine(Protocol):
    """What the trainer needs from a rollout backend."""

    def generate(self, requests: Sequence[RolloutRequest], sampling: SamplingConfig) -> list[list[Completion]]:
        """One list per request, in request order, holding that request's n completions."""
        ...

    def update_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Replace the policy weights in place (transformers parameter names, any subset of them)."""
        ...

    def close(self) -> None:
        """Free the engine's memory / processes. The engine is unusable afterwards."""
        ...

    def sleep(self) -> bool:
        """Free what memory the engine can until its next call (a colocated trainer needs it); the next
        `generate` or `update_weights` restores it. Returns False where the backend cannot (then a no-op)."""
        ...


# Config fields naming the vision placeholder tokens of Qwen2-VL / Qwen2.5-VL / Qwen3-VL-style models.
_PLACEHOLDER_FIELDS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")


def placeholder_token_ids(config: dict[str, Any]) -> list[int]:
    """Vision placeholder ids named by a model config (as a dict, top level or `text_config`)."""
    ids = []
    for cfg in (config, config.get("text_config") or {}):
        ids += [cfg[f] for f in _PLACEHOLDER_FIELDS if isinstance(cfg.get(f), int)]
    return sorted(set(ids))


def banned_ids(sampling: SamplingConfig, always: Sequence[int]) -> list[int]:
    """`sampling.banned_token_ids` plus the engine's own always-banned ids."""
    return sorted(set(sampling.banned_token_ids or []) | set(always))


def requests_n(requests: Sequence[RolloutRequest], sampling: SamplingConfig) -> list[int]:
    """The number of completions each request asks for."""
    out = [sampling.n if r.n is None else r.n for r in requests]
    if any(k < 1 for k in out):
        raise ValueError(f"every request needs n >= 1, got {out}")
    return out


def balanced_chunks(sizes: Sequence[int], parts: int) -> list[tuple[int, int]]:
    """Contiguous (lo, hi) ranges over `sizes`, at most `parts` of them, non-empty, with sums as even as a
    greedy cut at the running-total targets total*k/parts gives. Order is kept: chunks concatenate back."""
    total, n = sum(sizes), len(sizes)
    parts = max(1, min(parts, n))
    bounds, acc, i = [0], 0, 0
    for k in range(1, parts):
        target = total * k / parts
        while i < n - (parts - k) and (acc + sizes[i] <= target or i < bounds[-1] + 1):
            acc += sizes[i]
            i += 1
        bounds.append(i)
    bounds.append(n)
    return [(lo, hi) for lo, hi in zip(bounds, bounds[1:]) if hi > lo]
