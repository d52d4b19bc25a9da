"""Reading a completion: plain text or TRL messages, the answer after a think block, the last `\\boxed{}`.

Why one module: every rule reward must agree on what "the answer" of a completion is, and must do it in
bounded time on untrusted text. Everything here is a linear scan or a regex without nested quantifiers;
nothing evaluates the text.
"""
from __future__ import annotations

import re
import string

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def completion_text(completion) -> str:
    """The text of a completion, whether rlkit's plain string or TRL's conversational form.

    >>> completion_text("42")
    '42'
    >>> completion_text([{"role": "assistant", "content": "42"}])
    '42'
    >>> parts = [{"type": "text", "text": "4"}, {"type": "image"}, {"type": "text", "text": "2"}]
    >>> completion_text([{"role": "assistant", "content": parts}])
    '42'
    >>> completion_text(None)
    ''
    """
    if completion is None:
        return ""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return _content_text(completion.get("content"))
    if isinstance(completion, (list, tuple)):
        # TRL: a list of messages; the completion is the assistant's (the last message's) content.
        msgs = [m for m in completion if isinstance(m, dict)]
        if not msgs:
            return ""
        assistant = [m for m in msgs if m.get("role", "assistant") == "assistant"] or msgs
        return _content_text(assistant[-1].get("content"))
    return str(completion)


def _content_text(content) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):  # multimodal content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type", "text") == "text")
    return str(content)


def clean_text(text: str) -> str:
    """`text` with unpaired surrogates replaced, so regexes and encoders never raise on invalid unicode.

    >>> clean_text("ok\\ud800")
    'ok\\ufffd'
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return "".join("\ufffd" if 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in text)


def answer_part(text: str, think_open: str = THINK_OPEN, think_close: str = THINK_CLOSE) -> str | None:
    """The answer of a completion: what follows the last think block, or the whole text if there is none.

    None when a think block is opened and never closed (the model ran out of budget while reasoning).

    >>> answer_part("<think>2+2 is 4</think> The answer is 4.")
    ' The answer is 4.'
    >>> answer_part("4")
    '4'
    >>> answer_part("<think>still thinking") is None
    True
    """
    close = text.rfind(think_close)
    if close >= 0:
        return text[close + len(think_close):]
    if think_open in text:
        return None
    return text


def tagged(text: str, open_tag: str, close_tag: str) -> str | None:
    """The content of the last `open_tag ... close_tag` block, or None.

    >>> tagged("<answer> 7 </answer>", "<answer>", "</answer>")
    ' 7 '
    """
    end = text.rfind(close_tag)
    if end < 0:
        return None
    start = text.rfind(open_tag, 0, end)
    if start < 0:
        return None
    return text[start + len(open_tag):end]


def last_boxed(text: str, command: str = "\\boxed") -> str | None:
    """The content of the last complete `\\boxed{...}` (balanced braces), or None. One regex pass: linear time.

    >>> last_boxed(r"so \\boxed{1} no, \\boxed{\\frac{1}{2}}.")
    '\\\\frac{1}{2}'
    >>> last_boxed(r"\\boxed{2} \\boxed{unclosed")
    '2'
    >>> last_boxed("no box") is None
    True
    """
    if command + "{" not in text:
        return None
    stack: list[int] = []  # content start for a box opener, -1 for a plain brace
    best = None
    for m in re.finditer(re.escape(command) + r"\{|[{}]", text):
        tok = m.group()
        if tok == "}":
            if stack:
                start = stack.pop()
                if start >= 0:
                    best = (start, m.start())
        else:
            stack.append(m.end() if len(tok) > 1 else -1)
    return text[best[0]:best[1]] if best else None


def nesting_depth(text: str) -> int:
    """The deepest nesting of (), [] and {} together (unbalanced closers are ignored).

    >>> nesting_depth(r"\\frac{(1+2)}{3}")
    2
    """
    depth = best = 0
    for ch in text:
        if ch in "([{":
            depth += 1
            if depth > best:
                best = depth
        elif ch in ")]}" and depth > 0:
            depth -= 1
    return best


_TEXT_CMD = re.compile(r"\\(?:text|textbf|mathrm|mbox|mathbf)\{([^{}]*)\}")
_STRIP = string.whitespace + ".,;:!?\"'`*$"
_SPACES = re.compile(r"\s+")


def normalize_answer(text: str) -> str:
    """Case-folded, whitespace-collapsed, surrounding punctuation and `\\text{}` wrappers removed.

    Brackets and signs are kept: "(1, 2)" and "-5" mean something.

    >>> normalize_answer("  **Paris.** ")
    'paris'
    >>> normalize_answer(r"\\text{Red}")
    'red'
    >>> normalize_answer("-5")
    '-5'
    """
    text = _TEXT_CMD.sub(r"\1", text)
    text = _SPACES.sub(" ", text.strip(_STRIP))
    return text.strip(_STRIP).casefold()


def final_answer(completion, think_open: str = THINK_OPEN, think_close: str = THINK_CLOSE) -> str | None:
    """The answer part of a completion with a `\\boxed{}` or `<answer>` wrapper removed; None if unfinished.

    >>> final_answer("<think>hmm</think>It is \\\\boxed{B}")
    'B'
    >>> final_answer("<answer>blue</answer>")
    'blue'
    """
    ans = answer_part(clean_text(completion_text(completion)), think_open, think_close)
    if ans is None:
        return None
    inner = tagged(ans, "<answer>", "</answer>")
    if inner is not None:
        ans = inner
    boxed = last_boxed(ans)
    return boxed if boxed is not None else ans
