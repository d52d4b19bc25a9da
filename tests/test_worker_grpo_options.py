"""End to end through `run_grpo` (Ray, vLLM, policy worker): LoRA + PPO epochs/mini-batches + KL in the reward."""
import json
import pathlib

import pytest

from rlkit.config import GRPOConfig, load_config


def test_grpo_lora_epochs_kl_in_reward_vllm(tmp_path):
    from transformers import AutoModelForCausalLM

    from rlkit.drivers.grpo import run_grpo

    cfg = load_config(GRPOConfig, None, [
        f"output_dir={tmp_path / 'run'}", "logging.progress=false", "model.path=tiny:text", "data.source=arithmetic",
        "max_steps=2", "rollout.n=4", "rollout.max_tokens=6", "trainer.prompts_per_step=2", "rollout.engine=vllm",
        "trainer.lr=5e-2", "trainer.mini_batch_size=4", "trainer.ppo_epochs=2", "trainer.micro_batch_size=2",
        "algorithm.kl_coef=0.1", "algorithm.kl_in_reward=true", "model.lora={r: 4, alpha: 32, targets: [language]}",
        "rewards=[{name: length, kwargs: {max_len: 12, cache: 10, unit: chars}}]"])  # rewards that vary: updates
    summary = run_grpo(cfg)
    out = tmp_path / "run"
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        assert m["train/optimizer_steps"] == 4.0  # 8 sequences / 4 per step x 2 epochs
        assert "kl/reward_seq_k1_mean" in m and "train/kl" not in m
        # vLLM runs the merged weights that the trainer's old logprobs came from (after the step-1 sync too)
        assert m["train/mismatch_abs_logprob_diff"] < 1e-4
    assert metrics[1]["kl/reward_seq_k1_mean"] != 0.0  # the adapters moved the policy away from the reference
    ck = pathlib.Path(summary["checkpoint"])
    assert (ck / "adapter" / "adapter_config.json").exists()
    AutoModelForCausalLM.from_pretrained(ck)


def test_config_keys_are_validated():
    from rlkit.config import ConfigError
    from rlkit.run.checks import check_grpo

    for bad, key in [("trainer.ppo_epochs=0", "trainer.ppo_epochs"), ("trainer.mini_batch_size=-1", "trainer.mini_batch_size"),
                     ("algorithm.kl_in_reward=true", "algorithm.kl_in_reward"), ("model.lora={rank: 2}", "model.lora")]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            check_grpo(load_config(GRPOConfig, None, [bad]))
