"""KL to the reference policy: in the reward (k1 penalty before advantages) or in the loss; coefficient 0 loads
no reference model."""
import pytest
import torch

from rlkit.algorithms.kl import kl_penalized_rewards, sequence_k1
from rlkit.policy.worker import PolicyWorker
from test_worker_ppo import text_items


def test_sequence_k1_and_penalty_by_hand():
    logp = torch.tensor([[-1.0, -2.0, float("-inf")], [-0.5, float("nan"), 0.0]])
    ref = torch.tensor([[-1.5, -1.0, 0.0], [-0.25, 0.0, -3.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    k = sequence_k1(logp, ref, mask)
    # row 0: (-1 + 1.5) + (-2 + 1) = -0.5; row 1: (-0.5 + 0.25) = -0.25
    torch.testing.assert_close(k, torch.tensor([-0.5, -0.25]))
    r = kl_penalized_rewards(torch.tensor([1.0, 0.0]), k, 0.1)
    torch.testing.assert_close(r, torch.tensor([1.05, 0.025]))


def test_reference_kl_and_kl_in_reward(tiny_text_path, tmp_path):
    moved = PolicyWorker(tiny_text_path, lr=5e-2)
    moved.train_step(text_items(moved))
    moved.save(str(tmp_path / "ref"))

    w = PolicyWorker(tiny_text_path, lr=1e-2, kl_coef=0.5, kl_in_reward=True, reference_path=str(tmp_path / "ref"))
    items = text_items(w)
    pol, ref = w.compute_logprobs(items), moved.compute_logprobs(items)
    expected = [sum(p) - sum(q) for p, q in zip(pol, ref)]
    got = w.reference_kl(items)
    assert got == pytest.approx(expected, abs=1e-5)
    assert any(abs(g) > 1e-3 for g in got)

    # kl_in_reward: the loss holds no KL term (same update as kl_coef 0)
    plain = PolicyWorker(tiny_text_path, lr=1e-2)
    m1, m0 = w.train_step(items), plain.train_step(text_items(plain))
    assert "train/kl" not in m1
    assert m1["train/loss"] == pytest.approx(m0["train/loss"], rel=1e-6)

    inloss = PolicyWorker(tiny_text_path, lr=1e-2, kl_coef=0.5, reference_path=str(tmp_path / "ref"))
    assert inloss.train_step(text_items(inloss))["train/kl"] > 0


def test_kl_coef_zero_loads_no_reference(tiny_text_path):
    w = PolicyWorker(tiny_text_path)
    assert w.ref_model is None
    with pytest.raises(ValueError, match="kl_coef"):
        w.reference_kl(text_items(w))
