"""LoRA (model.lora): only adapter weights train, the sync sends merged weights under the base names, the vLLM
engine follows them, and checkpoints hold the adapter plus a merged export loadable by from_pretrained."""
import pytest
import torch

from rlkit.lora import ADAPTER_DIR, lora_settings
from rlkit.records import TrainItem
from rlkit.worker import PolicyWorker
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
