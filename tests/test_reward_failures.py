"""Rewards that break stop the run (issue 17, point 3): failures of each kind are counted per reward and step,
summarised in one line per reward and step with the first failure's file:line, stop the run past the threshold
(naming the reward and the last checkpoint), and a step with nothing to learn is reported once per run of such steps.

The unit tests go through the real RewardScorer with hand-made rewards; the counts below follow from the
completions given (a letter per misbehaviour). One end-to-end run of `rlkit grpo` (tiny text model, vLLM) checks
that an always-raising reward stops the run at step 2 with one clear line and a non-zero exit status.
"""
import json
import re
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest

from rewards import RewardScorer, RewardSpec

PLUGIN = textwrap.dedent('''\
    import time

    def always_raise(prompts, completions, **kwargs):
        return [1.0 / 0 for c in completions]  # line 4

    def wrong_length(prompts, completions, **kwargs):
        return [1.0] * (len(completions) + 1)

    def nan_reward(prompts, completions, **kwargs):
        return [float("nan") for c in completions]

    def inf_reward(prompts, completions, **kwargs):
        return [float("-inf") for c in completions]

    def by_letter(prompts, completions, **kwargs):
        """'n': NaN, 'i': inf, 's': a string, 'r': raises, 'x': None (does not apply); else 1.0."""
        out = []
        for c in completions:
            if c == "r":
                raise KeyError("no such key")  # line 20
            out.append({"n": float("nan"), "i": float("inf"), "s": "high", "x": None}.get(c, 1.0))
        return out

    def batched_by_letter(prompts, completions, **kwargs):
        return [{"n": float("nan"), "i": float("inf"), "s": "high", "x": None}.get(c, 1.0) for c in completions]
    batched_by_letter.batched = True

    def slow(prompts, completions, **kwargs):
        if completions[0] == "slow":
            time.sleep(60)
        return [2.0]
''')
RAISE_LINE, KEYERROR_LINE = 4, 20


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    d = tmp_path_factory.mktemp("broken_rewards")
    (d / "broken.py").write_text(PLUGIN)
    assert PLUGIN.splitlines()[RAISE_LINE - 1].strip().startswith("return [1.0 / 0")
    assert PLUGIN.splitlines()[KEYERROR_LINE - 1].strip().startswith("raise KeyError")
    return str(d / "broken.py")


def score(plugin, names, completions, **kw):
    kw.setdefault("isolation", "inline")
    with RewardScorer([RewardSpec(path=f"{plugin}:{n}") for n in names], **kw) as s:
        return s([""] * len(completions), completions, {})


# ---- the scorer: every kind is a failure of that reward on that sample, never a value


def test_each_kind_is_a_failure_of_its_sample(plugin):
    r = score(plugin, ["by_letter", "nan_reward"], ["ok", "n", "i", "s", "r", "x"])
    # by_letter: 'n', 'i', 's', 'r' fail (4 of 6); 'x' is None without failing; nan_reward fails on all 6
    assert r.per_reward["by_letter"] == [1.0, None, None, None, None, None]
    assert r.per_reward["nan_reward"] == [None] * 6
    kinds = {(f.reward, f.index): f.kind for f in r.failures}
    assert kinds == {("by_letter", 1): "not finite", ("by_letter", 2): "not finite", ("by_letter", 3): "wrong type",
                     ("by_letter", 4): "raised", **{("nan_reward", i): "not finite" for i in range(6)}}
    assert r.total == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]  # NaN is never summed into the total
    st = r.stats()
    assert st["reward/by_letter/fail_frac"] == 4 / 6 and st["reward/by_letter/none_frac"] == 1 / 6
    assert st["reward/nan_reward/fail_frac"] == 1.0 and st["reward/nan_reward/none_frac"] == 0.0


def test_raise_names_file_and_line_also_from_a_worker_process(plugin):
    for isolation in ("inline", "process"):
        r = score(plugin, ["always_raise"], ["a", "b"], isolation=isolation)
        assert [f.error for f in r.failures] == [f"ZeroDivisionError: float division by zero (at {plugin}:{RAISE_LINE})"] * 2
    r = score(plugin, ["by_letter"], ["r"])
    assert r.failures[0].error == f"KeyError: 'no such key' (at {plugin}:{KEYERROR_LINE})"


