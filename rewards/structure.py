"""Rewards on a completion's shape, aware of fast/deep mode: the think format and the DAPO overlong penalty.

Why mode-aware: rlkit trains fast and deep modes in one run (MiniCPM-V 4.5's hybrid RL). Deep samples must
reason in one think block then answer; fast samples must answer directly. Their length budgets differ too,
so each mode has its own. The `mode` column comes from the loop ("fast"/"deep"); without it `default_mode`
applies (TRL datasets have no mode column).
"""
from __future__ import annotations

from rewards.registry import register_reward
from rewards.text import THINK_CLOSE, THINK_OPEN, clean_text, completion_text


def _modes(kwargs: dict, n: int, default_mode: str) -> list[str]:
    modes = kwargs.get("mode")
    if modes is None:
        return [default_mode] * n
    return [m if m is not None else default_mode for m in modes]


def _answer_ok(answer: str, answer_open: str | None, answer_close: str | None) -> bool:
    """Non-empty answer text; with answer tags: exactly one `<answer>non-empty</answer>` and nothing around it."""
    answer = answer.strip()
    if not answer_open:
        return bool(answer)
    if answer.count(answer_open) != 1 or answer.count(answer_close) != 1:
        return False
    if not (answer.startswith(answer_open) and answer.endswith(answer_close)):
        return False
    return bool(answer[len(answer_open):-len(answer_close)].strip())


def format_ok(text: str, mode: str, think_open: str = THINK_OPEN, think_close: str = THINK_CLOSE,
              answer_open: str | None = None, answer_close: str | None = None) -> bool:
    """Whether `text` has the right shape for `mode`.

    deep: optional leading whitespace, exactly one `<think>` ... `</think>` with non-empty reasoning, then a
    non-empty answer. fast: no think tag at all, and a non-empty answer.

    >>> format_ok("<think>2+2=4</think>\\n4", "deep"), format_ok("4", "deep"), format_ok("4", "fast")
    (True, False, True)
    >>> format_ok("<think>a</think><think>b</think>4", "deep"), format_ok("<think>a</think>", "deep")
    (False, False)
    >>> format_ok("<think>x</think>4", "fast"), format_ok("  ", "fast")
    (False, False)
    """
    n_open, n_close = text.count(think_open), text.count(think_close)
    if mode == "fast":
        return n_open == 0 and n_close == 0 and _answer_ok(text, answer_open, answer_close)
    if mode != "deep":
        raise ValueError(f"mode must be 'fast' or 'deep', got {mode!r}")
    body = text.lstrip()
    if n_open != 1 or n_close != 1 or not body.startswith(think_open):
        return False
    close = body.index(think_close)
    reasoning = body[len(think_open):close]
    return bool(reasoning.strip()) and _answer_ok(body[close + len(think_close):], answer_open, answer_close)


@register_reward("format")
def think_format(prompts, completions, *, think_open: str = THINK_OPEN, think_close: str = THINK_CLOSE,
                 answer_open: str | None = None, answer_close: str | None = None, default_mode: str = "deep",
                 **kwargs) -> list[float | None]:
    """1.0 when a completion has its mode's format (see `format_ok`), else 0.0. Tags are configurable.

    >>> think_format([""] * 4, ["<think>r</think>A", "A", "A", "<think>r</think>A"],
    ...              mode=["deep", "deep", "fast", "fast"])
    [1.0, 0.0, 1.0, 0.0]
    >>> think_format([""], ["<reason>r</reason><answer>7</answer>"], think_open="<reason>", think_close="</reason>",
    ...              answer_open="<answer>", answer_close="</answer>")
    [1.0]
    """
    if bool(answer_open) != bool(answer_close):
        raise ValueError("give both answer_open and answer_close, or neither")
    modes = _modes(kwargs, len(completions), default_mode)
    return [float(format_ok(clean_text(completion_text(c)), m, think_open, think_close, answer_open, answer_close))
            for c, m in zip(completions, modes)]


def overlong_penalty(length: int, max_len: int, cache: int) -> float:
    """DAPO's soft overlong punishment (arXiv 2503.14476, eq. 13).

    0 up to `max_len - cache`, then a linear ramp to -1 at `max_len`, and -1 beyond.

    >>> [overlong_penalty(n, 100, 20) for n in (50, 80, 90, 100, 101)]
    [0.0, 0.0, -0.5, -1.0, -1.0]
    """
    if cache < 0 or cache > max_len:
        raise ValueError(f"need 0 <= cache <= max_len, got cache={cache}, max_len={max_len}")
    start = max_len - cache
    if length <= start:
        return 0.0
    if length <= max_len:
        return (start - length) / cache
    return -1.0


def _per_mode(value, mode: str, what: str):
    if isinstance(value, dict):
        return value.get(mode)
    if value is None:
        raise ValueError(f"length reward needs {what}")
    return value


@register_reward("length")
def length_penalty(prompts, completions, *, max_len=None, cache=None, unit: str = "tokens", default_mode: str = "deep",
                   **kwargs) -> list[float | None]:
    """DAPO soft overlong penalty with a budget per mode (0 inside the budget, down to -1 at `max_len`).

    `max_len` and `cache` are numbers (all modes) or dicts keyed by mode, e.g. `{"fast": 256, "deep": 2048}`;
    a mode missing from the dict gets None. `unit="tokens"` counts `completion_ids` (passed by the loop and by
    TRL); `unit="chars"` counts characters.

    >>> length_penalty(["", ""], ["", ""], completion_ids=[[0] * 90, [0] * 90], mode=["fast", "deep"],
    ...                max_len={"fast": 100, "deep": 1000}, cache={"fast": 20, "deep": 200})
    [-0.5, 0.0]
    >>> length_penalty([""], ["abcdef"], max_len=5, cache=2, unit="chars")
    [-1.0]
    """
    if unit not in ("tokens", "chars"):
        raise ValueError(f"unit must be 'tokens' or 'chars', got {unit!r}")
    modes = _modes(kwargs, len(completions), default_mode)
    ids = kwargs.get("completion_ids")
    if unit == "tokens" and ids is None:
        raise ValueError("length reward with unit='tokens' needs the completion_ids column (or use unit='chars')")
    out: list[float | None] = []
    for i, (completion, mode) in enumerate(zip(completions, modes)):
        budget, margin = _per_mode(max_len, mode, "max_len"), _per_mode(cache, mode, "cache")
        if budget is None:
            out.append(None)
            continue
        margin = 0 if margin is None else margin
        length = len(ids[i]) if unit == "tokens" else len(completion_text(completion))
        out.append(overlong_penalty(length, int(budget), int(margin)))
    return out
