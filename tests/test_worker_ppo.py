"""Several optimizer steps per rollout batch (trainer.mini_batch_size, trainer.ppo_epochs): one step keeps the
no-extra-pass path, old logprobs are computed once before the first update, later steps see ratios != 1."""
import pytest
import torch

from rlkit.step.modes import render_prompt
from rlkit.records import PromptRow, TrainItem
from rlkit.policy.worker import PolicyWorker

QA = [("What is 2 + 3?", " 5"), ("What is 12 * 4?", " 48 is it"), ("Hi", " 7"), ("What is 9 - 1?", " 8 8"),
      ("What is 6 / 2?", " 3"), ("What is 1 + 1?", " 2 or 3")]


def text_items(w):
    items = []
    for i, (q, a) in enumerate(QA):
        text = render_prompt(w.tokenizer, PromptRow(i, q, [], None, {}), "fast")
        items.append(TrainItem(text, [], w.tokenizer(a, add_special_tokens=False)["input_ids"],
                               advantage=1.0 if i % 2 else -1.0, rollout_logprobs=[]))
    return items


def count_forwards(w):
    calls = []
    orig = w.model.forward

    def fwd(*a, **k):
        calls.append(1)
        return orig(*a, **k)

    w.model.forward = fwd
    return calls


def test_one_step_is_todays_path(tiny_text_path):
    """1 epoch x 1 mini-batch: no old-logprob pass, ratio exactly 1, same update as mini_batch_size=len."""
    a = PolicyWorker(tiny_text_path, lr=1e-2, micro_batch_size=4)
    b = PolicyWorker(tiny_text_path, lr=1e-2, micro_batch_size=4, mini_batch_size=len(QA), ppo_epochs=1)
    calls = count_forwards(a)
    ma, mb = a.train_step(text_items(a)), b.train_step(text_items(b))
    assert len(calls) == 2  # two micro-batches, one forward each: no extra pass for old logprobs
    assert ma["train/optimizer_steps"] == 1.0 and ma["train/ratio_mean"] == 1.0 and ma["train/clip_frac"] == 0.0
    for k in ("train/loss", "train/grad_norm", "train/entropy"):
        assert ma[k] == pytest.approx(mb[k], rel=1e-6)
    sa, sb = a.state_dict(), b.state_dict()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0)


def test_old_logprobs_equal_compute_logprobs_before_the_update(tiny_text_path):
    w = PolicyWorker(tiny_text_path, lr=1e-2, micro_batch_size=2, mini_batch_size=4, ppo_epochs=2)
    items = text_items(w)
    expected = w.compute_logprobs(items)
    captured = []
    orig = w._old_logprobs
    w._old_logprobs = lambda layout: captured.append(orig(layout)) or captured[0]
    calls = count_forwards(w)
    m = w.train_step(items)
    assert sorted(captured[0]) == list(range(len(items)))  # one (L_i,) tensor per item, keyed by its index
    for got, exp in zip([captured[0][i] for i in range(len(items))], expected):
        assert got.tolist() == pytest.approx(exp, abs=1e-6)
    # 6 items, mini 4 -> 2 mini-batches (4 + 2), micro 2 -> 3 micro-batches; 1 old pass + 2 epochs = 9 forwards
    assert len(calls) == 9
    assert m["train/optimizer_steps"] == 4.0
    assert [(u["epoch"], u["mini_batch"]) for u in w.update_log] == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_second_epoch_moves_ratio_and_clip(tiny_text_path):
    w = PolicyWorker(tiny_text_path, lr=5e-2, micro_batch_size=8, ppo_epochs=2,
                     loss_opts={"clip_low": 0.01, "clip_high": 0.01})
    w.train_step(text_items(w))
    first, second = w.update_log
    assert first["ratio_mean"] == pytest.approx(1.0, abs=1e-6) and first["clip_frac"] == 0.0
    assert abs(second["ratio_mean"] - 1.0) > 1e-4
    assert second["clip_frac"] > 0.0
    assert second["approx_kl"] > 0.0


def test_bad_values_are_refused(tiny_text_path):
    with pytest.raises(ValueError, match="ppo_epochs"):
        PolicyWorker(tiny_text_path, ppo_epochs=0)


# ------------------------------------------------ reshuffled mini-batches (trainer.shuffle_minibatches)
def epoch_orders(w):
    """Per epoch of the last train_step, the item indices in the order its mini-batches took them."""
    orders: dict[int, list[int]] = {}
    for u in w.update_log:
        orders.setdefault(u["epoch"], []).extend(u["items"])
    return [orders[e] for e in sorted(orders)]


