"""Several optimizer steps per rollout batch (trainer.mini_batch_size, trainer.ppo_epochs): one step keeps the
no-extra-pass path, old logprobs are computed once before the first update, later steps see ratios != 1."""
import pytest
import torch

from rlkit.modes import render_prompt
from rlkit.records import PromptRow, TrainItem
from rlkit.worker import PolicyWorker

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

    def spy(layout):
        orig(layout)
        for mini in layout:
            for _, mb in mini:
                for r in range(mb["mask"].shape[0]):
                    captured.append(mb["old_logprobs"][r, : int(mb["mask"][r].sum())].tolist())

    w._old_logprobs = spy
    calls = count_forwards(w)
    m = w.train_step(items)
    assert len(captured) == len(items)
    for got, exp in zip(captured, expected):
        assert got == pytest.approx(exp, abs=1e-6)
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
