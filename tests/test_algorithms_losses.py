"""Policy loss and aggregations against hand-derived numbers and an independent loop implementation."""

import math
import random

import pytest
import torch

from rlkit.algorithms import AGGREGATIONS, get_aggregation, get_policy_loss

T = torch.tensor
ppo_clip = get_policy_loss("ppo_clip")


def close(a, b, tol=1e-5):
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float64),
                               torch.as_tensor(b, dtype=torch.float64), atol=tol, rtol=0)


def base_case():
    """old = 0, ratios row 0 = [1.5, 1.0, 0.5] with A = +1, row 1 = [1.1, 0.9, (2.0 masked)] with A = -1.

    Per-token loss max(-A r, -A clip(r, 0.8, 1.2)):
      row 0: max(-1.5, -1.2) = -1.2 (clipped high), max(-1, -1) = -1, max(-0.5, -0.8) = -0.5
      row 1: max(1.1, 1.1) = 1.1, max(0.9, 0.9) = 0.9        (A < 0, nothing clipped)
    """
    lp = torch.log(T([[1.5, 1.0, 0.5], [1.1, 0.9, 2.0]])).requires_grad_()
    return lp, torch.zeros(2, 3), T([1.0, -1.0]), T([[1, 1, 1], [1, 1, 0]])


def test_ppo_clip_token_mean_and_clip_frac():
    lp, old, adv, mask = base_case()
    loss, m = ppo_clip(lp, old, adv, mask)
    # (-1.2 - 1.0 - 0.5 + 1.1 + 0.9) / 5 valid tokens = -0.7 / 5 = -0.14; 1 of 5 tokens clipped.
    close(loss, -0.14)
    close(m["clip_frac"], 0.2)
    close(m["clip_frac_high"], 0.2)
    close(m["clip_frac_low"], 0.0)
    # ratio_mean = (1.5 + 1 + 0.5 + 1.1 + 0.9) / 5 = 1.0
    close(m["ratio_mean"], 1.0)
    loss.backward()
    # d/d lp of -A r = -A r on unclipped tokens, 0 on the clipped one and on padding; / 5 tokens.
    close(lp.grad, [[0.0, -1.0 / 5, -0.5 / 5], [1.1 / 5, 0.9 / 5, 0.0]])


def test_aggregations():
    lp, old, adv, mask = base_case()
    # Row sums -2.7 (3 tokens) and 2.0 (2 tokens).
    # seq_mean_token_mean: (-2.7/3 + 2.0/2) / 2 = (-0.9 + 1.0) / 2 = 0.05
    close(ppo_clip(lp, old, adv, mask, aggregation="seq_mean_token_mean")[0], 0.05)
    # seq_mean_token_sum_norm, L = 4: (-2.7 + 2.0) / (B=2 * 4) = -0.0875
    close(ppo_clip(lp, old, adv, mask, aggregation="seq_mean_token_sum_norm", norm_length=4)[0], -0.0875)


def test_clip_higher():
    lp, old, adv, mask = base_case()
    # clip_high 0.6: row 0 token 0: clip(1.5, 0.8, 1.6) = 1.5 -> -1.5, not clipped.
    # (-1.5 - 1.0 - 0.5 + 1.1 + 0.9) / 5 = -1.0 / 5 = -0.2
    loss, m = ppo_clip(lp, old, adv, mask, clip_low=0.2, clip_high=0.6)
    close(loss, -0.2)
    close(m["clip_frac"], 0.0)


def test_dual_clip():
    # A = -1, ratios [4.0, 0.5], clip 0.2, c = 3.
    # token 0: max(4, 1.2) = 4, dual: min(4, 3 * 1) = 3.  token 1: max(0.5, 0.8) = 0.8 (clipped low).
    lp = torch.log(T([[4.0, 0.5]]))
    args = (lp, torch.zeros(1, 2), T([-1.0]), torch.ones(1, 2))
    loss, m = ppo_clip(*args, dual_clip=3.0)
    close(loss, (3.0 + 0.8) / 2)
    close(m["dual_clip_frac"], 0.5)
    close(m["clip_frac_low"], 0.5)
    close(ppo_clip(*args)[0], (4.0 + 0.8) / 2)  # without dual clip: 2.4
    with pytest.raises(ValueError, match="dual_clip"):
        ppo_clip(*args, dual_clip=0.5)


