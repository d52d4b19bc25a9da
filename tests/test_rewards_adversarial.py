"""Untrusted completions: correct verdicts where defined, bounded time per call, and no side effects."""
import os
import time

import pytest

from rewards import RewardScorer, RewardSpec, exact_match, math_accuracy, multiple_choice, think_format

MB = 1_000_000


def _injections(marker: str) -> list[str]:
    cmd = f"touch {marker}"
    return [
        f"__import__('os').system('{cmd}')",
        f"\\boxed{{__import__('os').system('{cmd}')}}",
        f"The answer is eval(\"__import__('os').system('{cmd}')\")",
        f"$exec('import os; os.system(\"{cmd}\")')$",
        f"\\boxed{{1+__import__('os').system('{cmd}')}}",
        f"answer: 5; import os; os.system('{cmd}')",
        f"$(lambda: __import__('os').system('{cmd}'))()$",
        f"\\boxed{{Symbol('x').__class__.__init__.__globals__['os'].system('{cmd}')}}",
        f"`{cmd}` $({cmd})",
        f"\\input{{{marker}}} \\include{{{marker}}} \\write18{{{cmd}}}",
        f"\\boxed{{\\text{{{cmd}}}}}",
    ]


# (completion, expected verdict for reference "4"); None = no defined verdict, only time and safety are checked
HOSTILE = [
    (r"\boxed{9^{9^{9^{9}}}}", 0.0),
    ("the answer is 9^9^9^9", 0.0),
    ("the answer is 9**9**9**9", 0.0),
    (r"\boxed{10^{10^{10}}}", 0.0),
    (r"\boxed{2^{2^{2^{2^{2}}}}}", 0.0),
    (r"\boxed{(10^{100})!}", 0.0),
    (r"\boxed{99999999999!}", 0.0),
    (r"\boxed{\sum_{i=1}^{10^{10}} i}", 0.0),
    ("1" * MB, 0.0),
    ("x" * MB + r" \boxed{4}", 1.0),
    (r"\boxed{" * (MB // 7), 0.0),
    ("{" * MB, 0.0),
    ("(" * MB + "4" + ")" * MB, 0.0),
    (r"\frac{" * 100_000, 0.0),
    ("<think>" * 100_000 + "4", 0.0),
    (r"\boxed{" + r"\frac{1}{" * 60 + "2" + "}" * 61, 0.0),
    ("$" + "{" * 500 + "4" + "}" * 500 + "$", 0.0),
    (r"\boxed{" + r"\sqrt{" * 200 + "4" + "}" * 201, 0.0),
    ("\ud800" + r"\boxed{4}", 1.0),
    ("\udfff" * 1000, 0.0),
    ("\x00\x01" + r"\boxed{4}", 1.0),
    ("\U0010ffff\u202e" + r"\boxed{4}", 1.0),
    ("", 0.0),
    ("   \n\t ", 0.0),
    (r"\boxed{}", 0.0),
    (r"\boxed{4", 0.0),
]


@pytest.fixture()
def sandbox(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    before = (sorted(os.listdir(tmp_path)), _env())
    yield str(marker)
    assert not marker.exists(), "a completion ran a command"
    assert (sorted(os.listdir(tmp_path)), _env()) == before, "scoring changed the directory or environment"


def _env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}


def test_injection_is_never_executed_in_process(sandbox):
    comps = _injections(sandbox)
    n = len(comps)
    for fn in (math_accuracy, exact_match, multiple_choice, think_format):
        got = fn([""] * n, comps, answer=["4"] * n, mode=["deep"] * n)
        assert got == [0.0] * n, fn.__name__


@pytest.mark.parametrize("completion,expected", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_math_completions_in_process(completion, expected, sandbox):
    t0 = time.perf_counter()
    got = math_accuracy([""], [completion], answer=["4"])[0]
    assert time.perf_counter() - t0 < 5.0  # bounded by the guards, before any time limit is needed
    if expected is not None:
        assert got == expected


def test_hostile_completions_through_the_scorer(sandbox):
    comps = [c for c, _ in HOSTILE] + _injections(sandbox)
    expected = [e for _, e in HOSTILE] + [0.0] * len(_injections(sandbox))
    n = len(comps)
    specs = [RewardSpec(name="math_accuracy"), RewardSpec(name="exact_match"), RewardSpec(name="multiple_choice"),
             RewardSpec(name="format"),
             RewardSpec(name="length", kwargs={"max_len": 100, "cache": 10, "unit": "chars"})]
    # The time limit is the backstop, not what is tested: the guards bound each case in about 1 s on an idle core;
    # 30 s leaves room for a loaded CI machine (5 s was exceeded at load 60 on 2 cores).
    with RewardScorer(specs, timeout_s=30.0) as scorer:
        t0 = time.perf_counter()
        r = scorer(["What is 2+2?"] * n, comps, {"answer": ["4"] * n, "mode": ["deep"] * n})
        elapsed = time.perf_counter() - t0
    assert r.failures == []
    assert r.per_reward["math_accuracy"] == expected
    assert all(v in (0.0, 1.0) for v in r.per_reward["exact_match"] + r.per_reward["format"])
    assert elapsed < 60


def test_a_hung_math_call_is_cut_by_the_time_limit():
    # the guards are off here, so the exponent tower reaches sympy and never finishes: the time limit must hold
    spec = RewardSpec(name="math_accuracy", kwargs={"max_digits": None})
    with RewardScorer([spec], timeout_s=1.5) as scorer:
        scorer.start()
        scorer([""], [r"\boxed{4}"], {"answer": ["4"]})  # warm
        t0 = time.perf_counter()
        r = scorer(["", ""], [r"\boxed{9^{9^{9^{9}}}}", r"\boxed{4}"], {"answer": ["4", "4"]})
        elapsed = time.perf_counter() - t0
    assert r.per_reward["math_accuracy"] == [None, 1.0]
    assert r.failures[0].index == 0 and r.failures[0].error.startswith("timeout")
    assert elapsed < 1.5 + 10  # the limit plus a worker restart
