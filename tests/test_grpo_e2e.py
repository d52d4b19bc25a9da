"""End to end: `run_grpo` with Ray actors, the vLLM engine and the policy worker, on the tiny models.

One step of each kind is expensive on 2 cores (engine start ~10 s), so each test checks several things:
the run directory's contents, the metrics keys, that the checkpoint loads with from_pretrained, and resume.
"""
import json
import pathlib

import pytest

from rlkit.config import GRPOConfig, load_config
from rlkit.grpo import run_grpo

REQUIRED = ["step", "reward/mean", "reward/exact_match/mean", "completion/tokens_mean", "tokens/sampled",
            "tokens/sampled_total", "time/rollout_s", "time/reward_s", "time/update_s", "time/sync_s"]


def config(tmp_path, *overrides):
    return load_config(GRPOConfig, None, [f"output_dir={tmp_path / 'run'}", "logging.progress=false", *overrides])


def read_jsonl(path):
    return [json.loads(l) for l in pathlib.Path(path).read_text().splitlines()]


def test_grpo_text_model_vllm(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = config(tmp_path, "model.path=tiny:text", "data.source=arithmetic", "max_steps=2", "rollout.n=4",
                 "rollout.max_tokens=6", "trainer.prompts_per_step=2", "rollout.engine=vllm")
    summary = run_grpo(cfg)
    out = tmp_path / "run"
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    for key in REQUIRED:
        assert key in metrics[-1], key
    assert all(m["train/mismatch_abs_logprob_diff"] < 1e-4 for m in metrics)  # vLLM vs trainer, after a sync
    assert metrics[1]["tokens/sampled_total"] == metrics[0]["tokens/sampled"] + metrics[1]["tokens/sampled"]
    samples = read_jsonl(out / "samples.jsonl")
    assert len(samples) == 2 * 2 * 4
    assert {"step", "prompt", "completion", "mode", "rewards", "reward", "advantage"} <= set(samples[0])
    assert all(s["mode"] == "fast" for s in samples)
    # the logged rewards are those of the completions logged beside them
    from rewards import exact_match

    expected = exact_match([s["prompt"] for s in samples], [s["completion"] for s in samples],
                           answer=[s["answer"] for s in samples])
    assert [s["rewards"]["exact_match"] for s in samples] == expected
    assert [s["reward"] for s in samples] == expected  # one reward of weight 1: the total is that reward
    ck = pathlib.Path(summary["checkpoint"])
    assert ck.name == "step_2" and (out / "config.yaml").exists()
    AutoModelForCausalLM.from_pretrained(ck)
    AutoTokenizer.from_pretrained(ck)


def test_grpo_vlm_vllm_with_resume(tmp_path):
    """2 steps with a checkpoint each step, then --resume to 3: the run continues where it stopped."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    common = ["model.path=tiny:vlm", "data.source=easy_vqa", "rollout.n=4", "rollout.max_tokens=4",
              "trainer.prompts_per_step=2", "logging.save_every=1", "logging.keep_checkpoints=0"]
    run_grpo(config(tmp_path, *common, "max_steps=2"))
    out = tmp_path / "run"
    state2 = json.loads((out / "checkpoints/step_2/run_state.json").read_text())
    assert state2["data_position"] == 4
    summary = run_grpo(config(tmp_path, *common, "max_steps=3"), resume=True)
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3]
    # the trainer scores the sampled tokens as vLLM did (images, mrope positions, synced weights included)
    assert all(m["train/mismatch_abs_logprob_diff"] < 1e-4 for m in metrics)
    state3 = json.loads((out / "checkpoints/step_3/run_state.json").read_text())
    assert state3["data_position"] == 6
    assert state3["tokens_sampled_total"] == metrics[-1]["tokens/sampled_total"]
    samples = read_jsonl(out / "samples.jsonl")
    assert sorted({s["step"] for s in samples}) == [1, 2, 3]
    ck = pathlib.Path(summary["checkpoint"])
    AutoModelForImageTextToText.from_pretrained(ck)
    AutoProcessor.from_pretrained(ck)


def test_grpo_hf_engine_and_tensorboard(tmp_path):
    cfg = config(tmp_path, "model.path=tiny:text", "data.source=arithmetic", "max_steps=1", "rollout.n=2",
                 "rollout.max_tokens=4", "trainer.prompts_per_step=2", "rollout.engine=hf", "logging.tensorboard=true")
    run_grpo(cfg)
    out = tmp_path / "run"
    assert len(read_jsonl(out / "metrics.jsonl")) == 1
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
