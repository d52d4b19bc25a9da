"""Both directions of TRL compatibility: TRL-written rewards run in rlkit unchanged, and rlkit's built-in
rewards run inside TRL's GRPOTrainer unchanged."""
import math

import pytest

from rewards import RewardScorer, RewardSpec, get_reward


def test_trl_rewards_run_in_rlkit_unchanged():
    # TRL's own reward functions, loaded by path: accuracy_reward expects conversational completions and a
    # `solution` column; get_soft_overlong_punishment's closure reads `completion_ids`.
    specs = [RewardSpec(path="trl.rewards:accuracy_reward", completion_format="messages"),
             RewardSpec(path="trl.rewards:think_format_reward", completion_format="messages")]
    comps = [r"<think>1/2 of 4</think>The answer is $\boxed{2}$", r"$\boxed{3}$", "no answer here"]
    cols = {"solution": ["$2$", "$2$", "$2$"], "answer": ["2", "2", "2"], "mode": ["deep", "fast", "fast"],
            "completion_ids": [[1] * 5, [1] * 9, [1] * 20]}
    with RewardScorer(specs, timeout_s=10) as scorer:
        r = scorer(["q"] * 3, comps, cols)
    assert r.failures == []
    assert r.per_reward["accuracy_reward"] == [1.0, 0.0, 0.0]
    assert r.per_reward["think_format_reward"] == [1.0, 0.0, 0.0]

    from trl.rewards import get_soft_overlong_punishment

    overlong = get_soft_overlong_punishment(max_completion_len=10, soft_punish_cache=4)  # a closure: runs in-process
    from rewards.registry import register_reward, unregister_reward

    register_reward("test_trl_overlong", overlong)
    try:
        with pytest.warns(RuntimeWarning, match="in-process"):
            scorer = RewardScorer([RewardSpec(name="test_trl_overlong")])
        with scorer:
            assert scorer(["q"] * 3, comps, cols).per_reward["test_trl_overlong"] == [0.0, -0.75, -1.0]
    finally:
        unregister_reward("test_trl_overlong")


@pytest.fixture(scope="module")
def tiny_trl_model(tmp_path_factory):
    from rlkit.models.tiny import save_tiny
    from rlkit.models.tokenizers import train_small_tokenizer

    texts = [f"What is {a} + {b}? Answer with a number." for a in range(5) for b in range(5)]
    texts += [str(i) for i in range(10)]
    return str(save_tiny(tmp_path_factory.mktemp("trl_tiny"), "text", train_small_tokenizer(texts, 512))), texts


def test_rlkit_rewards_take_trls_calling_convention():
    # exactly what GRPOTrainer._calculate_rewards passes (TRL 1.16), with a conversational dataset
    prompts = [[{"role": "user", "content": "What is 1/2 of 1?"}]] * 2
    completions = [[{"role": "assistant", "content": r"<think>half</think>\boxed{0.5}"}],
                   [{"role": "assistant", "content": "1"}]]
    extra = dict(completion_ids=[[5] * 6, [5] * 12], trainer_state=object(), log_extra=lambda *a: None,
                 log_metric=lambda *a: None, answer=[r"\frac{1}{2}"] * 2, image=[None, None])
    assert get_reward("math_accuracy")(prompts=prompts, completions=completions, **extra) == [1.0, 0.0]
    exact = get_reward("exact_match")(prompts=prompts, completions=completions, **{**extra, "answer": ["0.5"] * 2})
    assert exact == [1.0, 0.0]
    assert get_reward("format")(prompts=prompts, completions=completions, **extra) == [1.0, 0.0]
    assert get_reward("length", max_len=10, cache=4)(prompts=prompts, completions=completions, **extra) == [0.0, -1.0]
    assert get_reward("multiple_choice")(prompts=prompts, completions=completions, **extra) == [0.0, 0.0]


@pytest.mark.slow  # ~20 s on CPU, mostly importing TRL's trainer stack
def test_rlkit_rewards_run_inside_trl_grpo_trainer(tiny_trl_model, tmp_path):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    path, texts = tiny_trl_model
    ds = Dataset.from_dict({"prompt": texts[:4], "answer": ["0", "1", "2", "3"]})
    funcs = [get_reward("exact_match"), get_reward("math_accuracy"), get_reward("format", default_mode="fast"),
             get_reward("length", max_len=8, cache=4)]
    cfg = GRPOConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2, num_generations=2,
                     max_completion_length=8, use_vllm=False, report_to=[], logging_steps=1, save_strategy="no",
                     use_cpu=True, bf16=False, disable_tqdm=True, seed=0)
    trainer = GRPOTrainer(model=path, reward_funcs=funcs, args=cfg, train_dataset=ds)
    trainer.train()
    logs = trainer.state.log_history[0]
    for name in ("exact_match", "math_accuracy", "think_format", "length_penalty"):
        assert math.isfinite(logs[f"rewards/{name}/mean"]), name
    assert -1.0 <= logs["rewards/length_penalty/mean"] <= 0.0
    if logs["completions/min_length"] == 8:  # every completion hit the 8-token budget: DAPO gives exactly -1
        assert logs["rewards/length_penalty/mean"] == -1.0
