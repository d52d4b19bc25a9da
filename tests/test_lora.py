"""LoRA (model.lora): only adapter weights train, the sync sends merged weights under the base names, the vLLM
engine follows them, and checkpoints hold the adapter plus a merged export loadable by from_pretrained."""
import pytest
import torch
from _updates import EXACT, assert_same_update

from rlkit.policy.lora import ADAPTER_DIR, lora_settings
from rlkit.records import TrainItem
from rlkit.policy.worker import PolicyWorker
from test_worker import vqa_items
from test_worker_ppo import text_items

LORA = {"r": 4, "alpha": 32, "targets": ["language"]}


def params(w):
    return {k: v.detach().clone() for k, v in w.model.named_parameters()}


def test_settings_are_validated():
    assert lora_settings({}) is None
    assert lora_settings({"r": 2, "targets": "vision"}).targets == ["vision"]
    with pytest.raises(ValueError, match="model.lora.*rank"):
        lora_settings({"rank": 2})
    with pytest.raises(ValueError, match="model.lora.targets"):
        lora_settings({"targets": ["lm_head"]})
    with pytest.raises(ValueError, match="model.lora.r"):
        lora_settings({"r": 0})


@pytest.mark.parametrize("targets", [["language"], ["language", "vision"]])
def test_grpo_step_changes_only_adapter_weights(tiny_vlm_path, targets):
    base = PolicyWorker(tiny_vlm_path)
    w = PolicyWorker(tiny_vlm_path, lr=5e-2, lora={**LORA, "targets": targets})
    counts = w.trainable_counts()
    assert counts["language"] > 0 and counts["projector"] == 0
    assert (counts["vision"] > 0) == ("vision" in targets)
    assert all(("lora_" in n) == p.requires_grad for n, p in w.model.named_parameters())
    before = params(w)
    assert w.state_dict().keys() == base.state_dict().keys()  # merged, under the base model's names
    w.train_step(vqa_items(w))
    after = params(w)
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and all("lora_" in k for k in changed)
    assert any("visual" in k for k in changed) == ("vision" in targets)
    merged, orig = w.state_dict(), base.state_dict()
    moved = {k for k in merged if not torch.allclose(merged[k], orig[k], atol=1e-7)}
    assert moved and all(k.endswith("proj.weight") or k.endswith("qkv.weight") for k in moved)


def test_checkpoint_adapter_and_merged_export(tiny_text_path, tmp_path):
    from transformers import AutoModelForCausalLM

    w = PolicyWorker(tiny_text_path, lr=5e-2, lora=LORA)
    w.train_step(text_items(w))
    w.save(str(tmp_path / "ck"))
    assert (tmp_path / "ck" / ADAPTER_DIR / "adapter_config.json").exists()
    merged = w.state_dict()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ck")
    for k, v in loaded.state_dict().items():
        torch.testing.assert_close(v, merged[k])
    # resume: the adapter goes back on the base model, with the optimizer state
    w2 = PolicyWorker(str(tmp_path / "ck"), lr=5e-2, lora=LORA)
    w2.load_trainer_state(str(tmp_path / "ck"))
    for k, v in w2.state_dict().items():
        torch.testing.assert_close(v, merged[k])
    m1, m2 = w.train_step(text_items(w)), w2.train_step(text_items(w2))
    assert m1["train/loss"] == pytest.approx(m2["train/loss"], rel=1e-5)
    for k, v in w2.state_dict().items():
        torch.testing.assert_close(v, w.state_dict()[k])


def test_synced_vllm_engine_follows_the_adapters(tiny_text_path, tmp_path):
    pytest.importorskip("vllm")
    from rollout import RolloutRequest, SamplingConfig, make_engine
    from rollout.testing import chat_prompt

    w = PolicyWorker(tiny_text_path, lr=5e-2, lora=LORA)
    eng = make_engine("vllm", model_path=tiny_text_path, max_model_len=512, kv_cache_gib=0.25, seed=0)
    try:
        req = RolloutRequest(chat_prompt(eng.tokenizer, "What is 2 + 3?"), [], request_id=0)
        greedy = SamplingConfig(temperature=0.0, max_tokens=8)
        before = eng.generate([req], greedy)[0][0]
        for _ in range(2):
            w.train_step(text_items(w))
        eng.update_weights(w.state_dict())
        after = eng.generate([req], greedy)[0][0]
        mine = w.compute_logprobs([TrainItem(req.prompt, [], after.token_ids, 0.0, [])])[0]
        assert max(abs(a - b) for a, b in zip(after.logprobs, mine)) < 1e-3
        old = w.compute_logprobs([TrainItem(req.prompt, [], before.token_ids, 0.0, [])])[0]
        assert max(abs(a - b) for a, b in zip(before.logprobs, old)) > 1e-2  # the adapters changed the policy
    finally:
        eng.close()


