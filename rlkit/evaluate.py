"""Greedy answers from a rollout engine, for held-out evaluation.

`engine_generate_fn(engine, processor)` turns any `rollout` engine (vLLM by default, or the transformers
reference) into the `generate_fn(items) -> list[str]` that `rlkit.vqa_eval.evaluate_vqa` takes: each item
`{"prompt": ..., "image": path | PIL | None}` is rendered in the requested mode exactly as the GRPO loop
renders it, and answered greedily.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from rlkit.data import open_image
from rlkit.modes import render_prompt
from rlkit.records import FAST, PromptRow
from rollout import RolloutRequest, SamplingConfig


def engine_generate_fn(engine, processor, *, mode: str = FAST, max_tokens: int = 8,
                       system_prompt: str = "") -> Callable[[Sequence[dict[str, Any]]], list[str]]:
    sampling = SamplingConfig(temperature=0.0, max_tokens=max_tokens, n=1, seed=0)

    def generate(items: Sequence[dict[str, Any]]) -> list[str]:
        requests = []
        for i, it in enumerate(items):
            images = [open_image(it["image"])] if it.get("image") is not None else []
            row = PromptRow(i, it["prompt"], images, None, {})
            requests.append(RolloutRequest(prompt=render_prompt(processor, row, mode, system_prompt), images=images))
        return [group[0].text for group in engine.generate(requests, sampling)]

    return generate
