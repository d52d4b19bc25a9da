r"""Math answer equivalence: rlkit's guards around math-verify (which does the extraction and comparison).

Why guards: math-verify parses LaTeX with latex2sympy (an ANTLR grammar that builds sympy objects: no
`eval`) and plain arithmetic with sympy's `parse_expr` only after a regex has restricted the text to digits,
`.`, spaces and `+-*/^()×÷` (so no name, call or attribute can reach Python). It can still be made slow or
huge: parsing cost grows steeply with bracket nesting, and comparing `9^{9^{9^9}}` or `(10^{100})!` never
finishes. So before math-verify sees a completion we
  1. take the answer part (after `</think>`, inside `<answer>`), then the last `\boxed{}` if any,
  2. keep only its last `max_answer_chars` characters and give 0.0 when brackets nest deeper than `max_nesting`,
  3. rewrite scientific notation (`1e3` -> `1\times 10^{3}`; math-verify reads `1e3` as 1*e*3),
and after parsing, before comparing, we give 0.0 to answers whose integer size bound exceeds `max_digits`
(exponent towers, huge factorials): no reference answer in a dataset is that large (`max_digits=None`: off).
The hard time bound is the scorer's (a killable worker process); inside TRL, math-verify's own signal
timeout applies in the main thread.
"""
from __future__ import annotations

import functools
import logging
import math
import re
import threading

from rewards.registry import register_reward
from rewards.text import answer_part, clean_text, completion_text, last_boxed, nesting_depth, tagged

_SCI = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)[eE]([+-]?\d{1,4})(?![\w.])")
_UNIT_TEXT = re.compile(r"\\(?:text|mathrm|mbox)\{\s*([A-Za-z]+)\s*\}\s*$")
_UNIT_PLAIN = re.compile(r"^\s*-?[\d.,/]+\s*([A-Za-z]{1,12})\s*\.?\s*$")

for _name in ("math_verify", "math_verify.parser", "math_verify.grader", "latex2sympy2_extended"):
    logging.getLogger(_name).setLevel(logging.ERROR)  # its "timeout disabled" and parse warnings are per call


def _sci_to_latex(text: str) -> str:
    r"""`1.5e-3` -> `1.5\times 10^{-3}`.

    >>> _sci_to_latex("1e3 and x2e5 and 2.5E-2")
    '1\\times 10^{3} and x2e5 and 2.5\\times 10^{-2}'
    """
    return _SCI.sub(lambda m: f"{m.group(1)}\\times 10^{{{m.group(2)}}}", text)


def _unit(text: str) -> str | None:
    m = _UNIT_TEXT.search(text) or _UNIT_PLAIN.match(text)
    return m.group(1).lower().rstrip("s") if m else None


def _log10_bound(node, cap: float) -> float | None:
    """Upper bound of log10|value| for a numeric sympy tree, None when it has symbols. Never evaluates it."""
    import sympy

    if node.is_Number:
        try:
            v = abs(float(node))
        except (OverflowError, TypeError, ValueError):
            return math.inf
        return math.log10(v) if v > 0 else -math.inf
    if node.is_Symbol or not node.args:
        return None if node.free_symbols else 0.0
    if node.is_Pow:
        b, e = (_log10_bound(a, cap) for a in node.args)
        if b is None or e is None:
            return None
        if e > math.log10(cap) + 1:  # exponent itself beyond ~10*cap
            return math.inf if b > 0 else 0.0
        return abs(10 ** e) * max(b, 0.0)
    if isinstance(node, sympy.factorial):
        n = _log10_bound(node.args[0], cap)
        if n is None:
            return None
        if n > 7:
            return math.inf
        k = 10 ** n
        return math.lgamma(k + 1) / math.log(10)
    parts = [_log10_bound(a, cap) for a in node.args]
    if any(p is None for p in parts):
        return None
    if node.is_Mul:
        return sum(max(p, 0.0) for p in parts)
    return max(parts) + math.log10(len(parts))  # Add and everything else: a generous bound


