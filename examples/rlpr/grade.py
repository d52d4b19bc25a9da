"""The held-out judge of the RLPR miniature: neither training reward (not exact match, not the policy's
probability), fixed before any run, written from the task generator's knowledge (examples/rlpr/make_data.py).

Per question the generator lists `accepted` answers (the reference and its paraphrases: "Monday" and "Mon";
"forty-two" and "forty two"; "two o'clock", "2 o'clock", "2:00", "two", "2") and `distractors` (the other
values of the family: the six other days, the other hours, the word whose opposite or plural was asked). A
reply is right when its final answer (the text after `</think>`; an unclosed think block is wrong):

1. contains an accepted answer as a whole phrase after normalisation (case folded; hyphens, underscores and
   punctuation become spaces; apostrophes vanish: "o'clock" = "oclock"; the articles a, an, the dropped),
   so "It is Monday.", "monday", "The answer is Monday!" and "Mon" are right, while "Mondays" and "Monday"
   inside "Mondayish" are not whole words and do not count;
2. and that phrase is not directly negated: "not Monday", "no Monday", "never Monday", "isn't Monday" do not
   count (the substring trap);
3. and, once every accepted phrase is removed, it names no distractor: a hedge ("Monday or Tuesday") is wrong,
   and so is "forty-three" for 42 ("forty" alone is no accepted phrase) -- the number words are matched as
   whole phrases, so "forty-two" for 42 is right although "two" is a distractor (it is part of the accepted
   phrase and removed first).

Known strictness (chosen, documented): a right answer that also mentions a distractor for another reason
("late, not early" for the opposite of "early"; "It may be June" for June, "may" being the month) is refused.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

from rewards.text import final_answer

ARTICLES = {"a", "an", "the"}
NEGATIONS = {"not", "no", "never", "isnt", "aint", "nor"}
_APOS = re.compile(r"['\u2019`]")
_NON_WORD = re.compile(r"[^0-9a-z]+")


def normalise(text: str) -> list[str]:
    """The words of `text` after normalisation (see the module docstring).

    >>> normalise("It's TWO o'clock -- the answer!")
    ['its', 'two', 'oclock', 'answer']
    >>> normalise("forty-two"), normalise("2:00")
    (['forty', 'two'], ['2', '00'])
    """
    words = _NON_WORD.sub(" ", _APOS.sub("", text.casefold())).split()
    return [w for w in words if w not in ARTICLES]


def _find(words: list[str], phrase: list[str]) -> list[int]:
    """Start indices of `phrase` as a whole-word sequence in `words`."""
    n = len(phrase)
    return [i for i in range(len(words) - n + 1) if n and words[i:i + n] == phrase]


def judge_answer(answer: str, accepted: Sequence[str], distractors: Sequence[str] = ()) -> bool:
    """Whether the final answer text `answer` is right (rules 1-3 of the module docstring).

    >>> judge_answer("It is Monday.", ["Monday", "Mon"], ["Tuesday"])
    True
    >>> judge_answer("not Monday", ["Monday"]), judge_answer("Monday or Tuesday", ["Monday"], ["Tuesday"])
    (False, False)
    """
    words = normalise(answer)
    hits: list[tuple[int, int]] = []
    for phrase in sorted({tuple(normalise(a)) for a in accepted if normalise(a)}, key=len, reverse=True):
        for i in _find(words, list(phrase)):
            if any(s <= i < e for s, e in hits):
                continue  # inside a longer accepted phrase already found
            if i > 0 and words[i - 1] in NEGATIONS:
                continue
            hits.append((i, i + len(phrase)))
    if not hits:
        return False
    rest = [w if not any(s <= j < e for s, e in hits) else "\0" for j, w in enumerate(words)]
    return not any(_find(rest, normalise(d)) for d in distractors if normalise(d))


def _spec(gold: Any) -> tuple[list[str], list[str]]:
    """(accepted, distractors) from an `answer` value: {"accepted": [...], "distractors": [...]}, a list of
    accepted answers, or one string."""
    if isinstance(gold, dict):
        return [str(a) for a in gold.get("accepted") or []], [str(d) for d in gold.get("distractors") or []]
    if isinstance(gold, (list, tuple)):
        return [str(a) for a in gold], []
    return [str(gold)], []


def judge(prompts, completions, *, answer: Sequence[Any], **kwargs) -> list[float | None]:
    """1.0 / 0.0 per completion: the judge on its final answer; None for a row without an answer. The
    signature of a plain reward (`rlkit.drivers.ablation_eval.reward_rows_score_fn` wraps it), but it is never a
    training reward here.

    >>> judge(["q"] * 3, ["<think>Fri, Sat</think>\\n\\nIt is Saturday.", "<think>Fri", "Saturday"],
    ...       answer=[{"accepted": ["Saturday"], "distractors": ["Friday"]}] * 3)
    [1.0, 0.0, 1.0]
    """
    if len(answer) != len(completions):
        raise ValueError(f"judge: {len(answer)} answers for {len(completions)} completions")
    out: list[float | None] = []
    for completion, gold in zip(completions, answer):
        if gold is None:
            out.append(None)
            continue
        final = final_answer(completion)
        accepted, distractors = _spec(gold)
        out.append(float(final is not None and judge_answer(final, accepted, distractors)))
    return out