def test_batched_reward_fails_only_its_bad_samples(plugin):
    r = score(plugin, ["batched_by_letter"], ["ok", "n", "i", "s", "x"])
    assert r.per_reward["batched_by_letter"] == [1.0, None, None, None, None]
    assert [(f.index, f.kind) for f in r.failures] == [(1, "not finite"), (2, "not finite"), (3, "wrong type")]


def test_wrong_length_and_timeout_kinds(plugin):
    r = score(plugin, ["wrong_length", "inf_reward"], ["a", "b", "c"])
    assert [(f.reward, f.kind) for f in r.failures] == [("wrong_length", "wrong length")] * 3 + [("inf_reward", "not finite")] * 3
    assert r.failures[0].error == "wrong length: returned 2 values for 1 completions"
    assert r.failures[3].error == "not finite: returned -inf"
    r = score(plugin, ["slow"], ["fast", "slow", "fast"], isolation="process", timeout_s=1.0, retries=0)
    assert r.per_reward["slow"] == [2.0, None, 2.0] and [(f.index, f.kind) for f in r.failures] == [(1, "timeout")]


# ---- the per-step summary and the stop rule


def test_one_summary_line_per_failing_reward_per_step(plugin):
    from rlkit.step.reward_health import RewardHealth

    lines = []
    health = RewardHealth(["always_raise", "by_letter", "wrong_length"], say=lines.append,
                          sites={"wrong_length": f"{plugin}:6"})
    r = score(plugin, ["always_raise", "by_letter", "wrong_length"], ["ok", "n", "r", "ok", "s", "i", "ok", "ok"])
    m = health.failures(1, r)
    assert lines == [
        f"rlkit: step 1: reward 'always_raise' failed on 8/8 samples (raised 8); first: ZeroDivisionError: float "
        f"division by zero (at {plugin}:{RAISE_LINE})",
        "rlkit: step 1: reward 'by_letter' failed on 4/8 samples (not finite 2, raised 1, wrong type 1); first: "
        "not finite: returned nan",
        f"rlkit: step 1: reward 'wrong_length' failed on 8/8 samples (wrong length 8); first: wrong length: returned 2 "
        f"values for 1 completions (reward defined at {plugin}:6)",
    ]
    assert m == {"reward/always_raise/failures": 8.0, "reward/always_raise/fail_streak": 1.0,
                 "reward/by_letter/failures": 4.0, "reward/by_letter/fail_streak": 0.0,
                 "reward/wrong_length/failures": 8.0, "reward/wrong_length/fail_streak": 1.0}


def test_stop_after_two_steps_failing_every_sample(plugin):
    from rlkit.step.reward_health import RewardHealth, RewardStop

    lines = []
    health = RewardHealth(["always_raise", "by_letter"], say=lines.append)
    all_fail = score(plugin, ["always_raise", "by_letter"], ["ok", "ok", "ok", "ok"])
    some_fail = score(plugin, ["always_raise", "by_letter"], ["ok", "n", "ok", "ok"])
    # by_letter fails on 1/4 at step 1: no streak; always_raise fails on 4/4: streak 1, no stop yet
    assert health.failures(1, some_fail)["reward/always_raise/fail_streak"] == 1.0
    with pytest.raises(RewardStop) as e:
        health.failures(2, all_fail, last_checkpoint=lambda: "/runs/x/checkpoints/step_1")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg == (f"reward 'always_raise' failed on every sample of steps 1-2 (4/4, 4/4): raised 8; first: "
                   f"ZeroDivisionError: float division by zero (at {plugin}:{RAISE_LINE}); the run stopped before "
                   "training on step 2 (reward_fail_steps=2, reward_fail_frac=1); last checkpoint: "
                   "/runs/x/checkpoints/step_1 (fix the reward, then --resume continues from it)")
    assert len(lines) == 3  # step 1: both rewards; step 2: always_raise only (by_letter clean)


