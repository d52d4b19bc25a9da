"""Fast/deep thinking modes: which mode each sample gets, and how a prompt is rendered in it.

deep: the prompt is rendered with `enable_thinking=True` and the model writes `<think>...</think>` before its
answer; fast: `enable_thinking=False`, the generation prompt already closes an empty think block, and the
model answers directly (Qwen3's chat-template convention). Every sample carries its mode from the start.
"""
from __future__ import annotations

import random

from rlkit.records import DEEP, FAST, PromptRow


class ModeError(ValueError):
    pass


def assign_modes(rows: list[PromptRow], n: int, deep_ratio: float, per: str, rng: random.Random) -> list[list[str]]:
    """A list of `n` modes for each row.

    A row with a pinned `mode` gets it for all its samples. Otherwise each draw is deep with probability
    `deep_ratio` (exactly fast at 0, exactly deep at 1), once per prompt (`per="prompt"`) or per sample.
    """
    out = []
    for row in rows:
        if row.mode is not None:
            out.append([row.mode] * n)
        elif per == "prompt":
            out.append([DEEP if rng.random() < deep_ratio else FAST] * n)
        else:
            out.append([DEEP if rng.random() < deep_ratio else FAST for _ in range(n)])
    return out


def supports_thinking_switch(chat_template: str | None) -> bool:
    return bool(chat_template) and "enable_thinking" in chat_template


def render_prompt(tokenizer, row: PromptRow, mode: str, system_prompt: str = "") -> str:
    """The chat-template text of `row` in `mode` (image placeholders included, generation prompt open)."""
    template = getattr(tokenizer, "chat_template", None)
    if template is None:
        raise ModeError("the model's tokenizer/processor has no chat template; rlkit renders prompts with it")
    if mode == DEEP and not supports_thinking_switch(template if isinstance(template, str) else str(template)):
        raise ModeError(
            "deep mode needs a chat template with the Qwen3 `enable_thinking` switch; this model's template has "
            "none (set modes.deep_ratio: 0, or give the model a template that supports it)"
        )
    content = [{"type": "image"} for _ in row.images] + [{"type": "text", "text": row.prompt}]
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": content}
    ]
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=(mode == DEEP)
    )
