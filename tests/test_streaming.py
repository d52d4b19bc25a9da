"""A streamed update (rollout.stream_chunks, rlkit/policy/streaming.py): the batch arrives in parts, gradients accumulate
part by part, and the one optimizer step at the end is the same as `train_step` over the whole batch.

The weights each row gets are derived by hand for every aggregation (`relative_row_weights`), and the streamed
step is compared with the whole-batch step on a tiny real model: weights, loss, grad norm, tokens.
"""
import pytest
import torch
from _updates import EXACT, assert_same_update

from rlkit.policy.batching import _length_mask, _weights, relative_row_weights


@pytest.mark.parametrize("mode, norm, expected", [
    # token_mean: every token weighs 1/N, so a row weighs L_r/N and the one-token reference row 1/N: ratio L_r
    ("token_mean", None, [2.0, 3.0, 0.0]),
    # seq_mean_token_mean: every non-empty row weighs 1/B (an empty one 0): ratio 1
    ("seq_mean_token_mean", None, [1.0, 1.0, 0.0]),
    # Dr.GRPO, sum / (B * norm_length): a row weighs L_r / (B * 16), the reference 1 / (B * 16): ratio L_r
    ("seq_mean_token_sum_norm", 16, [2.0, 3.0, 0.0]),
])
def test_relative_row_weights_by_hand(mode, norm, expected):
    assert relative_row_weights([2, 3, 0], mode, norm).tolist() == pytest.approx(expected)


@pytest.mark.parametrize("mode, norm", [("token_mean", None), ("seq_mean_token_mean", None),
                                        ("seq_mean_token_sum_norm", 16)])
def test_parts_rescaled_give_the_whole_batch_weights(mode, norm):
    """Parts [2, 3] and [5, 1, 4]: relative weights times sum(whole weights) / sum(relative) = whole weights."""
    parts = [[2, 3], [5, 1, 4]]
    rel = torch.cat([relative_row_weights(p, mode, norm) for p in parts])
    whole = _weights(_length_mask([n for p in parts for n in p]), mode, norm).sum(-1)
    assert (rel * whole.sum() / rel.sum()).tolist() == pytest.approx(whole.tolist(), rel=1e-6)


def _worker(path, **kw):
    """A policy worker whose update can be compared with another computation of it: float64, Adam eps 1e-3
    (tests/_updates.py derives the bound this gives)."""
    from rlkit.policy.worker import PolicyWorker

    return PolicyWorker(path, lr=1e-2, micro_batch_size=2, **EXACT, **kw)


@pytest.mark.parametrize("kw", [
    dict(),
    dict(loss_opts={"aggregation": "seq_mean_token_mean"}),
    dict(loss_opts={"aggregation": "seq_mean_token_sum_norm", "norm_length": 8}, kl_coef=0.1),
], ids=["token-mean", "seq-mean", "dr-grpo-kl"])
def test_streamed_step_equals_whole_batch_step(tiny_text_path, kw):
    """6 items of different lengths in parts of 1, 3 and 2 rows (micro-batches of 2 cut inside the parts), two
    steps: the same weights, loss and grad norm as train_step on all 6 (float rounding aside)."""
    from test_scale import _items

    whole, streamed = _worker(tiny_text_path, **kw), _worker(tiny_text_path, **kw)
    items = _items(whole)
    base = {k: v.clone() for k, v in whole.state_dict().items()}
    for _ in range(2):
        expected = whole.train_step(items)
        assert [streamed.train_part(items[a:b]) for a, b in ((0, 1), (1, 4), (4, 6))] == [1, 4, 6]
        got = streamed.train_finish()
        assert got["train/stream_parts"] == 3.0 and got["time/update_idle_s"] >= 0.0
        for k in ("train/loss", "train/grad_norm", "train/tokens", "train/optimizer_steps", "train/entropy"):
            assert got[k] == pytest.approx(expected[k], rel=1e-5, abs=1e-7), k
    assert_same_update(streamed.state_dict(), whole.state_dict(), base)


