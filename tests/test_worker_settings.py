"""Typed worker settings built from the config in one function, and `PolicyWorker.loss` (no step) checked
against an independent computation from the model's own logprobs."""
import dataclasses

import pytest
import torch

from rlkit.config import GRPOConfig, load_config
from rlkit.step.modes import render_prompt
from rlkit.policy.settings import WorkerSettings
from rlkit.records import PromptRow, TrainItem
from rlkit.run.build import worker_settings
from rlkit.policy.worker import PolicyWorker


def test_worker_settings_from_a_grpo_config():
    cfg = load_config(GRPOConfig, None, [
        "trainer.lr=3e-5", "trainer.weight_decay=0.1", "trainer.betas=[0.8, 0.9]", "trainer.adam_eps=1e-3",
        "trainer.max_grad_norm=0.5", "trainer.micro_batch_size=3", "trainer.mini_batch_size=6", "trainer.ppo_epochs=2",
        "trainer.shuffle_minibatches=false", "trainer.num_cpus=2", "trainer.gradient_checkpointing=true",
        "algorithm.policy_loss=ppo_clip", "algorithm.loss_opts={clip_low: 0.1}", "algorithm.kl_coef=0.05",
        "algorithm.kl_estimator=k1", "rollout.temperature=0.7", "model.dtype=bfloat16", "model.freeze=[vision]",
        "model.lora={r: 4}", "seed=7"])
    s = worker_settings(cfg, reference_path="/base")
    assert s == WorkerSettings(
        dtype="bfloat16", freeze=("vision",), lora={"r": 4}, reference_path="/base", lr=3e-5, weight_decay=0.1,
        betas=(0.8, 0.9), adam_eps=1e-3, max_grad_norm=0.5, micro_batch_size=3, mini_batch_size=6, ppo_epochs=2,
        shuffle_minibatches=False, policy_loss="ppo_clip", loss_opts={"clip_low": 0.1}, kl_coef=0.05,
        kl_estimator="k1", kl_in_reward=False, temperature=0.7, seed=7, num_threads=2, device="auto",
        gradient_checkpointing=True, strategy="replicate")
    assert s.loss_opts is not cfg.algorithm.loss_opts  # a copy: the worker cannot change the config


def test_every_trainer_key_named_like_a_setting_reaches_it():
    """Adding an optimizer option is one field: a trainer/algorithm key with a setting's name is copied by name."""
    from rlkit.config import AlgorithmConfig, TrainerConfig

    shared = ({f.name for f in dataclasses.fields(TrainerConfig)} | {f.name for f in dataclasses.fields(AlgorithmConfig)}) \
        & {f.name for f in dataclasses.fields(WorkerSettings)}
    assert {"lr", "adam_eps", "betas", "policy_loss", "kl_coef", "strategy"} <= shared
    cfg = GRPOConfig()
    s = worker_settings(cfg)
    for name in shared:
        want = getattr(cfg.trainer, name, getattr(cfg.algorithm, name, None))
        assert getattr(s, name) == (tuple(want) if isinstance(want, list) else want), name


def test_unknown_setting_is_named():
    with pytest.raises(TypeError, match="lr_max"):
        worker_settings(GRPOConfig(), lr_max=1.0)


def _items(worker):
    tok = worker.tokenizer
    items = []
    for k, (q, a, adv) in enumerate([("What is 2 + 3?", "5", 1.5), ("What is 12 * 4?", "48 is it", -0.5),
                                     ("Hi", "7", 2.0)]):
        text = render_prompt(tok, PromptRow(k, q, [], None, {}), "fast")
        ids = tok(a, add_special_tokens=False)["input_ids"]
        items.append(TrainItem(text, [], ids, adv, [-0.5 * (j + 1) for j in range(len(ids))]))
    return items


def _direct_logprobs(worker, item):
    """One unpadded sequence: prompt tokens + completion, full logits, log_softmax, gather (float64)."""
    prompt = worker.tokenizer(item.prompt_text, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt + list(item.completion_ids)])
    with torch.no_grad():
        logits = worker.model(input_ids=ids).logits[0, len(prompt) - 1:-1].double()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(item.completion_ids).unsqueeze(-1)).squeeze(-1)


def test_loss_matches_an_independent_ppo_clip_token_mean_and_does_not_step(tiny_text_path):
    """ppo_clip with truncated importance weights (tis_cap) against the engine's logprobs: with the old logprobs
    equal to the current ones the ratio is 1, so loss = -sum_i sum_t A_i min(exp(lp_it - r_it), cap) / sum_i L_i,
    which depends on every logprob of the model."""
    w = PolicyWorker(tiny_text_path, micro_batch_size=2, loss_opts={"tis_cap": 3.0}, lr=1e-2)
    items = _items(w)
    before = {k: v.clone() for k, v in w.state_dict().items()}
    loss, metrics = w.loss(items)
    num, tokens, absdiff = 0.0, 0, 0.0
    for it in items:
        lp = _direct_logprobs(w, it)
        r = torch.tensor(it.rollout_logprobs, dtype=torch.float64)
        num += float((it.advantage * torch.exp(lp - r).clamp(max=3.0)).sum())
        absdiff += float((lp - r).abs().sum())
        tokens += len(it.completion_ids)
    # float32 logprobs (|lp| < 10) differ from the float64 reference by ~1e-6 per token; through exp (<= 3) and a
    # mean over a handful of tokens the loss moves by a few 1e-6: 1e-4 leaves a margin of ~30
    assert loss == pytest.approx(-num / tokens, abs=1e-4)
    assert metrics["mismatch_abs_logprob_diff"] == pytest.approx(absdiff / tokens, abs=1e-4)
    assert metrics["ratio_mean"] == pytest.approx(1.0, abs=1e-6)
    assert all(torch.equal(before[k], v) for k, v in w.state_dict().items())
    assert w.step == 0 and all(p.grad is None for p in w.model.parameters())
    # the first step of train_step optimises that same loss
    assert w.train_step(items)["train/loss"] == pytest.approx(loss, abs=1e-6)


def test_streamed_update_is_composed_over_the_public_update_parts(tiny_text_path):
    """`StreamedUpdate` (rlkit/policy/streaming.py) is an object the worker owns, not a mixin, and it reaches
    the worker only through `UpdateParts`: public members that PolicyWorker has, with the same parameters."""
    import ast
    import inspect

    from rlkit.policy import streaming
    from rlkit.policy.streaming import StreamedUpdate, UpdateParts

    assert PolicyWorker.__mro__[1:] == (object,)  # no base class lends the worker methods
    methods = {n for n, v in vars(UpdateParts).items() if callable(v) and not n.startswith("__")}
    members = methods | set(UpdateParts.__annotations__)
    assert {"accumulate", "apply_gradients", "end_step", "whole_batch"} <= methods
    assert not [n for n in members if n.startswith("_")]
    for name in methods:
        want = list(inspect.signature(getattr(UpdateParts, name)).parameters)
        got = [p for p in inspect.signature(getattr(PolicyWorker, name)).parameters if p != "_ray_trace_ctx"]
        assert got == want, name  # (Ray's actor decoration adds _ray_trace_ctx to the methods of the class)
    w = PolicyWorker(tiny_text_path, micro_batch_size=8)
    assert isinstance(w.stream, StreamedUpdate) and w.stream.parts is w
    assert all(hasattr(w, n) for n in UpdateParts.__annotations__)
    # every attribute StreamedUpdate reads from the worker (`w = self.parts`) is a member of UpdateParts
    tree = ast.parse(inspect.getsource(streaming.StreamedUpdate))
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
            and n.value.id == "w"}
    assert used and used <= members, used - members