def test_a_step_below_the_threshold_resets_the_streak(plugin):
    from rlkit.step.reward_health import RewardHealth, RewardStop

    health = RewardHealth(["by_letter"], fail_steps=2, fail_frac=0.5, say=lambda line: None)
    half = score(plugin, ["by_letter"], ["n", "s", "ok", "ok"])  # 2/4 fail: counts at fail_frac 0.5
    quarter = score(plugin, ["by_letter"], ["n", "ok", "ok", "ok"])  # 1/4: does not count
    assert health.failures(1, half)["reward/by_letter/fail_streak"] == 1.0
    assert health.failures(2, quarter)["reward/by_letter/fail_streak"] == 0.0
    assert health.failures(3, half)["reward/by_letter/fail_streak"] == 1.0
    with pytest.raises(RewardStop, match=r"failed on at least 0.5 of the samples of steps 3-4 \(2/4, 2/4\): "
                                         r"not finite 2, wrong type 2; .* no checkpoint was written$"):
        health.failures(4, half)
    never = RewardHealth(["by_letter"], fail_steps=0, say=lambda line: None)
    all_nan = score(plugin, ["by_letter"], ["n", "n"])
    assert all(never.failures(s, all_nan)["reward/by_letter/fail_streak"] == s for s in range(1, 6))


def test_strict_rewards_stops_at_the_first_failing_step(plugin):
    from rlkit.step.reward_health import RewardHealth, RewardStop

    health = RewardHealth(["by_letter"], strict=True, say=lambda line: None)
    health.failures(1, score(plugin, ["by_letter"], ["ok", "x"]))  # None is not a failure
    with pytest.raises(RewardStop, match=r"reward 'by_letter' failed on 1/3 samples of step 2: raised 1; first: "
                                         r"KeyError: 'no such key' .*strict_rewards"):
        health.failures(2, score(plugin, ["by_letter"], ["ok", "r", "ok"]))


def test_config_keys_are_checked_at_load():
    from rlkit.config import ConfigError, GRPOConfig, load_config
    from rlkit.run.checks import check_grpo

    cfg = load_config(GRPOConfig, None, [])
    assert (cfg.reward_fail_steps, cfg.reward_fail_frac) == (2, 1.0)
    for bad, key in (("reward_fail_steps=-1", "reward_fail_steps"), ("reward_fail_frac=0", "reward_fail_frac"),
                     ("reward_fail_frac=1.5", "reward_fail_frac")):
        with pytest.raises(ConfigError, match=f"config key '{key}'"):
            check_grpo(load_config(GRPOConfig, None, [bad]))


# ---- steps with nothing to learn


def samples_of(groups, advantage_fn="grpo"):
    """Samples with the given rewards per group, their advantages from the registered estimator."""
    import torch

    from rlkit.algorithms import get_advantage_fn

    rows = [object() for _ in groups]  # one drawn row per group
    out = [SimpleNamespace(group=g, row=rows[g], reward=float(r), advantage=0.0) for g, rs in enumerate(groups) for r in rs]
    adv = get_advantage_fn(advantage_fn)(torch.tensor([s.reward for s in out]), torch.tensor([s.group for s in out]))
    for s, a in zip(out, adv.tolist()):
        s.advantage = a
    return out


def test_nothing_to_learn_is_reported_once_per_run_of_such_steps():
    from rlkit.step.reward_health import RewardHealth

    lines = []
    health = RewardHealth(["r"], say=lines.append)
    zeros = samples_of([[0, 0, 0, 0]] * 8)
    mixed = samples_of([[0, 1, 0, 0]] + [[0, 0, 0, 0]] * 7)
    per_step = [health.advantages(step, s, s) for step, s in enumerate([zeros, zeros, mixed, zeros, zeros], 1)]
    assert [m["train/nothing_to_learn"] for m in per_step] == [1.0, 1.0, 0.0, 1.0, 1.0]
    assert [m["train/nothing_to_learn_steps"] for m in per_step] == [1.0, 2.0, 2.0, 3.0, 4.0]
    reason = ("all 8 groups have equal rewards (all 0); the policy never earns a reward: start from a checkpoint "
              "that sometimes succeeds, use easier prompts, or check the reward's values in samples.jsonl")
    suffix = " (said once per run of such steps; counted in train/nothing_to_learn_steps)"
    assert lines == [f"rlkit: step 1: nothing to learn: {reason}{suffix}",
                     f"rlkit: step 4: nothing to learn: {reason}{suffix}"]