def test_a_streamed_update_needs_only_the_public_update_parts(tiny_text_path):
    """`StreamedUpdate` over a view of the worker that has only the names of `UpdateParts` (public attributes and
    methods; any other name raises): the same step as train_step on the whole batch."""
    from test_scale import _items

    from rlkit.policy.streaming import StreamedUpdate, UpdateParts

    names = set(UpdateParts.__annotations__) | {n for n, f in vars(UpdateParts).items()
                                                  if callable(f) and not n.startswith("__")}

    class OnlyParts:
        def __init__(self, worker):
            self.worker = worker

        def __getattr__(self, name):
            if name not in names:
                raise AttributeError(f"StreamedUpdate used {name!r}, which UpdateParts does not name")
            return getattr(self.worker, name)

    whole, streamed = _worker(tiny_text_path), _worker(tiny_text_path)
    items = _items(whole)
    base = {k: v.clone() for k, v in whole.state_dict().items()}
    expected = whole.train_step(items)
    view = OnlyParts(streamed)  # (the update refers to its parts weakly: its owner keeps them)
    update = StreamedUpdate(view)
    assert [update.add(items[a:b]) for a, b in ((0, 2), (2, 6))] == [2, 6]
    got = update.finish()
    assert got["train/stream_parts"] == 2.0 and streamed.step == 1
    for k in ("train/loss", "train/grad_norm", "train/tokens", "train/optimizer_steps"):
        assert got[k] == pytest.approx(expected[k], rel=1e-5, abs=1e-7), k
    assert_same_update(streamed.state_dict(), whole.state_dict(), base)


def test_a_dropped_worker_frees_its_model_at_once(tiny_text_path):
    """The worker owns its `StreamedUpdate`, which refers back weakly: no reference cycle, so the last reference
    to a worker going frees its model then and there (with the garbage collector off), streamed step or not."""
    import gc
    import weakref

    from test_scale import _items

    w = _worker(tiny_text_path)
    items = _items(w)
    w.train_part(items[:3])
    w.train_part(items[3:])
    w.train_finish()
    model = weakref.ref(w.model)
    gc.collect()
    gc.disable()
    try:
        del w
        assert model() is None, "the worker outlived its last reference (a reference cycle)"
    finally:
        gc.enable()


def test_streamed_nan_part_skips_the_step(tiny_text_path):
    """A NaN advantage in the second part: the step is skipped (weights untouched), as in train_step."""
    import math

    from test_scale import _items

    w = _worker(tiny_text_path)
    items = _items(w)
    items[4].advantage = math.nan
    before = {k: v.clone() for k, v in w.state_dict().items()}
    w.train_part(items[:3])
    w.train_part(items[3:])
    m = w.train_finish()
    assert m["train/update_skipped"] == 1.0 and m["train/skipped_updates"] == 1.0
    assert all(torch.equal(v, before[k]) for k, v in w.state_dict().items())


def test_streaming_refuses_several_optimizer_steps(tiny_text_path):
    from test_scale import _items

    w = _worker(tiny_text_path, mini_batch_size=2)
    with pytest.raises(ValueError, match="mini_batch_size 0"):
        w.train_part(_items(w))
    with pytest.raises(ValueError, match="without a train_part"):
        w.train_finish()


def test_two_ranks_streamed_take_the_same_step_as_one(tiny_text_path):
    """trainer.num_ranks 2 (Ray actors, gloo, replicate): the driver's `train_part` refs for parts of 2 and 4 rows,
    then `train_finish`, give both ranks the weights of one worker's train_step over all 6. A part that fails
    (a token id outside the vocabulary) is not waited for when sent; `train_finish` raises PolicyRankError
    naming the rank and the error, and stops the ranks."""
    import dataclasses

    from rlkit.distributed.orchestration import init_ray, shutdown, spawn
    from rlkit.distributed.pool import PolicyGroup, PolicyRank, PolicyRankError
    from test_scale import _items

    kw = dict(loss_opts={"aggregation": "seq_mean_token_mean"})
    single = _worker(tiny_text_path, **kw)
    base = {k: v.clone() for k, v in single.state_dict().items()}
    items = _items(single)
    expected = single.train_step(items)
    init_ray("", 4)
    group = PolicyGroup(lambda rank: spawn(PolicyRank, tiny_text_path, num_cpus=0.5, lr=1e-2, micro_batch_size=2,
                                           **EXACT, **kw), 2)
    try:
        import ray

        pending = group.train_part(items[:2]) + group.train_part(items[2:])
        got = group.train_finish(pending)
        weights = [ray.get(r.state_dict.remote()) for r in group.ranks]
        bad = [dataclasses.replace(it, completion_ids=[10 ** 9]) for it in items[:2]]
        pending = group.train_part(items[:2]) + group.train_part(bad)  # returns at once
        with pytest.raises(PolicyRankError, match=r"policy rank [01] failed \(.*index.*\); the run stops"):
            group.train_finish(pending)
        with pytest.raises(ray.exceptions.RayActorError):  # every rank was stopped
            ray.get(group.ranks[1].pid.remote())
    finally:
        group.close()
        shutdown()
    for w in weights:
        assert_same_update(w, single.state_dict(), base)
    for k in ("train/loss", "train/grad_norm", "train/tokens"):
        assert got[k] == pytest.approx(expected[k], rel=1e-5, abs=1e-7), k