def too_large(expr, max_digits: int) -> bool:
    """True when some numeric subexpression of a parsed answer may exceed `max_digits` digits.

    >>> import sympy
    >>> nine = sympy.Integer(9)
    >>> tower = sympy.Pow(nine, sympy.Pow(nine, sympy.Pow(nine, nine, evaluate=False), evaluate=False), evaluate=False)
    >>> too_large(tower, 1000)
    True
    >>> too_large(sympy.Pow(sympy.Integer(2), sympy.Integer(10), evaluate=False), 1000)
    False
    """
    import sympy

    if not isinstance(expr, sympy.Basic):
        return False
    for node in sympy.preorder_traversal(expr):
        if node.is_Pow or isinstance(node, sympy.factorial):
            try:
                bound = _log10_bound(node, max_digits)
            except (ArithmeticError, TypeError, ValueError, RecursionError):
                return True  # cannot bound it: do not let the comparison try
            if bound is not None and bound > max_digits:
                return True
    return False


def _engine_timeout() -> int | None:
    # math-verify's timeout is signal.alarm: main thread only. Elsewhere the scorer's worker bounds the time.
    return 5 if threading.current_thread() is threading.main_thread() else None


@functools.lru_cache(maxsize=4096)
def _parse_gold(gold: str):
    from math_verify import parse

    text = _sci_to_latex(gold.strip())
    if "$" not in text and "\\boxed" not in text and "\\(" not in text and "\\[" not in text:
        text = f"\\boxed{{{text}}}"
    parsed = parse(text, extraction_mode="first_match", parsing_timeout=_engine_timeout())
    return parsed, _unit(gold)


def math_verdict(completion_text_: str, gold: str, *, max_answer_chars: int = 1000, max_nesting: int = 10,
                 max_digits: int | None = 1000) -> float | None:
    r"""1.0 / 0.0 for one completion against one reference; None when the reference cannot be parsed.

    >>> math_verdict(r"<think>half</think> \boxed{\frac{1}{2}}", "0.5"), math_verdict("The answer is 1/3", "0.5")
    (1.0, 0.0)
    """
    from math_verify import parse, verify

    gold_parsed, gold_unit = _parse_gold(str(gold))
    if not gold_parsed:
        return None
    text = answer_part(clean_text(completion_text_))
    if text is None:
        return 0.0  # unclosed think block: no answer was given
    inner = tagged(text, "<answer>", "</answer>")
    if inner is not None:
        text = inner
    boxed = last_boxed(text)
    if boxed is not None and len(boxed) > max_answer_chars:
        return 0.0
    candidate = f"\\boxed{{{boxed}}}" if boxed is not None else text[-max_answer_chars:]
    if not candidate.strip() or nesting_depth(candidate) > max_nesting:
        return 0.0
    pred = parse(_sci_to_latex(candidate), parsing_timeout=_engine_timeout())
    if not pred or (max_digits is not None and any(too_large(p, max_digits) for p in pred)):
        return 0.0
    if gold_unit and boxed is not None:
        pred_unit = _unit(boxed)
        if pred_unit and pred_unit != gold_unit:
            return 0.0
    return float(verify(gold_parsed, pred, timeout_seconds=_engine_timeout()))


@register_reward("math_accuracy")
def math_accuracy(prompts, completions, *, answer_key: str = "answer", max_answer_chars: int = 1000,
                  max_nesting: int = 10, max_digits: int | None = 1000, **kwargs) -> list[float | None]:
    r"""1.0 when the final answer is mathematically equal to the reference (math-verify), else 0.0.

    The answer is the last `\boxed{}`, else what follows "the answer is" / the last number or expression, in
    the part after the think block. None when the reference is missing or unparseable (as TRL's
    `accuracy_reward`). Equal: `1/2 = 0.5 = \frac{1}{2}`, `50\% = 0.5`, `1e3 = 1000 = 10^3`, `[1,2)`,
    `\{3,2,1\} = \{1,2,3\}`, `(x+1)^2 = x^2+2x+1`; a unit in the reference must not be contradicted.

    >>> math_accuracy([""] * 5,
    ...               [r"\boxed{0.5}", "The answer is 1/2.", r"\boxed{1e3}", r"\boxed{\{3, 2, 1\}}", r"\boxed{[1,2]}"],
    ...               answer=[r"\frac{1}{2}", "0.5", "1000", r"\{1,2,3\}", "[1,2)"])
    [1.0, 1.0, 1.0, 1.0, 0.0]
    """
    golds = kwargs.get(answer_key)
    if golds is None:
        raise ValueError(f"math_accuracy needs the reference column {answer_key!r}")
    out: list[float | None] = []
    for completion, gold in zip(completions, golds):
        if gold is None or str(gold).strip() == "":
            out.append(None)
            continue
        out.append(math_verdict(completion_text(completion), str(gold), max_answer_chars=max_answer_chars,
                                max_nesting=max_nesting, max_digits=max_digits))
    return out