def test_nothing_to_learn_reasons():
    from rlkit.step.reward_health import nothing_to_learn

    assert nothing_to_learn(samples_of([[0, 1], [1, 1]]), []) is None
    assert nothing_to_learn(samples_of([[1, 1], [1, 1]]), []).startswith(
        "all 2 groups have equal rewards (all 1); every completion earns the same reward")
    assert nothing_to_learn(samples_of([[0, 0], [1, 1], [1, 1]]), []).startswith(
        "all 3 groups have equal rewards within each group (2 distinct values across groups); each prompt's")
    drawn = samples_of([[0, 0], [0, 0], [0, 0]])
    assert nothing_to_learn([], drawn).startswith("the group filter kept none of the 3 groups drawn (all 0);")
    assert nothing_to_learn(drawn, [], ["acc"]) == ("all 3 groups have equal rewards (all 0); reward 'acc' failed on "
                                                    "every sample (see the line above): fix it")


# ---- end to end: `rlkit grpo` with a reward that always raises


def test_always_raising_reward_stops_the_run_at_step_2(tmp_path, plugin, tiny_text_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "rlkit.cli", "grpo", f"output_dir={out}", f"model.path={tiny_text_path}",
         "data.source=arithmetic", "max_steps=4", "rollout.n=4", "rollout.max_tokens=4", "trainer.prompts_per_step=2",
         "rollout.engine=vllm", "logging.save_every=1", "logging.progress=false",
         f"rewards=[{{path: '{plugin}:always_raise'}}]"],
        capture_output=True, text=True, timeout=600)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, text[-3000:]
    err_lines = [l for l in proc.stderr.splitlines() if l.startswith("rlkit: error:")]
    assert err_lines == [f"rlkit: error: reward 'always_raise' failed on every sample of steps 1-2 (8/8, 8/8): raised "
                         f"16; first: ZeroDivisionError: float division by zero (at {plugin}:{RAISE_LINE}); the run "
                         "stopped before training on step 2 (reward_fail_steps=2, reward_fail_frac=1); last checkpoint: "
                         f"{out}/checkpoints/step_1 (fix the reward, then --resume continues from it)"], text[-3000:]
    assert "Traceback" not in proc.stderr
    # one summary line per step, not one per sample
    summaries = [l for l in proc.stdout.splitlines() if re.match(r"rlkit: step \d+: reward 'always_raise' failed on", l)]
    assert summaries == [f"rlkit: step {s}: reward 'always_raise' failed on 8/8 samples (raised 8); first: "
                         f"ZeroDivisionError: float division by zero (at {plugin}:{RAISE_LINE})" for s in (1, 2)]
    assert "failed on sample" not in text
    idle = [l for l in proc.stdout.splitlines() if "nothing to learn" in l]
    assert idle == ["rlkit: step 1: nothing to learn: all 2 groups have equal rewards (all 0); reward 'always_raise' "
                    "failed on every sample (see the line above): fix it (said once per run of such steps; counted in "
                    "train/nothing_to_learn_steps)"]
    # step 2 was scored with the broken reward and neither trained on nor checkpointed
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("step_"))
    assert ckpts == ["step_1"]
    metrics = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1]
    assert metrics[0]["reward/always_raise/failures"] == 8 and metrics[0]["reward/always_raise/fail_streak"] == 1
    assert metrics[0]["train/nothing_to_learn"] == 1 and metrics[0]["reward/always_raise/fail_frac"] == 1


def test_held_out_grading_prints_one_line_per_call(plugin, tiny_text_path, capsys):
    from rlkit.drivers.evaluate import reward_score_fn
    from rlkit.models.loading import load_processor
    from rlkit.records import PromptRow

    rows = [PromptRow(i, f"{i}+1=?", [], str(i + 1), {}) for i in range(3)]
    with RewardScorer([RewardSpec(path=f"{plugin}:always_raise")], isolation="inline") as s:
        scores = reward_score_fn(s, "always_raise", load_processor(tiny_text_path))(rows, "fast", ["a", "b", "c"],
                                                                                     [[1], [2], [3]])
    assert scores == [None] * 3
    assert capsys.readouterr().out.splitlines() == [
        f"rlkit: eval (fast): reward 'always_raise' failed on 3/3 samples (raised 3); first: ZeroDivisionError: float "
        f"division by zero (at {plugin}:{RAISE_LINE})"]
