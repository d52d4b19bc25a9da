"""The arithmetic of the async learning-parity comparison (examples/async_parity/parity_stats.py), by hand.

n = 300 rows and accuracies 0.6 / 0.4 give p(1-p) = 0.24 for both, so the s.e. of a difference is
sqrt(0.48 / 300) = sqrt(0.0016) = 0.04 exactly (up to float rounding, 1e-12)."""
import math
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "examples/async_parity"))
from parity_stats import async_summary, compare, diff_se, mean_se, parity_table, score_at, tail_mean  # noqa: E402

N = 300
# seed 0: k=1 equal to on-policy, k=2 0.2 lower (= 5 SE); seed 1: all equal.
FINALS = {0: {0: 0.6, 1: 0.6, 2: 0.4}, 1: {0: 0.4, 1: 0.4, 2: 0.4}}


def test_diff_se_by_hand():
    assert diff_se(0.6, 0.4, N) == pytest.approx(0.04, abs=1e-12)
    assert diff_se(0.5, 0.5, 200) == pytest.approx(0.05, abs=1e-12)  # 0.25 / 200 * 2 = 0.0025
    assert diff_se(1.0, 0.0, 10) == 0.0
    with pytest.raises(ValueError):
        diff_se(0.5, 0.5, 0)


def test_compare_per_seed_and_over_seeds():
    c = compare(FINALS, N)
    assert sorted(c) == [1, 2]
    k1, k2 = c[1], c[2]
    assert k1["parity"] is True and k2["parity"] is False
    s0 = k2["seeds"][0]
    assert s0["d"] == pytest.approx(-0.2, abs=1e-12)
    assert s0["se"] == pytest.approx(0.04, abs=1e-12)
    assert s0["z"] == pytest.approx(-5.0, abs=1e-9)
    assert s0["within"] is False and k2["seeds"][1]["within"] is True
    # over seeds: d = -0.2, 0 -> mean -0.1, s.d. sqrt(0.02), s.e. sqrt(0.02) / sqrt(2) = 0.1
    assert k2["d"]["mean"] == pytest.approx(-0.1, abs=1e-12)
    assert k2["d"]["se"] == pytest.approx(0.1, abs=1e-12)
    assert k2["score"]["mean"] == pytest.approx(0.4, abs=1e-12) and k2["score"]["se"] == pytest.approx(0.0, abs=1e-12)
    assert k1["score"]["mean"] == pytest.approx(0.5, abs=1e-12) and k1["score"]["se"] == pytest.approx(0.1, abs=1e-12)


def test_compare_boundary_and_missing_reference():
    # just outside: p0 = 0.45, pk = 0.55 on n = 200: SE^2 = (0.2475 + 0.2475) / 200 = 0.002475, SE = 0.04975,
    # so d = 0.1 > 2 SE = 0.0995.
    c = compare({0: {0: 0.45, 1: 0.55}}, 200)
    assert c[1]["seeds"][0]["se"] == pytest.approx(math.sqrt(0.002475), abs=1e-12)
    assert c[1]["parity"] is False  # 0.1 > 0.0995
    c = compare({0: {0: 0.5, 1: 0.5}}, 200)
    assert c[1]["parity"] is True
    with pytest.raises(ValueError):
        compare({0: {1: 0.5, 2: 0.5}}, N)


def test_mean_se():
    assert mean_se([0.2]) == {"n": 1, "mean": 0.2, "se": None}
    m = mean_se([0.1, 0.3])  # s.d. sqrt(0.02), s.e. 0.1
    assert m["mean"] == pytest.approx(0.2) and m["se"] == pytest.approx(0.1, abs=1e-12)


def test_curve_readers():
    curve = [{"step": s, "eval/deep/accuracy": a} for s, a in ((0, 0.1), (10, 0.2), (20, 0.3), (30, 0.5))]
    curve.append({"step": 40, "eval/fast/accuracy": 0.9})  # another mode: ignored for deep
    assert score_at(curve, "deep") == 0.5
    assert score_at(curve, "deep", 10) == 0.2
    assert score_at(curve, "deep", 15) is None
    assert tail_mean(curve, "deep") == pytest.approx(1.0 / 3, abs=1e-12)  # (0.2 + 0.3 + 0.5) / 3
    assert tail_mean(curve, "fast", 3) == 0.9


def test_async_summary_from_metrics():
    recs = [
        {"step": 0, "eval/deep/accuracy": 0.5},  # an eval record: not a step
        {"step": 1, "reward/mean": 0.5, "async/staleness_hist/0": 64.0, "async/staleness_hist/1": 0.0,
         "async/staleness_mean": 0.0, "train/mismatch_abs_logprob_diff": 0.0, "train/is_masked_frac": 0.0,
         "time/wait_s": 1.0},
        {"step": 2, "reward/mean": 0.7, "async/staleness_hist/0": 0.0, "async/staleness_hist/1": 64.0,
         "async/staleness_mean": 1.0, "train/mismatch_abs_logprob_diff": 0.5, "train/is_masked_frac": 0.1,
         "time/wait_s": 0.0},
    ]
    y = async_summary(recs)
    assert y["steps"] == 2 and y["staleness_hist"] == {0: 64.0, 1: 64.0}
    assert y["masked_frac"] == pytest.approx(0.05) and y["masked_frac_stale_steps"] == pytest.approx(0.1)
    assert y["mismatch_fresh_steps"] == 0.0 and y["mismatch_stale_steps"] == 0.5
    assert y["wait_s_mean"] == pytest.approx(0.5) and y["reward_mean"] == pytest.approx(0.6)
    on_policy = async_summary([{"step": 1, "reward/mean": 0.2}])  # k = 0 logs no async keys
    assert on_policy["staleness_hist"] == {} and on_policy["mismatch_stale_steps"] is None


def test_parity_table_rows():
    table = parity_table(FINALS, N, tails={0: {0: 0.5, 1: 0.6, 2: 0.4}, 1: {0: 0.5, 1: 0.4, 2: 0.4}})
    main, tail = table.split("Mean of the last three")
    rows = {line.split("|")[1].strip(): line for line in main.splitlines() if line.startswith("| ")}
    tail_rows = {line.split("|")[1].strip(): line for line in tail.splitlines() if line.startswith("| ")}
    assert "| 0.600 | 0.400 | 0.500 +- 0.100 |" in tail_rows["1"]
    assert "reference" in rows["0"] and "0.500 +- 0.100" in rows["0"]
    assert "-0.200 (0.040, -5.0 SE)" in rows["2"] and rows["2"].rstrip().endswith("| no |")
    assert "+0.000 (0.040, +0.0 SE)" in rows["1"] and rows["1"].rstrip().endswith("| yes |")
    assert "-0.100 +- 0.100" in rows["2"]
