"""The bounded-staleness collector (rlkit/step/ahead.py) with plain functions for the engine, the collection and
the policy: which weights sample each batch, which weights score it, and that both follow the schedule, not the
timing (the trainer is made slow and fast in turn). The real loop: tests/test_async_e2e.py."""
import time
import types

import pytest

from rlkit.step.ahead import Ahead, AheadError, async_metrics, staleness_metrics


class World:
    """An engine that holds one set of weights, a trainer at some version, a collection that samples with the
    engine and scores with the (gated) policy."""

    def __init__(self):
        self.engine = "w0"  # the weights the engines hold (the run starts from version 0)
        self.trainer = 0  # the trainer's version
        self.loads = []
        self.log = {}  # step -> (engine weights while sampling, trainer version while scoring)
        self.policy = None  # the gated policy access, set once the Ahead exists

    def load(self, ref):
        self.loads.append(ref)
        self.engine = ref

    def collect(self, step):
        sampled = self.engine
        time.sleep(0.01 * (step % 2))  # generation takes a while, unevenly
        scored = self.policy.completion_logprobs()
        self.log[step] = (sampled, scored)
        s = types.SimpleNamespace(version=None)
        return types.SimpleNamespace(samples=[s], everything=[s])

    def completion_logprobs(self):
        return self.trainer


def drive(k, max_steps, syncs, skipped=(), slow=()):
    w = World()
    a = Ahead(k, 0, max_steps, is_sync=lambda s: s in syncs, collect=w.collect, load=w.load,
              snapshot=lambda: {"n": len(w.loads)})
    w.policy = a.gated(w)
    versions = {}
    for step in range(1, max_steps + 1):
        c = a.next(step)
        versions[step] = c.samples[0].version
        time.sleep(0.03 if step in slow else 0.0)  # the update
        w.trainer = step
        a.trained(step, None if step in skipped else f"w{step}")
        if step in syncs:  # evaluation / checkpoint: the engines hold this step's weights, the thread waits
            assert w.engine == (f"w{step}" if step not in skipped else w.engine)
            assert a._busy is False
        a.release(step)
    a.close()
    return a, w, versions


@pytest.mark.parametrize("slow", [(), (1, 2, 3, 4, 5, 6, 7)])
def test_schedule_fixes_the_weights_that_sample_and_score_each_batch(slow):
    """k = 1, sync steps 3 and 7 (say a checkpoint and the last step), 7 steps. weights_for(t) = max(t - 1 - k,
    last sync before t): t = 1..7 -> 0, 0, 1, 3, 3, 4, 5 (step 4 restarts from the checkpoint's weights 3)."""
    a, w, versions = drive(1, 7, {3, 7}, slow=slow)
    want = [0, 0, 1, 3, 3, 4, 5]
    assert [a.weights_for(t) for t in range(1, 8)] == want
    assert [versions[t] for t in range(1, 8)] == want
    assert [w.log[t][0] for t in range(1, 8)] == [f"w{v}" for v in want]  # the engines sampled with them
    assert [w.log[t][1] for t in range(1, 8)] == [t - 1 for t in range(1, 8)]  # RLPR scores with version t-1
    assert w.loads == ["w1", "w3", "w4", "w5", "w7"]  # each once, when first needed (3 and 7: at their sync)


def test_staleness_two_and_a_skipped_update():
    """k = 2, no sync before the end: versions 0, 0, 0, 1, 2, 3; step 2's update is skipped, so version 2 holds
    version 1's weights and batch 5 (version 2) needs no load."""
    a, w, versions = drive(2, 6, {6}, skipped={2})
    assert [versions[t] for t in range(1, 7)] == [0, 0, 0, 1, 2, 3]
    assert [w.log[t][0] for t in range(1, 7)] == ["w0", "w0", "w0", "w1", "w1", "w3"]
    assert w.loads == ["w1", "w3", "w6"]  # 6: the last step is a sync


def test_metrics_and_the_bound():
    samples = [types.SimpleNamespace(version=v) for v in (4, 4, 3)]
    m = staleness_metrics(samples, step=5, k=2)
    assert m == {"async/staleness_hist/0": 2.0, "async/staleness_hist/1": 1.0, "async/staleness_hist/2": 0.0,
                 "async/staleness_mean": pytest.approx(1 / 3), "async/staleness_max": 1.0, "async/version_min": 3.0}
    with pytest.raises(AheadError, match="more than rollout.max_staleness = 1"):
        staleness_metrics([types.SimpleNamespace(version=2)], step=5, k=1)
    assert async_metrics(None, 5, None) == {}


def test_a_failure_in_the_thread_reaches_the_driver():
    def collect(step):
        if step == 2:
            raise ValueError("reward server down")
        s = types.SimpleNamespace(version=None)
        return types.SimpleNamespace(samples=[s], everything=[s])

    a = Ahead(1, 0, 4, is_sync=lambda s: False, collect=collect, load=lambda ref: None, snapshot=dict)
    assert a.next(1).samples[0].version == 0
    with pytest.raises(AheadError, match="step 2 .*ValueError: reward server down"):
        a.next(2)
    a.close()


def test_resume_schedule_matches_the_uninterrupted_one():
    """A run resumed from the checkpoint of sync step 3 starts its thread at 3 and samples batches 4.. with the
    same versions as the uninterrupted run (k = 2, syncs 3 and 8)."""
    sync = {3, 8}.__contains__
    straight = Ahead(2, 0, 8, sync, collect=None, load=None, snapshot=dict)
    straight.close()
    resumed = Ahead(2, 3, 8, sync, collect=None, load=None, snapshot=dict)
    resumed.close()
    assert [straight.weights_for(t) for t in range(4, 9)] == [resumed.weights_for(t) for t in range(4, 9)] \
        == [3, 3, 3, 4, 5]


def test_config_refuses_what_cannot_overlap():
    from rlkit.config import ConfigError, GRPOConfig, check_async, load_config

    for extra, key in ((["rollout.stream_chunks=2"], "rollout.stream_chunks"), (["rollout.sleep=true"], "rollout.sleep")):
        cfg = load_config(GRPOConfig, None, ["rollout.max_staleness=1", *extra])
        with pytest.raises(ConfigError, match=f"'rollout.max_staleness': 1 needs {key}"):
            check_async(cfg)
        check_async(load_config(GRPOConfig, None, extra))  # on-policy: fine
    with pytest.raises(ConfigError, match="max_staleness"):
        load_config(GRPOConfig, None, ["rollout.max_staleness=-1"])