def test_mini_batches_are_reshuffled_every_epoch_deterministically(tiny_text_path, tmp_path):
    kw = dict(lr=1e-2, micro_batch_size=2, mini_batch_size=2, ppo_epochs=3)
    a, b = PolicyWorker(tiny_text_path, seed=3, **kw), PolicyWorker(tiny_text_path, seed=3, **kw)
    a.train_step(text_items(a)), b.train_step(text_items(b))
    first = epoch_orders(a)
    assert all(sorted(o) == list(range(len(QA))) for o in first)  # each epoch: every item exactly once
    assert len({tuple(o) for o in first}) == 3  # a fresh composition each epoch
    assert all(len(u["items"]) == 2 for u in a.update_log)
    assert epoch_orders(b) == first  # same seed, same step: same draws
    other = PolicyWorker(tiny_text_path, seed=4, **kw)
    other.train_step(text_items(other))
    assert epoch_orders(other) != first

    a.save(str(tmp_path / "ck"))  # the draw depends on (seed, step, epoch) only: a resumed worker repeats it
    a.train_step(text_items(a))
    resumed = PolicyWorker(str(tmp_path / "ck"), seed=3, **kw)
    resumed.load_trainer_state(str(tmp_path / "ck"))
    resumed.train_step(text_items(resumed))
    assert epoch_orders(resumed) == epoch_orders(a) != first

    off = PolicyWorker(tiny_text_path, seed=3, shuffle_minibatches=False, **kw)
    off.train_step(text_items(off))
    assert epoch_orders(off) == [list(range(len(QA)))] * 3


def test_one_mini_batch_is_unchanged_by_shuffling(tiny_text_path):
    """With the whole batch as the only mini-batch the order is never permuted: bit-identical updates."""
    on = PolicyWorker(tiny_text_path, lr=5e-2, micro_batch_size=4, ppo_epochs=2)
    off = PolicyWorker(tiny_text_path, lr=5e-2, micro_batch_size=4, ppo_epochs=2, shuffle_minibatches=False)
    m_on, m_off = on.train_step(text_items(on)), off.train_step(text_items(off))
    assert epoch_orders(on) == [list(range(len(QA)))] * 2
    for k in ("train/loss", "train/grad_norm", "train/ratio_mean", "train/clip_frac"):
        assert m_on[k] == m_off[k]
    s_on, s_off = on.state_dict(), off.state_dict()
    for k in s_on:
        torch.testing.assert_close(s_on[k], s_off[k], rtol=0, atol=0)


def spy_loss(w):
    """Record (logprobs, old_logprobs, mask) of every policy-loss call (one per micro-batch)."""
    calls = []
    orig = w.loss_fn

    def fn(logp, old, adv, mask, **kw):
        calls.append((logp.detach().clone(), old.clone(), mask.clone()))
        return orig(logp, old, adv, mask, **kw)

    w.loss_fn = fn
    return calls


def test_old_logprobs_stay_with_their_items_after_a_shuffle(tiny_text_path):
    w = PolicyWorker(tiny_text_path, lr=5e-2, micro_batch_size=2, mini_batch_size=3, ppo_epochs=3)
    items = text_items(w)
    before = w.compute_logprobs(items)  # the policy that sampled, item by item
    calls = spy_loss(w)
    w.train_step(items)
    rows = [u["items"][s:s + 2] for u in w.update_log for s in range(0, len(u["items"]), 2)]
    assert len(rows) == len(calls) == 3 * 2 * 2  # 3 epochs x 2 mini-batches x 2 micro-batches
    assert epoch_orders(w)[1] != epoch_orders(w)[0]  # the later epochs really are permuted
    moved = 0.0
    for k, ((logp, old, mask), idx) in enumerate(zip(calls, rows)):
        for b, i in enumerate(idx):
            n = int(mask[b].sum())
            assert n == len(items[i].completion_ids)
            assert old[b, :n].tolist() == pytest.approx(before[i], abs=1e-5)
            if k < 2:  # first optimizer step (first mini-batch of epoch 0): same layout, same weights
                assert torch.equal(logp[b, :n], old[b, :n])  # ratio exactly 1 for every item
            else:
                moved = max(moved, float((logp[b, :n] - old[b, :n]).abs().max()))
    assert moved > 1e-3  # later steps see the moved policy against the right items' old logprobs


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_shuffled_mini_batch_loss_is_its_whole_aggregate(tiny_text_path, aggregation):
    """lr 0 keeps the ratio at 1, so each step's loss is the clip loss `-A` aggregated over exactly the
    items of its (shuffled) mini-batch, whatever the micro-batch split: checked against the formula by hand."""
    opts = {"aggregation": aggregation, "norm_length": 5}
    w = PolicyWorker(tiny_text_path, lr=0.0, micro_batch_size=2, mini_batch_size=3, ppo_epochs=2, loss_opts=opts)
    items = text_items(w)
    w.train_step(items)
    assert epoch_orders(w)[0] != list(range(len(QA)))
    for u in w.update_log:
        adv = [items[i].advantage for i in u["items"]]
        lens = [len(items[i].completion_ids) for i in u["items"]]
        expected = {
            "token_mean": -sum(a * n for a, n in zip(adv, lens)) / sum(lens),
            "seq_mean_token_mean": -sum(adv) / len(adv),
            "seq_mean_token_sum_norm": -sum(a * n for a, n in zip(adv, lens)) / (len(adv) * 5),
        }[aggregation]
        assert u["loss"] == pytest.approx(expected, abs=1e-5)