def test_grpo_streamed_matches_unstreamed(tmp_path):
    """A GRPO run (vLLM, Ray) with rollout.stream_chunks 3 (each of the 3 prompts its own chunk, trained while the
    next is generated) samples the same completions as stream_chunks 1 and takes the same updates: per-step
    loss and grad norm (before clipping: a wrong normaliser shows there), and the final weights in norm, to 1e-3
    of the update (float32 end to end, Adam eps 1e-3: tests/_updates.py and test_scale's 2+2 vs 1+1 run)."""
    import json
    import pathlib

    from safetensors.torch import load_file
    from test_scale import _run

    a = _run(tmp_path, "whole", "trainer.adam_eps=1e-3")
    b = _run(tmp_path, "streamed", "trainer.adam_eps=1e-3", "rollout.stream_chunks=3")
    rows = lambda run, f: [json.loads(x) for x in (tmp_path / run / f).read_text().splitlines()]  # noqa: E731
    sa, sb = rows("whole", "samples.jsonl"), rows("streamed", "samples.jsonl")
    assert len(sa) == len(sb) == 2 * 3 * 4
    assert [(s["completion"], s["reward"], s["advantage"]) for s in sa] == \
        [(s["completion"], s["reward"], s["advantage"]) for s in sb]
    assert len({s["reward"] for s in sa}) > 1  # not vacuous: non-zero advantages
    for x, y in zip(rows("whole", "metrics.jsonl"), rows("streamed", "metrics.jsonl")):
        for k in ("train/loss", "train/grad_norm", "train/tokens"):
            assert y[k] == pytest.approx(x[k], rel=1e-4, abs=1e-6), k
    wa = load_file(pathlib.Path(a["checkpoint"]) / "model.safetensors")
    wb = load_file(pathlib.Path(b["checkpoint"]) / "model.safetensors")
    base = load_file(tmp_path / "whole/base_model/model.safetensors")
    assert_same_update(wb, wa, base, rel=1e-3)


@pytest.mark.parametrize("override, names", [
    ("trainer.mini_batch_size=4", "trainer.mini_batch_size"),
    ("trainer.ppo_epochs=2", "trainer.ppo_epochs"),
    ("rollout.sleep=true", "rollout.sleep"),
    ("algorithm.advantage=batch_std", "algorithm.advantage"),
])
def test_streaming_config_clashes_name_both_keys(tmp_path, override, names):
    from rlkit.config import ConfigError, GRPOConfig, load_config
    from rlkit.run.checks import check_grpo

    check_grpo(load_config(GRPOConfig, None, [f"output_dir={tmp_path}", "rollout.stream_chunks=2"]))  # fine alone
    cfg = load_config(GRPOConfig, None, [f"output_dir={tmp_path}", "rollout.stream_chunks=2", override])
    with pytest.raises(ConfigError, match=rf"rollout.stream_chunks.*{names}"):
        check_grpo(cfg)
    with pytest.raises(ConfigError, match="rollout.stream_chunks"):
        check_grpo(load_config(GRPOConfig, None, [f"output_dir={tmp_path}", "rollout.stream_chunks=0"]))
