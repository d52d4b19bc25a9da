"""The rule rewards against hand-written cases, including equivalences a naive string match misses."""
import doctest
import importlib

import pytest

from rewards import exact_match, length_penalty, math_accuracy, multiple_choice, think_format
from rewards.text import completion_text, last_boxed


def _one(fn, completion, **cols):
    return fn(prompts=[""], completions=[completion], **{k: [v] for k, v in cols.items()})[0]


# (completion, reference, expected): each line is a case a string comparison gets wrong or right by accident.
MATH_CASES = [
    (r"\boxed{0.5}", r"\frac{1}{2}", 1.0),
    ("The answer is 1/2.", "0.5", 1.0),
    (r"\boxed{\frac{1}{2}}", "0.5", 1.0),
    (r"\boxed{\dfrac{2}{4}}", "1/2", 1.0),
    (r"\boxed{50\%}", "0.5", 1.0),
    (r"\boxed{0.5}", r"50\%", 1.0),
    (r"\boxed{1e3}", "1000", 1.0),
    (r"\boxed{1000}", "1e3", 1.0),
    (r"\boxed{10^3}", "1000", 1.0),
    (r"\boxed{1.5 \times 10^{-3}}", "0.0015", 1.0),
    (r"\boxed{1,000}", "1000", 1.0),
    (r"\boxed{-3.0}", "-3", 1.0),
    (r"\boxed{2+1}", "3", 1.0),
    (r"\boxed{\frac{1}{\sqrt{2}}}", r"\frac{\sqrt{2}}{2}", 1.0),
    (r"\boxed{(x+1)^2}", "x^2+2x+1", 1.0),
    (r"\boxed{[1, 2)}", "[1,2)", 1.0),
    (r"\boxed{(1,2]}", "[1,2)", 0.0),
    (r"\boxed{[1,2]}", "[1,2)", 0.0),
    (r"\boxed{\{3, 2, 1\}}", r"\{1,2,3\}", 1.0),
    (r"\boxed{\{1, 2\}}", r"\{1,2,3\}", 0.0),
    (r"\boxed{5 \text{ cm}}", r"5\text{ cm}", 1.0),
    (r"\boxed{5}", r"5\text{ cm}", 1.0),  # a bare number does not contradict the unit
    (r"\boxed{5 \text{ kg}}", r"5\text{ cm}", 0.0),  # a different unit does
    (r"<think>maybe 3, maybe 4</think> \boxed{4}", "4", 1.0),
    (r"<think>it is \boxed{4}</think> The answer is 5", "4", 0.0),  # only the answer part counts
    (r"<think>never closed \boxed{4}", "4", 0.0),
    ("<answer>7</answer>", "7", 1.0),
    (r"\boxed{0.333}", r"\frac{1}{3}", 0.0),
    (r"\boxed{\frac{1}{3}}", r"\frac{1}{3}", 1.0),
    ("I don't know", "4", 0.0),
    ("", "4", 0.0),
]


@pytest.mark.parametrize("completion,gold,expected", MATH_CASES)
def test_math_accuracy_cases(completion, gold, expected):
    assert _one(math_accuracy, completion, answer=gold) == expected


def test_math_accuracy_none_without_reference_and_conversational_form():
    assert math_accuracy([""], ["4"], answer=[None]) == [None]
    assert math_accuracy([""], ["4"], answer=[""]) == [None]
    msgs = [[{"role": "assistant", "content": r"\boxed{\frac{4}{2}}"}]]
    assert math_accuracy([[{"role": "user", "content": "2?"}]], msgs, answer=["2"]) == [1.0]
    assert math_accuracy([""], [r"\boxed{4}"], solution=["4"], answer_key="solution") == [1.0]


def test_math_accuracy_naive_string_match_would_disagree():
    naive = [float(c.strip("\\boxed{}") == g) for c, g, _ in MATH_CASES]
    ours = [e for _, _, e in MATH_CASES]
    assert sum(a != b for a, b in zip(naive, ours)) >= 15  # the table is not string-trivial


def test_exact_match():
    cases = [("Paris", "paris", 1.0), ("  Paris. ", "Paris", 1.0), ("**Paris**!", "paris", 1.0),
             (r"\boxed{\text{Paris}}", "Paris", 1.0), ("<think>Lyon?</think>Paris", "Paris", 1.0),
             ("<think>Paris", "Paris", 0.0), ("Paris, France", "Paris", 0.0), ("-5", "5", 0.0), ("(1, 2)", "1, 2", 0.0),
             ("the big  red circle", "The big red circle", 1.0), ("", "paris", 0.0)]
    for completion, gold, expected in cases:
        assert _one(exact_match, completion, answer=gold) == expected, (completion, gold)
    assert exact_match([""], ["x"], answer=[None]) == [None]
    assert exact_match([""], ["blue"], label=["Blue"], answer_key="label") == [1.0]


