"""The RLPR miniature's pieces (examples/rlpr/miniature.py) without running it: arms differ only in what they
should, cold-start targets are paraphrases, the report's standard errors on hand-derived values."""
import importlib.util
import math
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("rlpr_miniature", ROOT / "examples/rlpr/miniature.py")
mini = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mini)


def test_arms_differ_only_in_reward_and_filter(tmp_path):
    from rlkit.config import to_dict

    base = mini.base_config(tmp_path, 3, 7)
    assert (base.seed, base.max_steps, base.model.seed) == (3, 7, 3)
    assert base.modes.deep_ratio == 1.0 and base.data.source == str(tmp_path / "data" / "train.jsonl")
    cfgs = {arm: to_dict(mini.arm_config(base, arm, "/ckpt")) for arm in mini.ARMS}
    for arm, c in cfgs.items():
        assert c["model"]["path"] == "/ckpt" and c["output_dir"] == str(tmp_path / "seed3" / arm)
        same = {k: v for k, v in c.items() if k not in ("output_dir", "rewards", "algorithm", "model")}
        assert same == {k: v for k, v in cfgs["rlpr"].items() if k in same}
        algo = {k: v for k, v in c["algorithm"].items() if not k.startswith("group_filter")}
        assert algo == {k: v for k, v in cfgs["rlpr"]["algorithm"].items() if not k.startswith("group_filter")}
    rl = {arm: [r for r in c["rewards"] if r["name"] == "rlpr"] for arm, c in cfgs.items()}
    assert rl["exact_match"] == [] and [r["name"] for r in cfgs["exact_match"]["rewards"]] == ["exact_match", "format"]
    assert rl["rlpr"][0]["kwargs"]["baseline"] == "cached" and rl["rlpr_no_debias"][0]["kwargs"]["baseline"] == "none"
    assert rl["rlpr_no_filter"][0]["kwargs"] == rl["rlpr"][0]["kwargs"]
    filters = {arm: c["algorithm"]["group_filter"] for arm, c in cfgs.items()}
    assert filters == {"exact_match": "none", "rlpr": "std_ema", "rlpr_no_debias": "std_ema", "rlpr_no_filter": "none"}
    assert cfgs["rlpr"]["algorithm"]["group_filter_opts"] == {"beta": 0.5, "ema": 0.99, "ema_start_step": 6,
                                                              "filter_start_step": 11}


def test_cold_start_targets_are_paraphrases_the_judge_accepts():
    rows = mini.make_data.make(140, 0, columns=None)
    cold = mini.cold_rows(rows, 0)
    assert [c["prompt"] for c in cold] == [r["prompt"] for r in rows]
    assert {c["answer"] for c in cold} <= {p.format(a=r["answer"]) for r in rows for p in mini.PARAPHRASES}
    assert sum(c["answer"] == r["answer"] for c, r in zip(cold, rows)) < len(rows) / 2  # mostly not bare
    for c, r in zip(cold, rows):
        assert mini.grade.judge_answer(c["answer"], r["accepted"], r["distractors"])
    assert mini.cold_rows(rows, 0) == cold and mini.cold_rows(rows, 1) != cold  # seeded


def test_aggregate_standard_error_by_hand():
    res = [{"seed": 0, "arm": "rlpr", "accuracy": 0.5, "n": 100, "exact_match": 0.2, "by_type": {"days": 1.0}, "wall_s": 10},
           {"seed": 1, "arm": "rlpr", "accuracy": 0.7, "n": 100, "exact_match": 0.4, "by_type": {"days": 0.5}, "wall_s": 30}]
    a = mini.aggregate(res)["rlpr"]
    # se = sqrt(0.5*0.5/100 + 0.7*0.3/100) / 2 = sqrt(0.0046) / 2
    assert a["mean"] == pytest.approx(0.6) and a["se"] == pytest.approx(math.sqrt(0.0046) / 2, rel=1e-12)
    assert a["per_seed"] == [0.5, 0.7] and a["exact_match"] == pytest.approx(0.3) and a["by_type"]["days"] == 0.75
    agg = {"rlpr": {"mean": 0.6, "se": 0.03}, "exact_match": {"mean": 0.5, "se": 0.04}}
    assert mini.compare(agg, "rlpr", "exact_match") == "rlpr - exact_match: +0.100 (s.e. 0.050, +2.0 s.e.)"
    assert mini.compare(agg, "rlpr", "cold_start") == ""


def test_diagnose_auc_and_group_stats_by_hand():
    spec = importlib.util.spec_from_file_location("rlpr_diagnose", ROOT / "examples/rlpr/diagnose.py")
    diag = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(diag)
    assert diag.auc([1.0, 0.5], [0.5]) == 0.75  # (1 + 1/2) / 2
    assert diag.auc([0.2], [0.2, 0.9]) == 0.25  # (1/2 + 0) / 2
    assert diag.auc([], [0.1]) is None
    s = lambda right, r, e: {"right": right, "rlpr": r, "exact": e}  # noqa: E731
    groups = [[s(True, 0.8, 1.0), s(False, 0.2, 0.0)],  # mixed: rlpr ranks 1.0, exact 1.0
              [s(True, 0.3, 0.0), s(False, 0.5, 0.0)],  # mixed: rlpr 0.0, exact 0.5 (tie)
              [s(False, 0.4, 0.0), s(False, 0.4, 0.0)]]  # all wrong, one rlpr value
    st = diag.group_stats(groups)
    assert (st["groups"], st["samples"]) == (3, 6) and st["accuracy"] == pytest.approx(2 / 6)
    assert st["rlpr_mean_right"] == pytest.approx(0.55) and st["rlpr_mean_wrong"] == pytest.approx(0.375)
    assert st["groups_one_rlpr_value"] == pytest.approx(1 / 3) and st["groups_mixed"] == pytest.approx(2 / 3)
    assert st["auc_rlpr_in_mixed"] == pytest.approx(0.5) and st["auc_exact_in_mixed"] == pytest.approx(0.75)
