"""The records that flow between the stages of a step. One type per stage; fields documented once here.

    PromptRow  (data)     -> rendered per mode -> RolloutRequest (rollout/)
    Completion (rollout/) -> Sample (this file: one scored completion, with its reward and advantage)
    list[Sample]          -> TrainItem (what the policy worker needs: token ids, images, advantage)
"""
from __future__ import annotations

import dataclasses
from typing import Any

FAST, DEEP = "fast", "deep"
MODES = (FAST, DEEP)


@dataclasses.dataclass
class PromptRow:
    """One data set row after column mapping and validation."""

    index: int  # row index in the source data set (named in every error about this row)
    prompt: str  # the user's text
    images: list  # image file paths or PIL images (empty for text prompts)
    answer: Any  # reference answer (None when the data set has none)
    columns: dict  # every other column, passed to rewards by name
    mode: str | None = None  # pinned thinking mode, or None to draw one


@dataclasses.dataclass
class Sample:
    """One completion of one prompt, scored. `samples.jsonl` holds one of these per line."""

    step: int  # GRPO step that sampled it
    group: int  # index of its prompt within the step (the GRPO group)
    row: PromptRow  # the prompt it answers
    mode: str  # "fast" or "deep"
    prompt_text: str  # the prompt rendered with the chat template (what the engine saw)
    completion: str  # decoded completion
    completion_ids: list  # completion token ids
    rollout_logprobs: list  # the engine's logprob of each completion token
    finish_reason: str  # "stop" or "length" ("prompt_too_long" from the engine: never trained on)
    rewards: dict = dataclasses.field(default_factory=dict)  # reward name -> float or None
    reward: float = 0.0  # weighted sum used for the advantage
    advantage: float = 0.0
    version: int | None = None  # policy version that sampled it (the step whose update made those weights; 0: the initial policy); set with rollout.max_staleness > 0

    def log_record(self) -> dict:
        extra = {} if self.version is None else {"version": self.version}
        return {
            "step": self.step,
            "group": self.group,
            "row": self.row.index,
            "prompt": self.row.prompt,
            "answer": _jsonable(self.row.answer),
            "completion": self.completion,
            "mode": self.mode,
            "rewards": self.rewards,
            "reward": self.reward,
            "advantage": self.advantage,
            "tokens": len(self.completion_ids),
            "finish_reason": self.finish_reason,
            **extra,
        }


@dataclasses.dataclass
class TrainItem:
    """What the policy worker needs to score and train on one sample (picklable: crosses Ray)."""

    prompt_text: str  # rendered prompt; the worker re-tokenises it with its processor (images expanded)
    images: list  # image paths / PIL images of the prompt
    completion_ids: list  # sampled token ids
    advantage: float
    rollout_logprobs: list  # engine logprobs (used for the engine/trainer mismatch metric)


def reward_columns(rows: list[PromptRow], modes: list[str], completion_ids: list[list[int]],
                   prompt_texts: list[str]) -> dict[str, list]:
    """The keyword columns every reward receives, one value per completion: the rows' own columns plus
    `answer`, `mode`, `completion_ids`, `images` and `prompt_text` (the rendered prompt the engine saw)."""
    keys = sorted({k for r in rows for k in r.columns})
    cols = {k: [r.columns.get(k) for r in rows] for k in keys}
    cols["answer"] = [r.answer for r in rows]
    cols["mode"] = list(modes)
    cols["completion_ids"] = [list(ids) for ids in completion_ids]
    cols["images"] = [r.images for r in rows]
    cols["prompt_text"] = list(prompt_texts)
    return cols


def _jsonable(x: Any) -> Any:
    if x is None or isinstance(x, (str, int, float, bool)):
        return x
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    return str(x)
