"""Per-mode metrics of a step (rlkit.step.mode_metrics), from hand-built samples with hand-derived values."""
import json

import pytest

from rlkit.step.mode_metrics import ModeMetrics
from rlkit.records import PromptRow, Sample

ROW = PromptRow(0, "q", [], "4", {})


def sample(mode, tokens, reward, acc, fmt=1.0):
    return Sample(1, 0, ROW, mode, "p", "c", list(range(tokens)), [0.0] * tokens, "stop",
                  rewards={"exact_match": acc, "format": fmt}, reward=reward)


def test_per_mode_metrics_of_one_step():
    # fast: 3 samples, 2, 4, 6 tokens, accuracy scores 1, 0, None (counts as 0), rewards 2, 1, 0
    # deep: 1 sample, 10 tokens, accuracy 1, reward 3
    step1 = [sample("fast", 2, 2.0, 1.0), sample("fast", 4, 1.0, 0.0), sample("fast", 6, 0.0, None),
             sample("deep", 10, 3.0, 1.0)]
    m = ModeMetrics("exact_match").step(step1)
    assert m["mode/fast/share"] == 0.75 and m["mode/deep/share"] == 0.25
    assert m["mode/fast/reward_mean"] == 1.0 and m["mode/deep/reward_mean"] == 3.0
    assert m["mode/fast/accuracy"] == pytest.approx(1 / 3) and m["mode/deep/accuracy"] == 1.0
    assert m["mode/fast/tokens_mean"] == 4.0 and m["mode/deep/tokens_mean"] == 10.0
    assert m["mode/fast/tokens_sampled"] == 12 and m["mode/deep/tokens_sampled"] == 10
    assert m["mode/fast/tokens_sampled_total"] == 12 and m["mode/deep/tokens_sampled_total"] == 10


def test_accuracy_uses_the_named_reward():
    s = [sample("fast", 1, 0.5, acc=0.0, fmt=1.0), sample("fast", 1, 0.5, acc=1.0, fmt=0.0),
         sample("fast", 1, 0.5, acc=1.0, fmt=0.0)]
    assert ModeMetrics("exact_match").step(s)["mode/fast/accuracy"] == pytest.approx(2 / 3)
    assert ModeMetrics("format").step(s)["mode/fast/accuracy"] == pytest.approx(1 / 3)
    with pytest.raises(KeyError, match="row 0 has no score of reward 'length'"):
        ModeMetrics("length").step(s)


def test_totals_accumulate_across_steps_and_survive_a_state_round_trip():
    mm = ModeMetrics("exact_match")
    mm.step([sample("fast", 3, 0, 0), sample("deep", 7, 0, 0), sample("deep", 5, 0, 0)])  # fast 3, deep 12
    m2 = mm.step([sample("fast", 4, 0, 0), sample("fast", 1, 0, 0)])  # fast +5, no deep sample
    assert m2["mode/fast/tokens_sampled"] == 5 and m2["mode/fast/tokens_sampled_total"] == 8
    assert m2["mode/deep/tokens_sampled"] == 0 and m2["mode/deep/tokens_sampled_total"] == 12
    assert m2["mode/deep/share"] == 0.0 and "mode/deep/accuracy" not in m2 and "mode/deep/tokens_mean" not in m2
    # what the checkpoint's run_state.json holds, through JSON, then a third step in the resumed run
    resumed = ModeMetrics("exact_match", json.loads(json.dumps(mm.state_dict())))
    m3 = resumed.step([sample("deep", 2, 0, 0)])
    assert m3["mode/fast/tokens_sampled_total"] == 8 and m3["mode/deep/tokens_sampled_total"] == 14
    with pytest.raises(ValueError, match="unknown modes \\['slow'\\]"):
        ModeMetrics("exact_match", {"slow": 3})


def test_an_empty_step():
    m = ModeMetrics("exact_match", {"fast": 5, "deep": 1}).step([])
    assert m == {"mode/fast/share": 0.0, "mode/fast/tokens_sampled": 0, "mode/fast/tokens_sampled_total": 5,
                 "mode/deep/share": 0.0, "mode/deep/tokens_sampled": 0, "mode/deep/tokens_sampled_total": 1}
