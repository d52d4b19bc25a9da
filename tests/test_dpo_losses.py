"""DPO losses: hand-derived numbers, an independent loop computation, gradients, and TRL 1.16's own code.

TRL computes its DPO loss inside `DPOTrainer._compute_loss(self, model, inputs, ...)`. The TRL check calls
that method unchanged with a stand-in `self` (the attributes it reads) and a stand-in model whose output
carries the per-token log-probabilities we choose, so both sides see identical log-probabilities.
"""
import collections
import math
import random
import types

import pytest
import torch

from rlkit.algorithms.dpo import DPO_LOSSES, dpo_metrics, get_dpo_loss

T = torch.tensor


def close(a, b, tol=1e-6):
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64),
                               atol=tol, rtol=0)


def one_pair():
    """policy: chosen -1, rejected -3; reference: -2 for both -> delta = (-1 + 2) - (-3 + 2) = 2."""
    return T([-1.0]), T([-3.0]), T([-2.0]), T([-2.0])


def test_registry_has_the_three_losses_and_refuses_unknown():
    assert {"sigmoid", "ipo", "hinge"} <= set(DPO_LOSSES.names())
    with pytest.raises(ValueError, match="registered: .*sigmoid"):
        get_dpo_loss("dpo")
    with pytest.raises(ValueError, match="already registered"):
        DPO_LOSSES.register("sigmoid")(lambda *a, **k: None)


def test_sigmoid_hand_derived():
    # beta * delta = 0.2; -log sigmoid(0.2) = log(1 + e^-0.2) = log(1.8187308) = 0.5981389
    loss, m = get_dpo_loss("sigmoid")(*one_pair(), beta=0.1)
    close(loss, 0.5981389, 1e-6)
    # implicit rewards: 0.1 * (-1 + 2) = 0.1 and 0.1 * (-3 + 2) = -0.1
    close(m["rewards/chosen"], 0.1)
    close(m["rewards/rejected"], -0.1)
    close(m["rewards/margins"], 0.2)
    assert m["rewards/accuracies"] == 1.0
    assert (m["logps/chosen"], m["logps/rejected"]) == (-1.0, -3.0)


def test_sigmoid_label_smoothing_hand_derived():
    # 0.9 * 0.5981389 + 0.1 * -log sigmoid(-0.2) = 0.9 * 0.5981389 + 0.1 * 0.7981389 = 0.6181389
    loss, _ = get_dpo_loss("sigmoid")(*one_pair(), beta=0.1, label_smoothing=0.1)
    close(loss, 0.6181389, 1e-6)


def test_hinge_hand_derived():
    loss, _ = get_dpo_loss("hinge")(*one_pair(), beta=0.1)  # relu(1 - 0.2) = 0.8
    close(loss, 0.8)
    loss, _ = get_dpo_loss("hinge")(*one_pair(), beta=0.5)  # relu(1 - 1.0) = 0
    close(loss, 0.0)


def test_ipo_hand_derived():
    # lengths 2 and 4: d = 1/2 - (-1)/4 = 0.75; (0.75 - 1/(2*0.1))^2 = (0.75 - 5)^2 = 18.0625
    loss, _ = get_dpo_loss("ipo")(*one_pair(), beta=0.1, chosen_lengths=T([2]), rejected_lengths=T([4]))
    close(loss, 18.0625)
    # sequence-level form: d = 2; (2 - 5)^2 = 9
    loss, _ = get_dpo_loss("ipo")(*one_pair(), beta=0.1, length_normalize=False)
    close(loss, 9.0)
    with pytest.raises(ValueError, match="chosen_lengths"):
        get_dpo_loss("ipo")(*one_pair())


def test_accuracy_is_strict_and_zero_when_policy_equals_reference():
    lp = T([-1.0, -2.0, -5.0])
    loss, m = get_dpo_loss("sigmoid")(lp, lp - 1, lp, lp - 1)  # policy == reference
    close(loss, math.log(2))
    assert m["rewards/accuracies"] == 0.0 and m["rewards/margins"] == 0.0


def test_shapes_and_beta_are_checked():
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        get_dpo_loss("sigmoid")(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="rejected_logps"):
        get_dpo_loss("sigmoid")(torch.zeros(2), torch.zeros(3), torch.zeros(2), torch.zeros(2))
    with pytest.raises(ValueError, match="beta"):
        get_dpo_loss("hinge")(*one_pair(), beta=0.0)


def _loop_loss(name, c, r, rc, rr, lc, lr, beta):
    """Independent per-pair computation in plain Python floats."""
    out = []
    for i in range(len(c)):
        d = (c[i] - rc[i]) - (r[i] - rr[i])
        if name == "sigmoid":
            out.append(math.log1p(math.exp(-beta * d)))
        elif name == "hinge":
            out.append(max(0.0, 1 - beta * d))
        else:
            out.append(((c[i] - rc[i]) / lc[i] - (r[i] - rr[i]) / lr[i] - 1 / (2 * beta)) ** 2)
    return sum(out) / len(out)