def test_gspo_sequence_ratio_value_and_gradient():
    # old = 0, lp = [log 2, 0, (100 masked)], A = 1 -> s = exp((log 2 + 0) / 2) = sqrt(2) = 1.414214.
    lp = T([[math.log(2.0), 0.0, 100.0]], requires_grad=True)
    args = (lp, torch.zeros(1, 3), T([1.0]), T([[1, 1, 0]]))
    loss, m = ppo_clip(*args, ratio_level="sequence", clip_high=0.5, aggregation="seq_mean_token_mean")
    close(loss, -math.sqrt(2))  # 1.414 < 1.5: not clipped
    loss.backward()
    # GSPO: d(-A s)/d lp_t = -A s / |y| = -1.414214 / 2 = -0.707107 on both tokens, 0 on padding.
    close(lp.grad, [[-math.sqrt(2) / 2, -math.sqrt(2) / 2, 0.0]])
    loss, m = ppo_clip(*args, ratio_level="sequence", clip_high=0.2, aggregation="seq_mean_token_mean")
    close(loss, -1.2)  # s > 1.2 and A > 0: clipped, every token of the sequence
    close(m["clip_frac"], 1.0)


def test_gspo_matches_sequence_level_objective_on_random_tensors():
    # Independent GSPO: loss = mean_i max(-A_i s_i, -A_i clip(s_i)), s_i = exp(masked mean log-ratio).
    g = torch.Generator().manual_seed(1)
    lp0 = torch.randn(5, 7, generator=g, dtype=torch.float64) * 0.1
    old = lp0 + torch.randn(5, 7, generator=g, dtype=torch.float64) * 0.1
    adv = torch.randn(5, generator=g, dtype=torch.float64)
    mask = (torch.rand(5, 7, generator=g) > 0.3).double()
    mask[2] = 0  # an empty completion
    for clip in (10.0, 0.03):
        a = lp0.clone().requires_grad_()
        ours, _ = ppo_clip(a, old, adv, mask, ratio_level="sequence", clip_low=min(clip, 0.9),
                           clip_high=clip, aggregation="seq_mean_token_mean")
        ours.backward()
        b = lp0.clone().requires_grad_()
        s = torch.exp(((b - old) * mask).sum(-1) / mask.sum(-1).clamp(min=1))
        ref = torch.maximum(-adv * s, -adv * s.clamp(1 - min(clip, 0.9), 1 + clip))
        keep = mask.sum(-1) > 0
        ref = ref[keep].mean()
        ref.backward()
        close(ours, ref, 1e-10)
        close(a.grad, b.grad, 1e-10)


def test_truncated_importance_sampling_and_mismatch():
    # old = lp = 0 (ratio 1), A = 1. rollout = [-log 3, log 2]: engine ratio old/rollout = [3, 0.5].
    # TIS weights min([3, 0.5], cap 2) = [2, 0.5] -> per-token -A r w = [-2, -0.5] -> mean -1.25.
    # mismatch_kl = mean((r - 1) - log r) = ((2 - 1.098612) + (-0.5 + 0.693147)) / 2 = 0.547268
    # mismatch_abs_logprob_diff = (1.098612 + 0.693147) / 2 = 0.895880
    args = (torch.zeros(1, 2), torch.zeros(1, 2), T([1.0]), torch.ones(1, 2))
    rollout = T([[-math.log(3.0), math.log(2.0)]])
    loss, m = ppo_clip(*args, rollout_logprobs=rollout, tis_cap=2.0)
    close(loss, -1.25)
    close(m["mismatch_kl"], 0.547268)
    close(m["mismatch_abs_logprob_diff"], 0.895880)
    close(m["tis_weight_mean"], 1.25)
    close(m["tis_frac_capped"], 0.5)
    # Measured but not corrected without a cap: loss stays -1.
    loss, m = ppo_clip(*args, rollout_logprobs=rollout)
    close(loss, -1.0)
    assert "mismatch_kl" in m and "tis_weight_mean" not in m
    with pytest.raises(ValueError, match="rollout_logprobs"):
        ppo_clip(*args, tis_cap=2.0)


def test_approx_kl_metric():
    # One token, old = 0, new ratio 2: KL(old || new) k3 = (2 - 1) - log 2 = 0.306853.
    _, m = ppo_clip(T([[math.log(2.0)]]), torch.zeros(1, 1), T([1.0]), torch.ones(1, 1))
    close(m["approx_kl"], 0.306853)


