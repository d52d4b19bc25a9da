"""The scorer contract the GRPO loop relies on: specs, registry, plug-ins by path, composition, failures, limits."""
import math
import sys
import textwrap
import threading
import time

import pytest

from rewards import (RewardError, RewardScorer, RewardSpec, available_rewards, compose, get_reward, register_reward,
                     unregister_reward)

PLUGIN = textwrap.dedent('''
    import asyncio, os, time

    def hang():
        """Far past every time limit here, then return. Sleeping, not spinning: a call abandoned in-process
        (inline isolation cannot kill it) must not hold the GIL for the rest of the test session, which once
        slowed every later test in the run several-fold."""
        time.sleep(60)

    def score(prompts, completions, **kwargs):
        """len(completion), with misbehaviours on request."""
        out = []
        for c in completions:
            if "HANG" in c:
                hang()
            if "DIE" in c:
                os._exit(3)
            if "RAISE" in c:
                raise RuntimeError("boom")
            if "PRINT" in c:
                print("noise on stdout")
            out.append(float(len(c)))
        return out

    def with_bonus(completions, bonus=0.0):
        return [1.0 + bonus for _ in completions]

    async def async_score(prompts, completions, **kwargs):
        await asyncio.sleep(0)
        return [0.25 for _ in completions]

    def none_for_b(prompts, completions, **kwargs):
        return [None if c == "b" else 1.0 for c in completions]

    def wrong_length(prompts, completions, **kwargs):
        return [1.0, 2.0, 3.0][: len(completions) + 1]

    def group_size(prompts, completions, **kwargs):
        return [float(len(completions))] * len(completions)
    group_size.batched = True

    def slow_batch(prompts, completions, **kwargs):
        hang()
    slow_batch.batched = True
''')


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    d = tmp_path_factory.mktemp("plugins")
    (d / "my_rewards.py").write_text(PLUGIN)
    return str(d / "my_rewards.py")


@pytest.fixture(scope="module")
def scorer(plugin):
    s = RewardScorer([RewardSpec(path=f"{plugin}:score")], timeout_s=1.0)
    yield s
    s.close()


def test_spec_validation():
    with pytest.raises(ValueError, match="exactly one of 'name' or 'path'"):
        RewardSpec()
    with pytest.raises(ValueError, match="exactly one"):
        RewardSpec(name="exact_match", path="x.py:f")
    with pytest.raises(ValueError, match="finite"):
        RewardSpec(name="exact_match", weight=float("nan"))


def test_unknown_name_lists_what_exists():
    with pytest.raises(ValueError) as e:
        RewardScorer([RewardSpec(name="math_acuracy")])
    for name in ("exact_match", "math_accuracy", "multiple_choice", "format", "length"):
        assert name in str(e.value)


