"""The policy worker: batched logprobs equal an independent per-sequence forward, micro-batching does not
change the update, frozen parts stay fixed, a NaN never reaches the weights, and checkpoints round-trip."""
import copy
import math

import pytest
import torch
from _updates import assert_same_update

from rlkit.data import open_image
from rlkit.data.easy_vqa import load_easy_vqa
from rlkit.step.modes import render_prompt
from rlkit.records import PromptRow, TrainItem
from rlkit.policy.worker import PolicyWorker


def snapshot(w):
    """A copy of the weights (PolicyWorker.state_dict shares storage with the live parameters on CPU)."""
    return {k: v.clone() for k, v in w.state_dict().items()}


def vqa_items(worker, k=3, per=2):
    ds = load_easy_vqa("train", limit=k, seed=1)
    items = []
    for i in range(k):
        row = PromptRow(i, ds[i]["prompt"], [open_image(ds[i]["image"])], ds[i]["answer"], {})
        text = render_prompt(worker.processor, row, "fast" if i % 2 else "deep")  # different prompt lengths
        for j in range(per):
            ids = worker.tokenizer(" yes red circle", add_special_tokens=False)["input_ids"][: 1 + (i + j) % 3]
            items.append(TrainItem(text, row.images, ids, advantage=float(2 * j - 1) * (i + 1), rollout_logprobs=[]))
    return items


def reference_logprobs(worker, item):
    """Direct computation: one unpadded sequence through the processor, full logits, log_softmax, gather."""
    from rollout.testing import reference_logprobs as direct

    proc = worker.processor if item.images else worker.tokenizer
    return direct(worker.model, proc, item.prompt_text, item.images, item.completion_ids)[1]


def test_vlm_logprobs_match_direct_computation(tiny_vlm_path):
    w = PolicyWorker(tiny_vlm_path, micro_batch_size=4)
    items = vqa_items(w)
    got = w.compute_logprobs(items)
    w.model.eval()
    for it, lp in zip(items, got):
        assert lp == pytest.approx(reference_logprobs(w, it), abs=1e-5)


def test_text_logprobs_match_direct_computation(tiny_text_path):
    w = PolicyWorker(tiny_text_path, micro_batch_size=2)
    tok = w.tokenizer
    items = []
    for q, a in [("What is 2 + 3? Answer with a number.", "5"), ("What is 12 * 4?", "48 is it"), ("Hi", "7")]:
        text = render_prompt(tok, PromptRow(0, q, [], None, {}), "fast")
        items.append(TrainItem(text, [], tok(a, add_special_tokens=False)["input_ids"], 1.0, []))
    got = w.compute_logprobs(items)
    w.model.eval()
    for it, lp in zip(items, got):
        assert lp == pytest.approx(reference_logprobs(w, it), abs=1e-5)


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_micro_batching_gives_the_same_update(tiny_vlm_path, aggregation):
    opts = {"aggregation": aggregation, "norm_length": 4}
    whole = PolicyWorker(tiny_vlm_path, micro_batch_size=64, loss_opts=opts, dtype="float64")
    split = PolicyWorker(tiny_vlm_path, micro_batch_size=2, loss_opts=opts, dtype="float64")
    for w in (whole, split):  # SGD: the update is proportional to the gradient (Adam's first step is not)
        w.optimizer = torch.optim.SGD([p for p in w.model.parameters() if p.requires_grad], lr=1.0)
        w.max_grad_norm = 0
    items = vqa_items(whole)
    before = copy.deepcopy(whole.state_dict())
    m1, m2 = whole.train_step(items), split.train_step(items)
    assert m1["train/loss"] == pytest.approx(m2["train/loss"], rel=1e-5, abs=1e-7)
    a, b = whole.state_dict(), split.state_dict()
    moved = max(float((a[k] - before[k]).abs().max()) for k in a)
    assert moved > 1e-4  # the step did something
    # SGD at lr 1: the weights differ by the gradients' rounding, ~1e-7 of the update (float64 but for
    # transformers' float32 RMSNorm); compared in norm per tensor (tests/_updates.py), not element by element
    assert_same_update(b, a, before, rel=1e-4)


def test_full_policy_trains_and_freeze_holds(tiny_vlm_path):
    w = PolicyWorker(tiny_vlm_path, lr=1e-2)
    before = snapshot(w)
    w.train_step(vqa_items(w))
    after = w.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert any("visual.blocks" in k for k in changed)  # vision tower
    assert any("visual.merger" in k for k in changed)  # projector
    assert any("language_model" in k for k in changed)  # language model

    f = PolicyWorker(tiny_vlm_path, lr=1e-2, freeze=["vision", "projector"])
    before = snapshot(f)
    f.train_step(vqa_items(f))
    after = f.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in after if "visual" in k)
    assert any(not torch.equal(after[k], before[k]) for k in after if "language_model" in k)


def test_nan_never_reaches_the_weights(tiny_vlm_path):
    w = PolicyWorker(tiny_vlm_path, lr=1e-2)
    items = vqa_items(w)
    items[0].advantage = math.nan
    before = snapshot(w)
    m = w.train_step(items)
    assert m["train/update_skipped"] == 1.0 and m["train/skipped_updates"] == 1.0
    after = w.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in after)


def test_checkpoint_round_trip(tiny_vlm_path, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    w = PolicyWorker(tiny_vlm_path, lr=1e-2)
    w.train_step(vqa_items(w))
    w.save(str(tmp_path / "ck"))
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "ck")
    AutoProcessor.from_pretrained(tmp_path / "ck")
    sd = w.state_dict()
    for k, v in loaded.state_dict().items():
        torch.testing.assert_close(v, sd[k])
    w2 = PolicyWorker(str(tmp_path / "ck"), lr=1e-2)
    w2.load_trainer_state(str(tmp_path / "ck"))
    assert w2.step == 1
    s1 = w.optimizer.state_dict()["state"][0]["exp_avg"]
    s2 = w2.optimizer.state_dict()["state"][0]["exp_avg"]
    torch.testing.assert_close(s1, s2)


def test_device_resolution():
    from rlkit.models.loading import resolve_device

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="trainer.device"):
            resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (benchmarks/gpu_worker.py runs it there)")
def test_cuda_logprobs_equal_cpu(tiny_vlm_path):
    cpu = PolicyWorker(tiny_vlm_path, device="cpu")
    gpu = PolicyWorker(tiny_vlm_path, device="cuda")
    items = vqa_items(cpu)
    for a, b in zip(cpu.compute_logprobs(items), gpu.compute_logprobs(items)):
        # cuDNN runs the vision tower's patch convolution in TF32 by default: 1.6e-4 measured on an H100
        assert a == pytest.approx(b, abs=1e-3)
    assert math.isfinite(gpu.train_step(items)["train/loss"])


def test_gradient_checkpointing_gives_the_same_update(tiny_vlm_path):
    """Recomputing activations in backward changes memory, not the result: same loss and weights after a step."""
    results = []
    for gc in (False, True):
        w = PolicyWorker(tiny_vlm_path, micro_batch_size=2, gradient_checkpointing=gc, lr=1e-2)
        assert w.model.is_gradient_checkpointing == gc
        before = snapshot(w)
        m = w.train_step(vqa_items(w))
        results.append((m["train/loss"], snapshot(w)))
    (loss_a, wa), (loss_b, wb) = results
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    assert any(not torch.equal(before[k], wb[k]) for k in wb)  # the step did change the weights
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-6), k