@pytest.mark.parametrize("aggregation", sorted(AGGREGATIONS.names()))
@pytest.mark.parametrize("ratio_level", ["token", "sequence"])
def test_empty_rows_and_garbage_padding_give_no_nan(aggregation, ratio_level):
    lp = T([[-1.0, float("-inf"), 1e4], [0.5, 0.0, 0.0]], requires_grad=True)
    old = T([[-1.2, 3.0, float("nan")], [0.0, 0.0, 0.0]])
    mask = T([[1, 0, 0], [0, 0, 0]])  # row 1 is an empty completion
    rollout = T([[-1.1, float("inf"), 0.0], [0.0, 0.0, 0.0]])
    loss, m = ppo_clip(lp, old, T([1.0, -2.0]), mask, aggregation=aggregation, norm_length=3,
                       ratio_level=ratio_level, rollout_logprobs=rollout, tis_cap=2.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(lp.grad).all()
    assert lp.grad[:, 1:].abs().sum() == 0 and lp.grad[1].abs().sum() == 0
    assert all(math.isfinite(v) for v in m.values())
    # All rows empty: loss 0, gradient 0, metrics 0.
    lp2 = lp.detach().clone().requires_grad_()
    loss, m = ppo_clip(lp2, old, T([1.0, -2.0]), torch.zeros(2, 3), aggregation=aggregation, norm_length=3,
                       ratio_level=ratio_level)
    loss.backward()
    assert loss.item() == 0.0 and lp2.grad.abs().sum() == 0 and all(v == 0 for v in m.values())


def loop_ppo_clip(lp, old, adv, mask, clip_low, clip_high, dual_clip, aggregation):
    """Straightforward per-token loop: PPO-clip with dual clip, then token_mean or seq_mean_token_mean."""
    rows = []
    for b in range(len(lp)):
        row = []
        for t in range(len(lp[b])):
            if not mask[b][t]:
                continue
            r = math.exp(lp[b][t] - old[b][t])
            a = adv[b]
            v = max(-a * r, -a * min(max(r, 1 - clip_low), 1 + clip_high))
            if dual_clip is not None and a < 0:
                v = min(v, -a * dual_clip)
            row.append(v)
        rows.append(row)
    if aggregation == "token_mean":
        n = sum(len(r) for r in rows)
        return sum(sum(r) for r in rows) / max(n, 1)
    nonempty = [sum(r) / len(r) for r in rows if r]
    return sum(nonempty) / max(len(nonempty), 1)


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean"])
@pytest.mark.parametrize("dual_clip", [None, 2.0])
def test_ppo_clip_matches_loop_on_random_tensors(aggregation, dual_clip):
    rng = random.Random(0)
    for _ in range(5):
        b, t = rng.randint(1, 6), rng.randint(1, 9)
        lp = [[rng.gauss(-1, 0.5) for _ in range(t)] for _ in range(b)]
        old = [[x + rng.gauss(0, 0.4) for x in row] for row in lp]
        adv = [rng.gauss(0, 1) for _ in range(b)]
        mask = [[rng.random() > 0.3 for _ in range(t)] for _ in range(b)]
        mask[0] = [False] * t  # always one empty completion
        clip_low, clip_high = rng.uniform(0.05, 0.3), rng.uniform(0.05, 0.4)
        expected = loop_ppo_clip(lp, old, adv, mask, clip_low, clip_high, dual_clip, aggregation)
        got, _ = ppo_clip(T(lp, dtype=torch.float64), T(old, dtype=torch.float64), T(adv, dtype=torch.float64),
                          T(mask), clip_low=clip_low, clip_high=clip_high, dual_clip=dual_clip,
                          aggregation=aggregation)
        close(got, expected, 1e-10)


def test_per_token_advantages_broadcast_equivalently():
    lp, old, adv, mask = base_case()
    close(ppo_clip(lp, old, adv[:, None].expand(2, 3), mask)[0], ppo_clip(lp, old, adv, mask)[0], 1e-7)


def test_option_and_name_errors():
    lp, old, adv, mask = base_case()
    with pytest.raises(ValueError, match="norm_length"):
        ppo_clip(lp, old, adv, mask, aggregation="seq_mean_token_sum_norm")
    with pytest.raises(ValueError) as err:
        ppo_clip(lp, old, adv, mask, aggregation="token-mean")
    assert all(n in str(err.value) for n in AGGREGATIONS.names())
    with pytest.raises(ValueError, match="ratio_level"):
        ppo_clip(lp, old, adv, mask, ratio_level="seq")
    with pytest.raises(ValueError, match="advantages must have shape"):
        ppo_clip(lp, old, T([1.0, 2.0, 3.0]), mask)
    with pytest.raises(ValueError, match="mask must have the shape"):
        ppo_clip(lp, old, adv, mask[:, :2])
    with pytest.raises(TypeError):
        ppo_clip(lp, old, adv, mask, clip_hgh=0.28)
    with pytest.raises(ValueError) as err:
        get_policy_loss("ppo")
    assert "ppo_clip" in str(err.value)
    with pytest.raises(ValueError, match="already registered"):
        AGGREGATIONS.register("token_mean")(lambda v, m, norm_length=None: v.sum())
    with pytest.raises(ValueError) as err:
        get_aggregation("sum")
    assert "token_mean" in str(err.value)
