"""End to end: `run_grpo` with Ray actors, the vLLM engine and the policy worker, on the tiny models.

One step of each kind is expensive on 2 cores (engine start ~10 s), so each test checks several things:
the run directory's contents, the metrics keys, that the checkpoint loads with from_pretrained, and resume.
"""
import json
import pathlib

import pytest

from rlkit.config import GRPOConfig, load_config
from rlkit.drivers.grpo import run_grpo

REQUIRED = ["step", "reward/mean", "reward/exact_match/mean", "completion/tokens_mean", "tokens/sampled",
            "tokens/sampled_total", "time/rollout_s", "time/reward_s", "time/update_s", "time/sync_s"]


def config(tmp_path, *overrides):
    return load_config(GRPOConfig, None, [f"output_dir={tmp_path / 'run'}", "logging.progress=false", *overrides])


def read_jsonl(path):
    return [json.loads(l) for l in pathlib.Path(path).read_text().splitlines()]


def test_grpo_text_model_vllm(tmp_path):
    """Also the hybrid-mode pieces: a mode schedule, (prompt, mode) advantage groups, per-mode metrics and the
    in-loop held-out evaluation."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = config(tmp_path, "model.path=tiny:text", "data.source=arithmetic", "max_steps=2", "rollout.n=4",
                 "rollout.max_tokens=6", "trainer.prompts_per_step=2", "rollout.engine=vllm", "modes.per=sample",
                 "modes.schedule=[[1, 0.0], [3, 1.0]]", "algorithm.mode_groups=mode", "trainer.eval_every=1",
                 "data.eval_limit=3", "rewards=[{name: exact_match}, {name: format}]")
    summary = run_grpo(cfg)
    out = tmp_path / "run"
    records = read_jsonl(out / "metrics.jsonl")
    metrics = [m for m in records if "reward/mean" in m]
    evals = [m for m in records if "eval/fast/accuracy" in m]
    assert [m["step"] for m in metrics] == [1, 2]
    for key in REQUIRED:
        assert key in metrics[-1], key
    assert all(m["train/mismatch_abs_logprob_diff"] < 1e-4 for m in metrics)  # vLLM vs trainer, after a sync
    assert metrics[1]["tokens/sampled_total"] == metrics[0]["tokens/sampled"] + metrics[1]["tokens/sampled"]
    samples = read_jsonl(out / "samples.jsonl")
    assert len(samples) == 2 * 2 * 4
    assert {"step", "prompt", "completion", "mode", "rewards", "reward", "advantage"} <= set(samples[0])
    # the schedule: ratio 0 at step 1 (all fast), halfway to 1 at step 2
    assert [m["mode/deep_ratio"] for m in metrics] == [0.0, 0.5]
    assert all(s["mode"] == "fast" for s in samples if s["step"] == 1)
    # the logged rewards are those of the completions logged beside them
    from rewards import exact_match, think_format

    prompts, completions = [s["prompt"] for s in samples], [s["completion"] for s in samples]
    expected = exact_match(prompts, completions, answer=[s["answer"] for s in samples])
    fmt = think_format(prompts, completions, mode=[s["mode"] for s in samples])
    assert [s["rewards"]["exact_match"] for s in samples] == expected
    assert [s["rewards"]["format"] for s in samples] == fmt
    assert [s["reward"] for s in samples] == [a + b for a, b in zip(expected, fmt)]  # weights 1
    # per-mode metrics agree with the logged samples (no group filter: every drawn sample is logged)
    fast_total = 0
    for m in metrics:
        step = [s for s in samples if s["step"] == m["step"]]
        assert m["mode/fast/tokens_sampled"] + m["mode/deep/tokens_sampled"] == m["tokens/sampled"]
        for mode in ("fast", "deep"):
            ss = [s for s in step if s["mode"] == mode]
            assert m[f"mode/{mode}/share"] == len(ss) / len(step)
            assert m[f"mode/{mode}/tokens_sampled"] == sum(s["tokens"] for s in ss)
            if ss:  # accuracy is the first reward's score (trainer.accuracy_reward unset), not the total
                assert m[f"mode/{mode}/accuracy"] == sum(s["rewards"]["exact_match"] for s in ss) / len(ss)
                assert m[f"mode/{mode}/reward_mean"] == pytest.approx(sum(s["reward"] for s in ss) / len(ss))
        fast_total += m["mode/fast/tokens_sampled"]
        assert m["mode/fast/tokens_sampled_total"] == fast_total
    # advantages are normalised within each (prompt, mode) subgroup: they sum to 0 there, and are 0 alone
    subgroups, groups = {}, {}
    for s in samples:
        subgroups.setdefault((s["step"], s["group"], s["mode"]), []).append(s["advantage"])
        groups.setdefault((s["step"], s["group"]), []).append(s)
    for adv in subgroups.values():
        assert abs(sum(adv)) < 1e-4 and (len(adv) > 1 or adv == [0.0])
    # not vacuous: some group mixes modes with rewards that differ (prompt-wide groups would give non-zero sums)
    assert any(len({s["mode"] for s in g}) == 2 and len({s["reward"] for s in g}) > 1 for g in groups.values())
    # held-out evaluation before the first step and after each step, against cumulative sampled tokens
    assert [e["step"] for e in evals] == [0, 1, 2]
    assert [e["tokens_sampled_total"] for e in evals] == [0] + [m["tokens/sampled_total"] for m in metrics]
    for e in evals:
        for mode in ("fast", "deep"):
            assert e[f"eval/{mode}/n"] == 3 and 0 <= e[f"eval/{mode}/accuracy"] <= 1
            assert 1 <= e[f"eval/{mode}/tokens_mean"] <= 6
    assert summary["eval/fast/accuracy"] == evals[-1]["eval/fast/accuracy"]
    ck = pathlib.Path(summary["checkpoint"])
    assert ck.name == "step_2" and (out / "config.yaml").exists()
    state = json.loads((ck / "run_state.json").read_text())
    assert state["mode_tokens_sampled_total"] == {"fast": metrics[-1]["mode/fast/tokens_sampled_total"],
                                                  "deep": metrics[-1]["mode/deep/tokens_sampled_total"]}
    AutoModelForCausalLM.from_pretrained(ck)
    AutoTokenizer.from_pretrained(ck)


def test_grpo_vlm_vllm_with_resume(tmp_path):
    """2 steps with a checkpoint each step, then --resume to 3: the run continues where it stopped."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    common = ["model.path=tiny:vlm", "data.source=easy_vqa", "rollout.n=4", "rollout.max_tokens=4",
              "trainer.prompts_per_step=2", "logging.save_every=1", "logging.keep_checkpoints=0",
              "trainer.eval_every=2", "data.eval_limit=2", "trainer.eval_modes=[fast]"]
    run_grpo(config(tmp_path, *common, "max_steps=2"))
    out = tmp_path / "run"
    state2 = json.loads((out / "checkpoints/step_2/run_state.json").read_text())
    assert state2["data_position"] == 4
    summary = run_grpo(config(tmp_path, *common, "max_steps=3"), resume=True)
    records = read_jsonl(out / "metrics.jsonl")
    metrics = [m for m in records if "reward/mean" in m]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    # held-out evaluations: step 0 and 2 in the first run; the resumed run adds its last step only
    assert [m["step"] for m in records if "eval/fast/accuracy" in m] == [0, 2, 3]
    # the trainer scores the sampled tokens as vLLM did (images, mrope positions, synced weights included)
    assert all(m["train/mismatch_abs_logprob_diff"] < 1e-4 for m in metrics)
    state3 = json.loads((out / "checkpoints/step_3/run_state.json").read_text())
    assert state3["data_position"] == 6
    assert state3["tokens_sampled_total"] == metrics[-1]["tokens/sampled_total"]
    # per-mode totals continue across the resume (deep_ratio 0: every token was sampled in fast mode)
    assert state3["mode_tokens_sampled_total"] == {"fast": state3["tokens_sampled_total"], "deep": 0}
    assert metrics[-1]["mode/fast/tokens_sampled_total"] == sum(m["tokens/sampled"] for m in metrics)
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
