"""The multi-seed comparison (rlkit.drivers.ablation_stats, rlkit.drivers.ablation_seeds): tokens-to-reach interpolation,
t intervals on values and log ratios, the verdict, and the seeds runner's report, all against hand-derived
numbers (the arithmetic is written out beside each expected value)."""
import json

import pytest

from rlkit.drivers.ablation_stats import (gain_target, points, ratio_interval, reach_comparison, summarize, t_interval,
                                  tokens_to_reach, verdict)


def curve(points, mode="deep", other=None):
    """Eval records from (step, tokens, accuracy); `other` gives the other mode's accuracy per point."""
    om = "fast" if mode == "deep" else "deep"
    return [{"step": s, "tokens_sampled_total": t, f"eval/{mode}/accuracy": a,
             **({f"eval/{om}/accuracy": other[i]} if other else {})} for i, (s, t, a) in enumerate(points)]


def test_tokens_to_reach_interpolates_between_eval_points():
    pts = [(0, 0.4), (1000, 0.5), (2000, 0.7)]
    assert tokens_to_reach(pts, 0.6) == pytest.approx(1500)  # 1000 + (0.6 - 0.5) / (0.7 - 0.5) * 1000
    assert tokens_to_reach(pts, 0.5) == 1000  # an eval point exactly at the target
    assert tokens_to_reach(pts, 0.4) == 0  # the start already reaches it
    assert tokens_to_reach(pts, 0.71) is None
    # the first crossing counts, even when the curve falls back later: 0 + (0.6 - 0.4) / (0.65 - 0.4) * 100 = 80
    assert tokens_to_reach([(0, 0.4), (100, 0.65), (200, 0.5), (300, 0.7)], 0.6) == pytest.approx(80)
    assert gain_target(pts) == pytest.approx(0.67)  # 0.4 + 0.9 * (0.7 - 0.4)


def test_t_interval_by_hand():
    ti = t_interval([1.0, 2.0, 3.0])
    # mean 2, sd 1, SE 1 / sqrt(3) = 0.577350, half-width 4.303 * 0.577350 = 2.484339
    assert (ti["mean"], ti["sd"], ti["t"]) == (2.0, 1.0, 4.303)
    assert ti["se"] == pytest.approx(0.577350, abs=1e-6)
    assert (ti["low"], ti["high"]) == (pytest.approx(-0.484339, abs=1e-6), pytest.approx(4.484339, abs=1e-6))
    with pytest.raises(ValueError):
        t_interval([1.0])


def test_ratio_interval_is_on_log_ratios():
    ri = ratio_interval([0.5, 1.0, 2.0])
    # logs -ln2, 0, ln2: mean 0 -> geometric mean 1; sd ln2 = 0.693147, SE 0.693147 / sqrt(3) = 0.400189,
    # half-width 4.303 * 0.400189 = 1.722013 -> [exp(-1.722013), exp(1.722013)] = [0.182684 * 0.978228, 5.473947 * 1.022257]
    # = [0.178706, 5.595780] (e^-1.7 e^-0.022013 and e^1.7 e^0.022013)
    assert ri["geo_mean"] == pytest.approx(1.0)
    assert ri["low"] == pytest.approx(0.178706, rel=1e-5) and ri["high"] == pytest.approx(5.595780, rel=1e-5)
    assert ri["low"] * ri["high"] == pytest.approx(1.0)  # symmetric on the log scale
    with pytest.raises(ValueError):
        ratio_interval([0.5, 0.0])


def test_reach_comparison_by_hand():
    deep = curve([(0, 0, 0.4), (10, 10000, 0.5), (20, 20000, 0.7)])
    hyb = curve([(0, 0, 0.4), (10, 5500, 0.6), (20, 11000, 0.75)])
    c = reach_comparison(deep, hyb, "deep")
    # target 0.4 + 0.9 * 0.3 = 0.67; deep-only: 10000 + (0.67 - 0.5) / 0.2 * 10000 = 18500;
    # hybrid: 5500 + (0.67 - 0.6) / 0.15 * 5500 = 8066.667; ratio 8066.667 / 18500 = 0.436036
    assert c["target"] == pytest.approx(0.67) and c["deep_only_tokens"] == pytest.approx(18500)
    assert c["hybrid_tokens"] == pytest.approx(8066.667, abs=1e-3) and c["ratio"] == pytest.approx(0.436036, abs=1e-6)
    slow = curve([(0, 0, 0.4), (10, 5500, 0.5), (20, 11000, 0.6)])
    c = reach_comparison(deep, slow, "deep")  # never reaches 0.67: censored, ratio above 11000 / 18500
    assert c["censored"] and c["ratio_above"] == pytest.approx(0.594595, abs=1e-6) and "ratio" not in c
    flat = curve([(0, 0, 0.4), (10, 10000, 0.35)])
    assert reach_comparison(flat, hyb, "deep")["defined"] is False  # deep-only lost ground: no target


