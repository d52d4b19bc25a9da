"""Fast/deep thinking modes: which mode each sample gets, and how a prompt is rendered in it.

deep: the prompt is rendered with `enable_thinking=True` and the model writes `<think>...</think>` before its
answer; fast: `enable_thinking=False`, the generation prompt already closes an empty think block, and the
model answers directly (Qwen3's chat-template convention). Every sample carries its mode from the start.

The share of deep samples is `modes.deep_ratio`, or, with `modes.schedule`, a function of the step
(`deep_ratio_at`): piecewise-linear through `[step, ratio]` points, constant before the first and after the last.
"""
from __future__ import annotations

import math
import random

from rlkit.records import DEEP, FAST, PromptRow


class ModeError(ValueError):
    pass


def check_schedule(schedule) -> list[tuple[float, float]]:
    """The `[step, deep_ratio]` points of a mode schedule as tuples; ModeError naming the bad point.

    Steps are numbers >= 0, strictly increasing; ratios are numbers in [0, 1]. An empty schedule is valid.
    """
    if not isinstance(schedule, (list, tuple)):
        raise ModeError(f"expected a list of [step, deep_ratio] points, got {type(schedule).__name__} {schedule!r}")
    points = []
    for i, point in enumerate(schedule):
        if not isinstance(point, (list, tuple)) or len(point) != 2:
            raise ModeError(f"point {i}: expected [step, deep_ratio], got {point!r}")
        step, ratio = point
        for what, v in (("step", step), ("deep_ratio", ratio)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ModeError(f"point {i}: {what} must be a finite number, got {v!r}")
        if step < 0:
            raise ModeError(f"point {i}: step must be >= 0, got {step}")
        if not 0.0 <= ratio <= 1.0:
            raise ModeError(f"point {i}: deep_ratio must be within [0, 1], got {ratio}")
        if points and step <= points[-1][0]:
            raise ModeError(f"point {i}: steps must increase strictly, got {step} after {points[-1][0]}")
        points.append((float(step), float(ratio)))
    return points


def deep_ratio_at(step: int, deep_ratio: float, schedule=()) -> float:
    """The deep ratio used at `step`: `deep_ratio` when `schedule` is empty; otherwise linear interpolation
    between the schedule's `[step, ratio]` points, the first point's ratio before it and the last's after it.

    >>> deep_ratio_at(5, 0.0, [[0, 0.25], [10, 0.75]]), deep_ratio_at(20, 0.0, [[0, 0.25], [10, 0.75]])
    (0.5, 0.75)
    """
    points = check_schedule(schedule)
    if not points:
        return float(deep_ratio)
    if step <= points[0][0]:
        return points[0][1]
    for (s0, r0), (s1, r1) in zip(points, points[1:]):
        if step <= s1:
            return r0 + (r1 - r0) * (step - s0) / (s1 - s0)
    return points[-1][1]


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
