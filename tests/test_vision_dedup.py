"""Encoding each distinct image once (rlkit/policy/vision.py) is the same computation as encoding every copy:
equal logprobs and equal gradients, while the vision tower sees only the distinct images."""
import pytest

import rlkit.policy.worker as worker_mod
from rlkit.data import open_image
from rlkit.data.easy_vqa import load_easy_vqa
from rlkit.step.modes import render_prompt
from rlkit.records import PromptRow, TrainItem
from rlkit.policy.vision import image_inputs, supports_dedup
from rlkit.policy.worker import PolicyWorker


def _plain(model, pixel_values, image_grid_thw, image_keys, always=False):
    return {"pixel_values": pixel_values, "image_grid_thw": image_grid_thw}


def group_items(w, prompts=3, n=4):
    """`prompts` questions with `n` completions each (a GRPO batch: every image appears n times)."""
    ds = load_easy_vqa("train", limit=prompts, seed=2)
    pool = w.tokenizer(" yes no red blue circle square", add_special_tokens=False)["input_ids"]
    items = []
    for i in range(prompts):
        row = PromptRow(i, ds[i]["prompt"], [open_image(ds[i]["image"])], ds[i]["answer"], {})
        text = render_prompt(w.processor, row, "deep")
        for j in range(n):
            items.append(TrainItem(text, row.images, pool[j % 3: j % 3 + 2 + j], float(j - 1.5), []))
    return items


def _grads(w, items, fn, monkeypatch):
    monkeypatch.setattr(worker_mod, "image_inputs", fn)
    w.model.zero_grad()
    _, mb = next(w._micro_batches(items))
    logp, _ = w._logprobs(w.model, mb)
    (logp * mb["mask"]).sum().backward()
    return {k: p.grad.clone() for k, p in w.model.named_parameters() if p.grad is not None}


def test_dedup_gives_same_logprobs_and_gradients(tiny_vlm_path, monkeypatch):
    w = PolicyWorker(tiny_vlm_path, micro_batch_size=64)
    assert supports_dedup(w.model)
    items = group_items(w)
    dedup = w.compute_logprobs(items)
    monkeypatch.setattr(worker_mod, "image_inputs", _plain)
    plain = w.compute_logprobs(items)
    for a, b in zip(dedup, plain):
        assert a == pytest.approx(b, abs=1e-6)
    g_plain = _grads(w, items, _plain, monkeypatch)
    g_dedup = _grads(w, items, image_inputs, monkeypatch)
    assert set(g_plain) == set(g_dedup)
    assert any(k.startswith("model.visual") for k in g_dedup)  # the vision tower is trained through it
    for k in g_plain:
        scale = g_plain[k].abs().max().item() + 1e-12
        assert (g_plain[k] - g_dedup[k]).abs().max().item() / scale < 1e-4, k


def test_vision_tower_sees_each_distinct_image_once(tiny_vlm_path):
    w = PolicyWorker(tiny_vlm_path, micro_batch_size=64)
    items = group_items(w, prompts=3, n=4)
    seen = []
    hook = w.model.model.visual.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    try:
        _, mb = next(w._micro_batches(items))
        w._logprobs(w.model, mb)
    finally:
        hook.remove()
    patches = mb["image_grid_thw"].prod(-1)
    assert len(patches) == 12  # every sequence still lists its image (positions need it)
    assert seen == [int(patches[::4].sum())]  # ...but only the 3 distinct images are encoded


def test_no_repeat_or_unsupported_model_keeps_plain_path(tiny_vlm_path, tiny_text_path):
    w = PolicyWorker(tiny_vlm_path, micro_batch_size=64)
    _, mb = next(w._micro_batches(group_items(w, prompts=2, n=1)))
    kw = image_inputs(w.model, mb["pixel_values"], mb["image_grid_thw"], mb["image_keys"])
    assert kw["pixel_values"] is mb["pixel_values"] and "mm_encoder_outputs" not in kw
    text = PolicyWorker(tiny_text_path)
    assert not supports_dedup(text.model)
    with pytest.raises(ValueError, match="image keys"):
        image_inputs(w.model, mb["pixel_values"], mb["image_grid_thw"], mb["image_keys"][:1])


def test_dedup_under_lora(tiny_vlm_path):
    w = PolicyWorker(tiny_vlm_path, micro_batch_size=64, lora={"r": 4, "targets": ["language", "vision"]})
    assert supports_dedup(w.model)
    items = group_items(w, prompts=2, n=3)
    dedup = w.compute_logprobs(items)
    w.model.eval()
    from rollout.testing import reference_logprobs

    for it, lp in zip(items, dedup):
        assert lp == pytest.approx(reference_logprobs(w.model, w.processor, it.prompt_text, it.images,
                                                      it.completion_ids)[1], abs=1e-5)


class _Counting:
    """Wraps the processor and counts its calls (everything else is delegated)."""

    def __init__(self, proc):
        self.proc, self.calls = proc, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.proc(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.proc, name)


def test_prompt_encodings_are_shared_within_a_step_and_dropped_after(tiny_vlm_path):
    """Scoring (RLPR, KL reward) then training the same prompts runs the processor once per prompt; equal
    images given as different objects (as after a Ray round trip) count as the same image."""
    w = PolicyWorker(tiny_vlm_path, micro_batch_size=64)
    items = group_items(w, prompts=3, n=4)
    w.processor = counting = _Counting(w.processor)
    w.compute_logprobs(items)
    assert counting.calls == 3
    copies = [TrainItem(it.prompt_text, [im.copy() for im in it.images], it.completion_ids, it.advantage, [])
              for it in items]
    w.train_step(copies)
    assert counting.calls == 3  # reused, though the image objects differ
    w.compute_logprobs(items)
    assert counting.calls == 6  # dropped at the end of the step