@pytest.mark.parametrize("name", ["sigmoid", "hinge", "ipo"])
def test_losses_match_a_loop_and_reference_gets_no_gradient(name):
    rng = random.Random(3)
    B = 7
    vals = [[rng.uniform(-30, -1) for _ in range(B)] for _ in range(4)]
    lens = [[rng.randint(1, 20) for _ in range(B)] for _ in range(2)]
    c, r = T(vals[0], requires_grad=True), T(vals[1], requires_grad=True)
    rc, rr = T(vals[2], requires_grad=True), T(vals[3], requires_grad=True)
    loss, _ = get_dpo_loss(name)(c, r, rc, rr, beta=0.3, chosen_lengths=T(lens[0]), rejected_lengths=T(lens[1]))
    close(loss, _loop_loss(name, *vals, *lens, 0.3), 1e-5)
    loss.backward()
    assert rc.grad is None and rr.grad is None
    # d loss / d chosen = -d loss / d rejected for the unnormalised losses (they see only the difference)
    if name != "ipo":
        close(c.grad, -r.grad)
    # finite-difference check of one coordinate
    eps = 1e-3
    bumped = [list(v) for v in vals]
    bumped[0][2] += eps
    fd = (_loop_loss(name, *bumped, *lens, 0.3) - _loop_loss(name, *vals, *lens, 0.3)) / eps
    close(c.grad[2], fd, 1e-3)


# ------------------------------------------------------------------------------------------------ TRL 1.16
def trl_dpo_loss(loss_type, c, r, rc, rr, lc, lr, beta):
    """TRL's `DPOTrainer._compute_loss` on sequences whose per-token logps sum to c / r (lengths lc / lr)."""
    from trl.trainer.dpo_trainer import DPOTrainer

    B = len(c)
    width = 1 + max(lc + lr)  # one prompt column, then the completion
    per_token = torch.zeros(2 * B, width)
    completion_mask = torch.zeros(2 * B, width, dtype=torch.long)
    for i, (total, n) in enumerate(zip(c + r, lc + lr)):  # spread each sum evenly over its tokens
        per_token[i, 1:1 + n] = total / n
        completion_mask[i, 1:1 + n] = 1

    class Model:
        training = True

        def __call__(self, **kw):
            assert kw["fused_lm_head"] and (kw["labels"] == -100).sum() == (completion_mask == 0).sum()
            return types.SimpleNamespace(log_probs=per_token[:, 1:], entropy=torch.zeros(2 * B, width - 1),
                                         mean_logits=torch.zeros(2 * B, width - 1),
                                         is_top1=torch.zeros(2 * B, width - 1, dtype=torch.bool))

    acc = types.SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x, gather=lambda x: x)
    fake = types.SimpleNamespace(
        model=Model(), accelerator=acc, aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True,
        f_divergence_type="reverse_kl", loss_types=[loss_type], loss_weights=[1.0], beta=beta, use_weighting=False,
        _metrics={"train": collections.defaultdict(list)}, _total_train_tokens=0, _tp_size=1, label_smoothing=0.0,
    )
    inputs = {"input_ids": torch.ones(2 * B, width, dtype=torch.long), "attention_mask": torch.ones(2 * B, width),
              "completion_mask": completion_mask, "ref_chosen_logps": T(rc), "ref_rejected_logps": T(rr)}
    loss = DPOTrainer._compute_loss(fake, fake.model, inputs, return_outputs=False)
    return float(loss), {k: v[-1] for k, v in fake._metrics["train"].items()}


@pytest.mark.parametrize("name", ["sigmoid", "hinge", "ipo"])
def test_losses_and_metrics_match_trl(name):
    rng = random.Random(11)
    B = 6
    c, r, rc, rr = ([rng.uniform(-20, -2) for _ in range(B)] for _ in range(4))
    lc, lr = ([rng.randint(1, 9) for _ in range(B)] for _ in range(2))
    theirs, their_metrics = trl_dpo_loss(name, c, r, rc, rr, lc, lr, beta=0.2)
    ours, metrics = get_dpo_loss(name)(T(c), T(r), T(rc), T(rr), beta=0.2, chosen_lengths=T(lc),
                                       rejected_lengths=T(lr))
    close(ours, theirs, 1e-5)
    for k in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
              "logps/rejected"):
        close(metrics[k], their_metrics[k], 1e-5)


def test_metrics_helper_is_detached():
    c = T([-1.0], requires_grad=True)
    m = dpo_metrics(c, T([-2.0]), T([-1.5]), T([-1.5]), 0.1)
    assert all(isinstance(v, float) for v in m.values())