def test_summarize_and_verdict():
    deep = curve([(0, 0, 0.4), (10, 10000, 0.5), (20, 20000, 0.7)], other=[0.2, 0.2, 0.1])
    hyb = lambda x: curve([(0, 0, 0.4), (10, x, 0.6), (20, 2 * x, 0.75)], other=[0.2, 0.3, 0.5])
    seeds = {0: {"deep_only": deep, "hybrid": hyb(5500)}, 1: {"deep_only": deep, "hybrid": hyb(11000)},
             2: {"deep_only": deep, "hybrid": hyb(22000)}}
    s = summarize(seeds)
    # hybrid tokens scale with x: ratios 0.436036, 0.872072, 1.744144 = 0.872072 * (1/2, 1, 2):
    # geometric mean 0.872072, interval 0.872072 * [0.178706, 5.595780] = [0.155845, 4.879930]
    r = s["deep"]["ratio"]
    assert r["geo_mean"] == pytest.approx(0.872072, rel=1e-5) and r["low"] == pytest.approx(0.155845, rel=1e-5) and r["high"] == pytest.approx(4.879930, rel=1e-5)
    assert s["deep"]["final_diff"]["mean"] == pytest.approx(0.05)  # 0.75 - 0.7 on every seed, sd 0
    assert s["fast"]["seeds"][0]["defined"] is False and s["fast"]["ratio"] is None  # deep-only's fast fell
    assert s["fast"]["final_diff"]["mean"] == pytest.approx(0.4)  # 0.5 - 0.1
    assert verdict(r).startswith("inconclusive")
    assert verdict({"geo_mean": 0.7, "low": 0.6, "high": 0.8}).startswith("reproduces the direction")
    assert "consistent with the report's 0.705" in verdict({"geo_mean": 0.7, "low": 0.6, "high": 0.8})
    assert "below the report's" in verdict({"geo_mean": 0.5, "low": 0.4, "high": 0.6})
    assert verdict({"geo_mean": 1.5, "low": 1.2, "high": 1.9}).startswith("worse")
    assert verdict(None).startswith("not computed")
    seeds[2]["hybrid"] = curve([(0, 0, 0.4), (10, 5500, 0.5), (20, 11000, 0.6)], other=[0.2, 0.3, 0.5])
    assert summarize(seeds)["deep"]["ratio"] is None  # a censored seed: no interval


def test_run_seeds_runs_each_seed_and_writes_the_report(tmp_path):
    """The runner with a stand-in for one seed's ablation (which needs Ray and vLLM and has its own slow test):
    each seed gets its own seed, model.seed and output folder; the report carries the numbers computed above."""
    from PIL import Image

    from rlkit.drivers.ablation import load_ablation_config, run_ablation
    from rlkit.drivers.ablation_seeds import run_seeds

    grpo, abl = load_ablation_config(None, [f"output_dir={tmp_path}", "ablation.seeds=[3,4,5]", "data.source=arith_chain"])
    calls = []

    def one(g, a):
        calls.append((g.seed, g.model.seed, g.output_dir, a.seeds))
        x = {3: 5500, 4: 11000, 5: 22000}[g.seed]
        runs = {"deep_only": curve([(0, 0, 0.4), (10, 10000, 0.5), (20, 20000, 0.7)], other=[0.2, 0.2, 0.1]),
                "hybrid": curve([(0, 0, 0.4), (10, x, 0.6), (20, 2 * x, 0.75)], other=[0.2, 0.3, 0.5])}
        return {"held_out": {"split": "test", "n": 300, "reward": "exact_match"}, "cold_start": {"wall_s": 1.0},
                "wall_s": 2.0, "runs": {k: {"curve": c, "tokens_sampled_total": c[-1]["tokens_sampled_total"],
                                            "final": {}, "wall_s": 1.0} for k, c in runs.items()}}

    res = run_seeds(grpo, abl, one)
    assert calls == [(s, s, str(tmp_path / f"seed_{s}"), []) for s in (3, 4, 5)]
    assert res["summary"]["deep"]["ratio"]["geo_mean"] == pytest.approx(0.872072, rel=1e-5)
    md = (tmp_path / "ablation_seeds.md").read_text()
    assert "| 3 | 0.400 | 0.700 | 0.750 | +0.050 | 0.670 | 18.5k | 8.1k | 0.44 |" in md
    assert "geometric mean 0.87, 95% interval [0.16, 4.88]" in md  # 0.872072 * 5.595780 = 4.8799
    assert "| 5 | 20,000 | 44,000 | 2.20 |" in md and "Verdict (deep mode, pre-registered rule): inconclusive" in md
    assert json.loads((tmp_path / "ablation_seeds.json").read_text())["seeds"] == [3, 4, 5]
    with Image.open(tmp_path / "ablation_seeds.png") as im:
        assert im.format == "PNG" and im.size[0] > 600
    assert run_ablation is not None


def test_matched_token_gap_by_hand():
    from rlkit.drivers.ablation_stats import interpolate, matched_token_gap

    deep = curve([(0, 0, 0.4), (10, 10000, 0.5), (20, 20000, 0.7)])
    hyb = curve([(0, 0, 0.4), (10, 5000, 0.5), (20, 15000, 0.5), (30, 25000, 0.9)])
    assert interpolate(points(deep, "deep"), 5000) == pytest.approx(0.45)  # halfway from 0.4 to 0.5
    assert interpolate(points(deep, "deep"), 15000) == pytest.approx(0.6) and interpolate(points(deep, "deep"), 25000) is None
    # hybrid points at 5,000 and 15,000 tokens (25,000 is past deep-only's last point): gaps 0.5 - 0.45 = 0.05 and
    # 0.5 - 0.6 = -0.1, mean -0.025
    g = matched_token_gap(deep, hyb, "deep")
    assert g["n_points"] == 2 and g["gap"] == pytest.approx(-0.025)