# ------------------------------------------------------------------------ KL reference: the policy with adapters off
def modules_held(w):
    return [k for k, v in vars(w).items() if isinstance(v, torch.nn.Module)]


def test_kl_reference_is_the_policy_with_adapters_off(tiny_text_path):
    w = PolicyWorker(tiny_text_path, lr=5e-2, lora=LORA, kl_coef=0.5)  # KL in the loss
    assert w.ref_adapters_off and w.ref_model is None
    assert modules_held(w) == ["model"]  # no second model anywhere on the worker
    items = text_items(w)
    assert "train/kl" in w.train_step(items)
    w.train_step(items)
    base = PolicyWorker(tiny_text_path)  # the base model, loaded independently
    expected = base.compute_logprobs(items)
    policy = w.compute_logprobs(items)
    assert max(abs(p - q) for a, b in zip(policy, expected) for p, q in zip(a, b)) > 1e-2  # adapters moved it
    got = []
    for _, mb in w._micro_batches(items):
        ref = w._ref_logprobs(mb)
        got += [ref[b, :int(mb["mask"][b].sum())].tolist() for b in range(ref.shape[0])]
    for g, e in zip(got, expected):
        assert g == pytest.approx(e, abs=1e-6)
    assert w.model.training and w.compute_logprobs(items) == policy  # adapters back on, train mode restored
    kl = w.reference_kl(items)
    assert kl == pytest.approx([sum(p) - sum(q) for p, q in zip(policy, expected)], abs=1e-5)


def test_kl_reference_copy_when_adapters_off_is_not_the_reference(tiny_text_path, tmp_path):
    from rlkit.policy.lora import adapters_off_is_reference, apply_lora
    from rlkit.models.loading import load_policy

    w = PolicyWorker(tiny_text_path, lr=5e-2, lora=LORA)
    w.train_step(text_items(w))
    w.save(str(tmp_path / "ck"))
    # resumed from a checkpoint, the adapters sit on the base model: still the reference when it is named
    resumed = PolicyWorker(str(tmp_path / "ck"), lora=LORA, kl_coef=0.1, reference_path=tiny_text_path)
    assert resumed.ref_adapters_off and resumed.ref_model is None
    # another reference (here the checkpoint's merged weights) is not the adapters' base: a copy is loaded
    other = PolicyWorker(str(tmp_path / "ck"), lora=LORA, kl_coef=0.1)
    assert not other.ref_adapters_off and other.ref_model is not None
    assert modules_held(other) == ["model", "ref_model"]
    # a non-adapter parameter that trains moves the base itself: adapters off is no longer the reference
    model = apply_lora(load_policy(tiny_text_path)[0], lora_settings(LORA))
    assert adapters_off_is_reference(model, tiny_text_path, tiny_text_path)
    model.get_base_model().model.embed_tokens.weight.requires_grad_(True)
    assert not adapters_off_is_reference(model, tiny_text_path, tiny_text_path)
    assert not adapters_off_is_reference(load_policy(tiny_text_path)[0], tiny_text_path, tiny_text_path)  # no peft


def test_adapters_off_reference_trains_like_a_loaded_copy(tiny_text_path, tmp_path):
    """Same seed, same batches: the adapters-off reference gives the KL and updates a loaded base copy gives."""
    import shutil

    copy = shutil.copytree(tiny_text_path, tmp_path / "base_copy")  # another folder: the worker loads it
    kw = dict(lr=5e-2, lora=LORA, kl_coef=0.5, micro_batch_size=2, mini_batch_size=3, ppo_epochs=2,
              **EXACT)  # the two references round differently: tests/_updates.py
    off, loaded = PolicyWorker(tiny_text_path, **kw), PolicyWorker(tiny_text_path, reference_path=str(copy), **kw)
    assert off.ref_model is None and loaded.ref_model is not None
    base = {k: v.clone() for k, v in off.state_dict().items()}
    for _ in range(2):
        m_off, m_loaded = off.train_step(text_items(off)), loaded.train_step(text_items(loaded))
        assert m_off["train/kl"] == pytest.approx(m_loaded["train/kl"], rel=1e-4, abs=1e-7)
    assert m_off["train/kl"] > 1e-4
    assert_same_update(off.state_dict(), loaded.state_dict(), base)
