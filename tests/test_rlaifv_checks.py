"""The RLAIF-V rounds' labeler calibration (`labeler.calibrate`) and the one-line reason of a round without
pairs (rlkit/drivers/rlaifv_checks.py), on hand-built scores; the values follow from the rules in the docstrings."""
import pathlib

from preference import Candidate
from rewards.rlaifv import ClaimVerdict, RLAIFVScore
from rlkit.drivers.rlaifv_checks import calibrate_verdicts, claim_odds, no_pairs_reason


def response(*p_yes, p_no=0.5, status="scored"):
    """A scored response whose claims have these P(yes) and P(no) = 0.5 (odds = 2 * p_yes, exact in binary)."""
    claims = [ClaimVerdict(f"claim {i}", "statement", "q?", p, p_no, p > p_no) for i, p in enumerate(p_yes)]
    s = RLAIFVScore("q", "r", status if claims else "no_claims", claims=claims)
    s.rejected = sum(not c.accepted for c in claims)
    s.score = 0.0 - s.rejected if claims else None
    return s


def test_calibrate_verdicts_uses_the_median_odds():
    # odds 1.1, 1.3 | 1.5 | 1.6, 2.0: all above 1, so the paper's rule accepts every claim and both responses score 0
    a, b = response(0.55, 0.75, 1.0), response(0.65, 0.8)
    assert [a.score, b.score] == [0.0, 0.0]
    assert claim_odds([a, b]) == [1.1, 1.5, 2.0, 1.3, 1.6]
    # median 1.5: a claim is accepted when its odds exceed it (the claim at the median is rejected, as a tie is)
    assert calibrate_verdicts([a, b]) == 1.5
    assert [c.accepted for c in a.claims] == [False, False, True] and [c.accepted for c in b.claims] == [False, True]
    assert (a.rejected, a.score, b.rejected, b.score) == (2, -2.0, 1, -1.0)


def test_calibrate_verdicts_without_claims_changes_nothing():
    empty = response()
    assert calibrate_verdicts([empty]) is None and empty.score is None and empty.status == "no_claims"


def groups_of(scores, per_prompt):
    return [[Candidate(f"text {i}", s.score) for i, s in enumerate(scores[g:g + per_prompt])]
            for g in range(0, len(scores), per_prompt)]


def test_no_pairs_reason_names_the_cause_and_the_key():
    stats = {"pairs/candidates": 0.0}
    kw = dict(threshold=1.0, calibrate=False, accept_odds=1.0)
    # an untrained labeler: every claim accepted, every response 0
    scores = [response(0.6), response(0.7, 0.8)]
    why = no_pairs_reason(scores, groups_of(scores, 2), stats, **kw)
    assert why.startswith("the labeler accepted all 3 claims (accept_odds 1)") and "labeler.calibrate: true" in why
    assert "\n" not in why
    # already calibrated: only a stronger labeler helps
    assert no_pairs_reason(scores, groups_of(scores, 2), stats, **{**kw, "calibrate": True}).endswith(
        "use a stronger labeler.path")
    # nothing to check
    scores = [response(), response()]
    assert no_pairs_reason(scores, groups_of(scores, 2), stats, **kw).startswith("no response had a claim to check")
    # every claim rejected and every response one claim: all score -1
    scores = [response(0.1), response(0.2)]
    assert "rejected all 2 claims" in no_pairs_reason(scores, groups_of(scores, 2), stats, **kw)
    # scores 0 and -1 within a prompt, but a threshold of 2
    scores = [response(0.6), response(0.1)]
    why = no_pairs_reason(scores, groups_of(scores, 2), stats, **{**kw, "threshold": 2.0})
    assert "differ by at most 1 (< pairs.threshold 2)" in why and "lower pairs.threshold" in why
    # candidate pairs existed but the length balance dropped them all
    why = no_pairs_reason(scores, groups_of(scores, 2), {"pairs/candidates": 3.0}, **kw)
    assert why.startswith("pairs.length_balance dropped all 3 candidate pairs")


def test_grpo_labeler_section_refuses_calibrate():
    import pytest

    from rlkit.config import ConfigError
    from rlkit.drivers.rlaifv import labeler_config

    assert labeler_config({"path": "policy", "accept_odds": 2.0}).accept_odds == 2.0
    with pytest.raises(ConfigError, match="'labeler.calibrate': only `rlkit rlaifv` rounds calibrate"):
        labeler_config({"calibrate": True})


def test_rlaifv_refuses_the_grpo_only_rollout_options():
    """`rollout` is shared with GRPO; asynchronous or streamed collection would be silently ignored by rounds."""
    import pytest

    from rlkit.config import ConfigError, load_config
    from rlkit.drivers.rlaifv import RLAIFVConfig, check_rlaifv

    path = pathlib.Path(__file__).parent.parent / "examples/rlaifv/rlaifv.yaml"
    check_rlaifv(load_config(RLAIFVConfig, path))
    for key in ("rollout.max_staleness=1", "rollout.stream_chunks=2"):
        with pytest.raises(ConfigError, match=f"'{key.split('=')[0]}': a GRPO option"):
            check_rlaifv(load_config(RLAIFVConfig, path, overrides=[key]))


def test_rows_whose_prompt_the_engine_refused_are_not_labelled(capsys):
    """A prompt over rollout.max_model_len comes back as n empty 'prompt_too_long' completions: by default the round
    stops with one line naming the row; with data.on_bad_row=skip the row is left out before the labeler, said once."""
    import pytest

    from rlkit.data import DataError
    from rlkit.drivers.rlaifv import RLAIFVConfig, drop_unfit
    from rlkit.config import load_config
    from rlkit.records import PromptRow
    from rollout import Completion

    rows = [PromptRow(i, f"q{i}", [], None, {}) for i in (4, 7, 9)]
    ok, unfit = Completion("a", [1], [-0.1], [5], "stop"), Completion("", [], [], [], "prompt_too_long")
    outs = [[ok, ok], [unfit, unfit], [ok, ok]]
    cfg = load_config(RLAIFVConfig, None, ["rollout.max_model_len=64"])
    with pytest.raises(DataError, match=r"^row 7: its prompt is longer than rollout.max_model_len \(64 tokens"):
        drop_unfit(cfg, 1, rows, ["t4", "t7", "t9"], outs)
    cfg = load_config(RLAIFVConfig, None, ["data.on_bad_row=skip"])
    kept_rows, texts, kept = drop_unfit(cfg, 1, rows, ["t4", "t7", "t9"], outs)
    assert [r.index for r in kept_rows] == [4, 9] and texts == ["t4", "t9"] and kept == [outs[0], outs[2]]
    assert "rlkit: round 1: 1 row(s) left out" in capsys.readouterr().out
    assert drop_unfit(cfg, 1, rows, ["t4", "t7", "t9"], [outs[0]] * 3)[0] == rows  # nothing refused: unchanged
