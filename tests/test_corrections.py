"""Off-policy corrections (rlkit/algorithms/corrections.py) against hand-derived values, alone and inside
ppo_clip. Numbers are exact in float64 up to exp/log rounding (~1e-15 relative), hence the tolerances."""
import math

import pytest
import torch

from rlkit.algorithms import CORRECTIONS, get_correction, get_policy_loss

ln = math.log


def _row(*xs):
    return torch.tensor([list(xs)], dtype=torch.float64)


def test_registered():
    assert {"none", "tis", "seq_mask", "icepop"} <= set(CORRECTIONS.names())
    with pytest.raises(ValueError, match="unknown off-policy correction 'nope'"):
        get_correction("nope")


def test_tis_truncates_at_the_cap():
    w, m = get_correction("tis")(_row(ln(0.5), 0.0, ln(3.0)), torch.ones(1, 3, dtype=torch.bool), cap=2.0)
    torch.testing.assert_close(w, _row(0.5, 1.0, 2.0))
    assert m["is_weight_mean"] == pytest.approx(3.5 / 3, rel=1e-12)
    assert m["is_weight_max"] == pytest.approx(2.0)
    assert m["is_frac_capped"] == pytest.approx(1 / 3)
    assert m["is_masked_frac"] == 0.0
    assert m["is_ratio_mean"] == pytest.approx(4.5 / 3, rel=1e-12)


def test_seq_mask_geometric_keeps_and_product_drops():
    lr = torch.tensor([[ln(2), ln(2), 5.0], [ln(0.25), 0.0, -7.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]], dtype=torch.bool)  # column 2 is padding: never counts
    fn = get_correction("seq_mask")
    w, m = fn(lr, mask, low=0.5, high=2.0)  # geometric: ratios 2 and 0.5, inside the (inclusive) band
    torch.testing.assert_close(w, torch.ones(2, 3, dtype=torch.float64))
    assert m["is_seq_masked_frac"] == 0.0 and m["is_masked_frac"] == 0.0
    w, m = fn(lr, mask, low=0.5, high=2.0, level="product")  # products 4 and 0.25: both outside
    torch.testing.assert_close(w, torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]], dtype=torch.float64))
    assert m["is_seq_masked_frac"] == 1.0 and m["is_masked_frac"] == 1.0 and m["is_weight_max"] == 0.0
    w, m = fn(lr, mask, low=0.6, high=3.0, reweight=True)  # geometric 2 kept with weight 2; 0.5 dropped
    torch.testing.assert_close(w, torch.tensor([[2.0, 2.0, 1.0], [0.0, 0.0, 1.0]], dtype=torch.float64))
    assert m["is_weight_mean"] == pytest.approx(1.0) and m["is_seq_masked_frac"] == 0.5
    with pytest.raises(ValueError, match="low <= 1 <= high"):
        fn(lr, mask, low=1.5, high=2.0)


def test_icepop_masks_tokens_outside_the_band():
    lr = _row(ln(0.25), ln(0.5), 0.0, ln(4.0), ln(8.0))
    mask = torch.ones(1, 5, dtype=torch.bool)
    w, m = get_correction("icepop")(lr, mask, low=0.5, high=5.0)
    torch.testing.assert_close(w, _row(0.0, 0.5, 1.0, 4.0, 0.0))
    assert m["is_weight_mean"] == pytest.approx(1.1, rel=1e-12)
    assert m["is_weight_max"] == pytest.approx(4.0)
    assert m["is_masked_frac"] == pytest.approx(0.4)
    w, _ = get_correction("icepop")(lr, mask, low=0.5, high=5.0, reweight=False)
    torch.testing.assert_close(w, _row(0.0, 1.0, 1.0, 1.0, 0.0))


def test_ppo_clip_multiplies_each_tokens_loss_by_the_weight():
    """One step per batch: old = current, ratio 1, so each token's loss is -A * w_t; token_mean over 5 tokens
    with A = 1: loss = -(0 + 0.5 + 1 + 4 + 0) / 5 = -1.1, and d loss / d logprob_t = -w_t / 5."""
    lp = torch.zeros(1, 5, dtype=torch.float64, requires_grad=True)
    rollout = -_row(ln(0.25), ln(0.5), 0.0, ln(4.0), ln(8.0))  # old - rollout = the log ratios above
    mask = torch.ones(1, 5)
    loss, m = get_policy_loss("ppo_clip")(lp, lp.detach(), torch.ones(1, dtype=torch.float64), mask,
                                          rollout_logprobs=rollout, correction="icepop",
                                          correction_opts={"low": 0.5, "high": 5.0})
    assert float(loss) == pytest.approx(-1.1, rel=1e-12)
    loss.backward()
    torch.testing.assert_close(lp.grad, -_row(0.0, 0.5, 1.0, 4.0, 0.0) / 5)
    assert m["is_masked_frac"] == pytest.approx(0.4)
    with pytest.raises(ValueError, match="needs rollout_logprobs"):
        get_policy_loss("ppo_clip")(lp, lp.detach(), torch.ones(1), mask, correction="tis")
    with pytest.raises(ValueError, match="without a correction"):
        get_policy_loss("ppo_clip")(lp, lp.detach(), torch.ones(1), mask, correction_opts={"cap": 2})


def test_a_bad_correction_option_is_refused_at_config_load():
    from rlkit.config import AlgorithmConfig
    from rlkit.config_ranges import algorithm_errors

    a = AlgorithmConfig(loss_opts={"correction": "icepop", "correction_opts": {"low": 2.0, "high": 5.0}})
    [err] = algorithm_errors(a)
    assert "algorithm.loss_opts" in err and "low <= 1 <= high" in err
    assert algorithm_errors(AlgorithmConfig(loss_opts={"correction": "seq_mask"})) == []
    [err] = algorithm_errors(AlgorithmConfig(loss_opts={"correction": "icepop"}), temperature=0.7)
    assert "needs rollout_logprobs" in err