def test_unknown_path_names_the_file_and_its_functions(plugin, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.py"):
        RewardScorer([RewardSpec(path=str(tmp_path / "nope.py") + ":score")])
    with pytest.raises(ValueError, match="with_bonus"):
        RewardScorer([RewardSpec(path=f"{plugin}:scor")])
    with pytest.raises(ValueError, match="cannot import module"):
        RewardScorer([RewardSpec(path="no_such_package.mod:score")])
    with pytest.raises(ValueError, match="looks like a path"):
        RewardScorer([RewardSpec(name="my.py:score")])


def test_unknown_kwargs_fail_at_construction(plugin):
    with pytest.raises(ValueError, match="no keyword argument"):
        RewardScorer([RewardSpec(path=f"{plugin}:with_bonus", kwargs={"bonsu": 1})])


def test_registry_refuses_duplicates_and_binds_kwargs():
    with pytest.raises(ValueError, match="already registered"):
        register_reward("exact_match", lambda prompts, completions, **kw: [0.0] * len(completions))
    fn = get_reward("exact_match", answer_key="label")
    assert fn.__name__ == "exact_match"
    assert fn(prompts=[""], completions=["x"], label=["X"]) == [1.0]
    assert {"exact_match", "math_accuracy", "multiple_choice", "format", "length"} <= set(available_rewards())


def test_module_path_and_composition():
    specs = [RewardSpec(path="rewards.basic:exact_match", weight=2.0), RewardSpec(name="exact_match", weight=0.5),
             RewardSpec(name="format", weight=1.0, kwargs={"default_mode": "fast"})]
    with RewardScorer(specs, isolation="inline") as s:
        assert s.names == ["exact_match", "exact_match_2", "format"]
        r = s(["q1", "q2", "q3"], ["Paris", "Lyon", "<think>x</think>Paris"], {"answer": ["paris", "paris", None]})
    assert r.per_reward["exact_match"] == [1.0, 0.0, None]
    assert r.per_reward["format"] == [1.0, 1.0, 0.0]
    assert r.total == [2.0 + 0.5 + 1.0, 1.0, 0.0]
    st = r.stats()
    assert st["reward/exact_match/mean"] == 0.5 and math.isclose(st["reward/exact_match/none_frac"], 1 / 3)
    assert st["reward/exact_match/fail_frac"] == 0.0 and math.isclose(st["reward/mean"], 4.5 / 3)


def test_only_scores_the_named_rewards():
    specs = [RewardSpec(name="exact_match", weight=2.0), RewardSpec(name="exact_match", weight=0.5),
             RewardSpec(name="format", kwargs={"default_mode": "fast"})]
    with RewardScorer(specs, isolation="inline") as s:
        r = s(["q1", "q2"], ["Paris", "<think>x</think>Lyon"], {"answer": ["paris", "paris"]}, only=["exact_match_2"])
        assert list(r.per_reward) == ["exact_match_2"] and r.per_reward["exact_match_2"] == [1.0, 0.0]
        assert r.total == [0.5, 0.0] and r.weights == {"exact_match_2": 0.5}
        with pytest.raises(ValueError, match=r"unknown reward\(s\) \[.acc.\]; this scorer has exact_match, exact_match_2"):
            s(["q"], ["a"], {"answer": ["a"]}, only=["acc"])


def test_all_none_total_is_zero_and_counted(plugin):
    with RewardScorer([RewardSpec(path=f"{plugin}:none_for_b")], isolation="inline") as s:
        r = s(["", ""], ["a", "b"], {})
    assert r.per_reward["none_for_b"] == [1.0, None] and r.total == [1.0, 0.0] and r.failures == []
    assert r.stats()["reward/all_none_frac"] == 0.5 and r.stats()["reward/none_for_b/none_frac"] == 0.5
    assert compose({"a": [None]}, {"a": 3.0}, 1) == [0.0]


def test_async_kwargs_and_signature_filtering(plugin):
    specs = [RewardSpec(path=f"{plugin}:async_score"), RewardSpec(path=f"{plugin}:with_bonus", kwargs={"bonus": 1})]
    with RewardScorer(specs, timeout_s=5) as s:
        r = s(["p", "p"], ["a", "b"], {"answer": ["x", "y"], "mode": ["fast", "deep"], "completion_ids": [[1], [2]]})
    assert r.per_reward == {"async_score": [0.25, 0.25], "with_bonus": [2.0, 2.0]}


def test_process_isolation_survives_hang_death_and_errors(scorer):
    comps = ["a", "HANG", "bb", "DIE", "ccc", "RAISE", "PRINT"]
    t0 = time.perf_counter()
    r = scorer([""] * len(comps), comps, {"answer": [None] * len(comps)})
    elapsed = time.perf_counter() - t0
    assert r.per_reward["score"] == [1.0, None, 2.0, None, 3.0, None, 5.0]
    errors = {f.index: f.error for f in r.failures}
    assert set(errors) == {1, 3, 5}
    assert errors[1].startswith("timeout") and "exit code 3" in errors[3] and "RuntimeError: boom" in errors[5]
    assert r.failures[0].completion == "HANG" and r.failures[0].reward == "score"
    assert r.stats()["reward/score/fail_frac"] == pytest.approx(3 / 7)
    assert r.stats()["reward/score/none_frac"] == 0.0
    # One 1 s timeout plus two worker restarts; a hang would never return. The bound is loose because a restart is
    # a process spawn whose cost grows with the machine's load (57 s was seen at load 60 on 2 cores).
    assert elapsed < 180


def test_several_workers_share_a_batch(plugin):
    with RewardScorer([RewardSpec(path=f"{plugin}:score")], timeout_s=1.0, workers=2) as s:
        r = s([""] * 5, ["a", "HANG", "bb", "ccc", "dddd"], {})
    assert r.per_reward["score"] == [1.0, None, 2.0, 3.0, 4.0] and [f.index for f in r.failures] == [1]


def test_plug_in_that_fails_to_import_is_a_load_time_error(tmp_path):
    (tmp_path / "broken.py").write_text("def score(:\n")
    with pytest.raises(ValueError, match="failed to load: SyntaxError"):
        RewardScorer([RewardSpec(path=f"{tmp_path / 'broken.py'}:score")])


def test_time_limit_holds_in_a_thread(scorer):
    # signal.alarm cannot fire here: the scorer must still stop the hung call
    out = {}
    th = threading.Thread(target=lambda: out.setdefault("r", scorer(["", ""], ["HANG", "ok"], {})))
    t0 = time.perf_counter()
    th.start()
    th.join(30)
    assert not th.is_alive() and time.perf_counter() - t0 < 10
    assert out["r"].per_reward["score"] == [None, 2.0]


def test_strict_raises_naming_reward_and_sample(plugin):
    with RewardScorer([RewardSpec(path=f"{plugin}:score")], strict=True, isolation="inline") as s:
        with pytest.raises(RewardError, match=r"reward 'score' failed on sample 1: RuntimeError: boom"):
            s(["", ""], ["ok", "RAISE"], {})


def test_bad_return_values_are_failures(plugin):
    with RewardScorer([RewardSpec(path=f"{plugin}:wrong_length")], isolation="inline") as s:
        r = s(["", ""], ["a", "b"], {})
    assert r.per_reward["wrong_length"] == [None, None] and "returned 2 values for 1" in r.failures[0].error


def test_batched_rewards_see_the_batch_and_time_out_as_a_whole(plugin):
    with RewardScorer([RewardSpec(path=f"{plugin}:group_size")]) as s:
        assert s(["", "", ""], ["a", "b", "c"], {}).per_reward["group_size"] == [3.0, 3.0, 3.0]
    with RewardScorer([RewardSpec(path=f"{plugin}:slow_batch")], timeout_s=0.5) as s:
        r = s(["", ""], ["a", "b"], {})
    assert r.per_reward["slow_batch"] == [None, None] and all(f.error.startswith("timeout") for f in r.failures)


def test_inline_isolation_abandons_hung_calls(plugin):
    with RewardScorer([RewardSpec(path=f"{plugin}:score")], timeout_s=0.3, isolation="inline") as s:
        with pytest.warns(RuntimeWarning, match="abandoned"):
            r = s(["", "", ""], ["a", "HANG", "bb"], {})
    assert r.per_reward["score"] == [1.0, None, 2.0] and r.failures[0].error.startswith("timeout")


def test_resources_are_declared_checked_and_passed():
    class Resources:
        policy = "the-policy-handle"

    def uses_policy(prompts, completions, resources, **kwargs):
        return [1.0 if resources.policy == "the-policy-handle" else 0.0 for _ in completions]

    register_reward("test_uses_policy", uses_policy, needs=("policy",))
    try:
        with pytest.raises(ValueError, match="needs resources"):
            RewardScorer([RewardSpec(name="test_uses_policy")])
        with pytest.raises(ValueError, match=r"lacks"):
            RewardScorer([RewardSpec(name="test_uses_policy")], resources=object())
        with RewardScorer([RewardSpec(name="test_uses_policy")], resources=Resources()) as s:
            assert s.plans[0].ref is None  # model handles stay in-process
            assert s(["p"], ["c"], {}).per_reward["test_uses_policy"] == [1.0]
    finally:
        unregister_reward("test_uses_policy")


def test_input_validation_names_the_column():
    with RewardScorer([RewardSpec(name="exact_match")], isolation="inline") as s:
        with pytest.raises(ValueError, match="column 'answer' has 1 values for 2"):
            s(["", ""], ["a", "b"], {"answer": ["a"]})
        with pytest.raises(ValueError, match="1 prompts for 2"):
            s([""], ["a", "b"], {})
        assert s([], [], {}).total == []


def test_unpicklable_columns_fall_back_to_in_process():
    with RewardScorer([RewardSpec(name="exact_match")]) as s:
        with pytest.warns(RuntimeWarning, match="in-process"):
            r = s([""], ["a"], {"answer": ["a"], "handle": [threading.Lock()]})
    assert r.per_reward["exact_match"] == [1.0]


def test_rewards_package_is_a_leaf():
    import subprocess

    code = ("import sys, rewards; bad = [m for m in sys.modules if m.split('.')[0] in ('rlkit', 'rollout', 'torch', "
            "'ray', 'vllm', 'transformers')]; print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_example_plug_in_runs():
    import pathlib
    import subprocess

    root = pathlib.Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "examples/rewards/my_reward.py"], cwd=root, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "failures: none" in proc.stdout and "reward/score/mean" in proc.stdout


FLAKY = textwrap.dedent('''
    import os, pathlib, time

    def flaky(prompts, completions, marks, **kwargs):
        """Misbehaves on the first call per completion (a marker file remembers it), then scores 1.0.
        Every call is counted in `<marks>/<completion>.calls`."""
        out = []
        for c in completions:
            calls = pathlib.Path(marks) / f"{c}.calls"
            calls.write_text(calls.read_text() + "x" if calls.exists() else "x")
            first = len(calls.read_text()) == 1
            if "ALWAYS_HANG" in c or (first and "HANG" in c):
                time.sleep(60)
            if first and "DIE" in c:
                os._exit(7)
            if "RAISE" in c:
                raise ValueError("bad input")
            out.append(1.0)
        return out
''')


def _flaky_scorer(tmp_path, retries):
    (tmp_path / "flaky_rewards.py").write_text(FLAKY)
    marks = tmp_path / f"marks{retries}"
    marks.mkdir()
    spec = RewardSpec(path=f"{tmp_path / 'flaky_rewards.py'}:flaky", kwargs={"marks": str(marks)})
    return RewardScorer([spec], timeout_s=1.0, retries=retries), marks


def test_hung_or_dead_reward_calls_are_retried_raising_ones_are_not(tmp_path):
    """A hang (timeout, worker killed) and a dead worker are retried once and then succeed; a reward that
    raises is called exactly once per attempt of its sample (never retried); a sample that hangs every time
    fails after 1 + retries attempts."""
    comps = ["ok", "HANG", "DIE", "RAISE", "ALWAYS_HANG"]
    s, marks = _flaky_scorer(tmp_path, retries=1)
    with s:
        r = s([""] * len(comps), comps)
    assert r.per_reward["flaky"] == [1.0, 1.0, 1.0, None, None]
    errors = {f.index: f.error for f in r.failures}
    assert set(errors) == {3, 4}
    assert "ValueError: bad input" in errors[3] and errors[4].startswith("timeout")
    calls = {c: len((marks / f"{c}.calls").read_text()) for c in comps}
    assert calls == {"ok": 1, "HANG": 2, "DIE": 2, "RAISE": 1, "ALWAYS_HANG": 2}
    assert r.retries == 3 and r.stats()["reward/retries"] == 3.0  # HANG, DIE, ALWAYS_HANG once each


def test_without_retries_a_hang_is_a_failure(tmp_path):
    s, marks = _flaky_scorer(tmp_path, retries=0)
    with s:
        r = s(["", ""], ["ok", "HANG"])
    assert r.per_reward["flaky"] == [1.0, None] and r.retries == 0
    assert len((marks / "HANG.calls").read_text()) == 1
    with pytest.raises(ValueError, match="retries"):
        RewardScorer([RewardSpec(name="exact_match")], retries=-1)