def test_exact_match_rejects_misaligned_columns():
    with pytest.raises(ValueError, match="'answer' has 2 values for 1"):
        exact_match([""], ["x"], answer=["a", "b"])


def test_multiple_choice():
    choices = ["red", "blue", "green", "yellow"]
    cases = [("B", "B", 1.0), ("(b)", "B", 1.0), ("B) blue", "B", 1.0), ("The answer is (B).", "B", 1.0),
             ("Answer: B", "B", 1.0), (r"\boxed{B}", "B", 1.0), ("blue", "B", 1.0), ("Blue.", "blue", 1.0),
             ("C", "blue", 0.0), ("E", "B", 0.0), ("I am not sure", "B", 0.0), ("<think>B", "B", 0.0),
             ("<think>A or B?</think>B", "B", 1.0), ("The answer is C, not B", "B", 0.0)]
    for completion, gold, expected in cases:
        assert _one(multiple_choice, completion, answer=gold, choices=choices) == expected, (completion, gold)
    assert multiple_choice([""], ["D"], answer=["D"]) == [1.0]  # no choices column: letters A-J
    assert multiple_choice([""], ["B"], answer=["B"], choices=[{"A": "yes", "B": "no"}]) == [1.0]
    assert multiple_choice([""], ["no"], answer=["B"], choices=[{"A": "yes", "B": "no"}]) == [1.0]


def test_format_modes_and_tags():
    deep = ["<think>2+2=4</think>4", "\n<think>r</think>\n4\n", "4", "<think>r</think>", "<think>r</think>  ",
            "<think></think>4", "<think>a</think><think>b</think>4", "x<think>r</think>4", "</think>4<think>",
            "<think>r</think>4</think>"]
    assert think_format([""] * len(deep), deep, mode=["deep"] * len(deep)) == [1.0, 1.0] + [0.0] * 8
    fast = ["4", "  The answer is 4", "<think>r</think>4", "4</think>", "", "   "]
    assert think_format([""] * len(fast), fast, mode=["fast"] * len(fast)) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    tags = dict(think_open="<reason>", think_close="</reason>", answer_open="<answer>", answer_close="</answer>")
    comps = ["<reason>r</reason><answer>7</answer>", "<reason>r</reason>7", "<reason>r</reason><answer> </answer>",
             "<reason>r</reason><answer>7</answer> extra", "<answer>7</answer>"]
    assert think_format([""] * 5, comps, mode=["deep"] * 4 + ["fast"], **tags) == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert think_format([""], ["4"]) == [0.0]  # no mode column: default_mode="deep"
    assert think_format([""], ["4"], default_mode="fast") == [1.0]
    with pytest.raises(ValueError, match="mode must be"):
        think_format([""], ["4"], mode=["medium"])


def test_length_penalty_dapo_per_mode():
    budgets = dict(max_len={"fast": 10, "deep": 100}, cache={"fast": 4, "deep": 20})
    lengths = [6, 8, 10, 11, 80, 90, 200]
    modes = ["fast"] * 4 + ["deep"] * 3
    got = length_penalty([""] * 7, [""] * 7, completion_ids=[[1] * n for n in lengths], mode=modes, **budgets)
    assert got == [0.0, -0.5, -1.0, -1.0, 0.0, -0.5, -1.0]
    assert length_penalty([""], [""], completion_ids=[[1] * 50], mode=["fast"], max_len={"deep": 10}, cache=2) == [None]
    assert length_penalty([""], ["abcd"], max_len=3, cache=0, unit="chars") == [-1.0]
    with pytest.raises(ValueError, match="completion_ids"):
        length_penalty([""], ["abc"], max_len=3, cache=1)


def test_text_helpers():
    assert completion_text([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]) == "a"
    assert last_boxed(r"\boxed{\frac{1}{2}} then \boxed{3}") == "3"
    assert last_boxed(r"\boxed{a{b}c}") == "a{b}c"
    assert last_boxed(r"\boxed{{{") is None


@pytest.mark.parametrize("module", ["rewards.text", "rewards.registry", "rewards.basic", "rewards.structure",
                                    "rewards.math_equiv", "rewards.scorer"])
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
