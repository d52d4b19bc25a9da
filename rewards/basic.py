"""Answer-matching rewards that need no maths: normalised exact match and multiple choice.

Why here and small: these are the foundation loop's first rewards (VQA-style short answers, lettered
options). Both read the answer the same way (`text.final_answer`: after the think block, inside `\\boxed{}`
or `<answer>` if present) and return None when the reference is missing, so a row without an answer is
"not applicable", never a silent 0.
"""
from __future__ import annotations

import re

from rewards.registry import register_reward
from rewards.text import final_answer, normalize_answer

_MAX_SCAN = 4000  # answers are read from their last few thousand characters: linear time on megabyte text


def _column(kwargs: dict, key: str, n: int) -> list:
    col = kwargs.get(key)
    if col is None:
        return [None] * n
    if len(col) != n:
        raise ValueError(f"column {key!r} has {len(col)} values for {n} completions")
    return list(col)


@register_reward("exact_match")
def exact_match(prompts, completions, *, answer_key: str = "answer", **kwargs) -> list[float | None]:
    r"""1.0 when the answer equals the reference after normalisation, else 0.0; None without a reference.

    Normalisation: the part after `</think>`, the content of a last `\boxed{}`/`<answer>`, case, surrounding
    whitespace and punctuation (`.,;:!?"'*$`), `\text{}` wrappers. An unclosed think block scores 0.0.

    >>> exact_match(["Capital of France?"] * 5, ["Paris.", "<think>hmm</think> **paris**", r"\boxed{Paris}", "Lyon",
    ...             "<think>Paris"], answer=["paris"] * 5)
    [1.0, 1.0, 1.0, 0.0, 0.0]
    >>> exact_match([[{"role": "user", "content": "Colour?"}]], [[{"role": "assistant", "content": " Red "}]],
    ...             answer=["red"])
    [1.0]
    >>> exact_match(["q"], ["x"], answer=[None])
    [None]
    """
    golds = _column(kwargs, answer_key, len(completions))
    out: list[float | None] = []
    for completion, gold in zip(completions, golds):
        if gold is None:
            out.append(None)
            continue
        ans = final_answer(completion)
        if ans is None:
            out.append(0.0)
            continue
        out.append(float(normalize_answer(ans[-_MAX_SCAN:]) == normalize_answer(str(gold))))
    return out


_LETTER_ALONE = re.compile(r"^\s*[\(\[]?([A-Za-z])[\)\]]?\s*[.:]?\s*$")
_LETTER_LEAD = re.compile(r"^\s*[\(\[]?([A-Z])(?:[\)\]]|[.:](?:\s|$))")
_ANSWER_IS = re.compile(
    r"(?i:answer|option|choice)(?:\s+is)?\s*[:\-]?\s*"  # "answer is", "Answer:", "option"
    r"(?:[\(\[]([A-Za-z])[\)\]]|([A-Z])(?![A-Za-z0-9]))"  # "(b)" or a capital letter standing alone
)


def _options(choices) -> dict[str, str]:
    """Letter -> normalised option text from a list (A, B, ... in order) or a dict."""
    if isinstance(choices, dict):
        return {str(k).strip().upper(): normalize_answer(str(v)) for k, v in choices.items()}
    if isinstance(choices, (list, tuple)):
        return {chr(ord("A") + i): normalize_answer(str(v)) for i, v in enumerate(choices[:26])}
    return {}


def pick_letter(answer: str, letters: str) -> str | None:
    """The option letter an answer names, or None.

    >>> [pick_letter(a, "ABCD") for a in ["B", "(c)", "D) 12", "The answer is (A).", "E", "I think so"]]
    ['B', 'C', 'D', 'A', None, None]
    """
    tail = answer[-_MAX_SCAN:]
    m = _LETTER_ALONE.match(tail) or _LETTER_LEAD.match(tail)
    if m is None:
        hits = list(_ANSWER_IS.finditer(tail))
        m = hits[-1] if hits else None
    if m is None:
        return None
    letter = next(g for g in m.groups() if g).upper()
    return letter if letter in letters else None


@register_reward("multiple_choice")
def multiple_choice(prompts, completions, *, answer_key: str = "answer", choices_key: str = "choices",
                    letters: str = "ABCDEFGHIJ", **kwargs) -> list[float | None]:
    """1.0 when the completion picks the reference option, by letter or by the option's text; else 0.0.

    The reference is a letter, or an option's text when a `choices` column (list, or letter -> text dict)
    is given. Without choices, letters are compared and texts are compared after normalisation.

    >>> multiple_choice([""] * 6, ["B", "The answer is (b)", "blue", r"\\boxed{C}", "A", "<think>B"],
    ...                 answer=["B", "B", "B", "blue", "blue", "B"], choices=[["red", "blue", "green"]] * 6)
    [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    >>> multiple_choice(["Pick one"], ["Answer: D"], answer=["D"])
    [1.0]
    """
    golds = _column(kwargs, answer_key, len(completions))
    all_choices = _column(kwargs, choices_key, len(completions))
    out: list[float | None] = []
    for completion, gold, choices in zip(completions, golds, all_choices):
        if gold is None:
            out.append(None)
            continue
        options = _options(choices)
        valid = "".join(sorted(options)) if options else letters
        gold_text = normalize_answer(str(gold))
        gold_letter = pick_letter(str(gold), valid) if len(gold_text) <= 3 else None
        if gold_letter is None:
            gold_letter = next((k for k, v in options.items() if v == gold_text), None)
        ans = final_answer(completion)
        if ans is None:
            out.append(0.0)
            continue
        ans_text = normalize_answer(ans[-_MAX_SCAN:])
        letter = pick_letter(ans, valid)
        if letter is None:
            letter = next((k for k, v in options.items() if v == ans_text), None)
        if gold_letter is not None:
            out.append(float(letter == gold_letter))
        else:
            out.append(float(ans_text == gold_text))
    return out
