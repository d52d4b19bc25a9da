"""Scale-out (rlkit/distributed/pool.py): rollout workers and policy ranks change where the work runs, not the result.

- `balanced_chunks` keeps order and balances sample counts;
- 2 policy ranks (Ray actors, one gloo group) take the same optimizer steps as 1 worker on the same batch;
- a GRPO run with 2 vLLM rollout workers and 2 policy ranks samples the same completions and ends with the
  same weights as 1 and 1 (same seed);
- a rollout worker killed with `ray.kill` is recreated with the last synced weights and its requests resent.
"""
import json
import pathlib

import pytest
import torch
from _updates import EXACT, assert_same_update

from rollout.base import balanced_chunks


def test_balanced_chunks_keep_order_and_balance_samples():
    assert balanced_chunks([4, 4, 4, 4], 2) == [(0, 2), (2, 4)]
    assert balanced_chunks([2, 6, 2, 6], 2) == [(0, 2), (2, 4)]
    assert balanced_chunks([3, 1, 1, 1, 1, 1], 3) == [(0, 1), (1, 3), (3, 6)]
    assert balanced_chunks([8], 2) == [(0, 1)]  # fewer requests than workers: idle workers, no empty chunk
    assert balanced_chunks([], 2) == []
    for sizes in ([1] * 7, [5, 1, 1, 1, 1, 1], [2, 3, 4, 1, 8]):
        chunks = balanced_chunks(sizes, 3)
        assert [lo for lo, _ in chunks][0] == 0 and chunks[-1][1] == len(sizes)
        assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))


@pytest.fixture(scope="module")
def ray_local():
    from rlkit.distributed.orchestration import init_ray, shutdown

    init_ray("", 4)
    yield
    shutdown()


def _items(worker):
    from rlkit.step.modes import render_prompt
    from rlkit.records import PromptRow, TrainItem

    tok = worker.tokenizer
    items = []
    for i, (q, a) in enumerate([("What is 2 + 3?", "5"), ("What is 12 * 4?", "48 is it"), ("Hi", "7 7 7"),
                                ("What is 9 - 1?", "8"), ("7 * 7?", "49 or so"), ("1 + 1", "2")]):
        text = render_prompt(tok, PromptRow(i, q, [], None, {}), "fast")
        items.append(TrainItem(text, [], tok(a, add_special_tokens=False)["input_ids"], float(i % 3) - 1.0, []))
    return items


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean"])
def test_two_ranks_take_the_same_steps_as_one(tiny_text_path, ray_local, aggregation):
    """6 items, mini-batches of 4 (2 optimizer steps an epoch, the second has 2 rows), 2 epochs with shuffling,
    micro-batches of 1 and a KL term: every path that splits work across ranks."""
    from rlkit.distributed.orchestration import spawn
    from rlkit.distributed.pool import PolicyGroup, PolicyRank
    from rlkit.policy.worker import PolicyWorker

    kw = dict(lr=1e-2, micro_batch_size=1, mini_batch_size=4, ppo_epochs=2, kl_coef=0.1,
              loss_opts={"aggregation": aggregation}, **EXACT)  # tests/_updates.py: a bound from the arithmetic
    single = PolicyWorker(tiny_text_path, **kw)
    items = _items(single)
    expected = single.train_step(items)
    group = PolicyGroup(lambda rank: spawn(PolicyRank, tiny_text_path, num_cpus=0.5, **kw), 2)
    try:
        got = group.train_step(items)
        weights = [ray_get(r.state_dict.remote()) for r in group.ranks]
    finally:
        group.close()
    base = PolicyWorker(tiny_text_path, dtype="float64").state_dict()
    ref = single.state_dict()
    for w in weights:  # both ranks hold the same weights, equal to the single worker's
        assert_same_update(w, ref, base)
    for k in ref:  # the two replicas are identical: the same summed gradient, the same step
        assert torch.equal(weights[0][k], weights[1][k]), k
    for k in ("train/loss", "train/grad_norm", "train/kl", "train/tokens", "train/optimizer_steps"):
        assert got[k] == pytest.approx(expected[k], rel=1e-4, abs=1e-6), k


def ray_get(ref):
    import ray

    return ray.get(ref)


def _run(tmp_path, name, *overrides):
    from rlkit.config import GRPOConfig, load_config
    from rlkit.drivers.grpo import run_grpo

    cfg = load_config(GRPOConfig, None, [
        f"output_dir={tmp_path / name}", "logging.progress=false", "model.path=tiny:text", "data.source=arithmetic",
        "max_steps=2", "rollout.n=4", "rollout.max_tokens=6", "trainer.prompts_per_step=3", "rollout.engine=vllm",
        "trainer.lr=1e-2", "rollout.num_cpus=0.5", "trainer.num_cpus=0.5",
        "rewards=[{name: length, kwargs: {max_len: 12, cache: 12, unit: chars}}]", *overrides])
    return run_grpo(cfg)


def _jsonl(path):
    return [json.loads(l) for l in pathlib.Path(path).read_text().splitlines()]


@pytest.mark.slow
def test_grpo_two_workers_two_ranks_match_one_and_one(tmp_path):
    """Same seed: the same completions (token ids and rewards) each step and the same weights after 2 steps."""
    from safetensors.torch import load_file

    a = _run(tmp_path, "one", "trainer.adam_eps=1e-3")  # Adam eps: tests/_updates.py (float32 here: vLLM)
    # colocated placement (worker i and rank i share a bundle) and rollout.sleep (a no-op on CPU) change nothing
    b = _run(tmp_path, "two", "trainer.adam_eps=1e-3", "rollout.num_workers=2", "trainer.num_ranks=2",
             "ray.placement=colocate", "rollout.sleep=true")
    sa, sb = _jsonl(tmp_path / "one/samples.jsonl"), _jsonl(tmp_path / "two/samples.jsonl")
    assert len(sa) == len(sb) == 2 * 3 * 4
    assert [s["completion"] for s in sa] == [s["completion"] for s in sb]
    assert [s["reward"] for s in sa] == [s["reward"] for s in sb]
    assert len({s["reward"] for s in sa}) > 1  # not vacuous: the advantages are not all zero
    ma, mb = _jsonl(tmp_path / "one/metrics.jsonl"), _jsonl(tmp_path / "two/metrics.jsonl")
    for x, y in zip(ma, mb):
        assert y["train/loss"] == pytest.approx(x["train/loss"], rel=1e-4, abs=1e-6)
        assert y["rollout/worker_restarts"] == 0
    wa = load_file(pathlib.Path(a["checkpoint"]) / "model.safetensors")
    wb = load_file(pathlib.Path(b["checkpoint"]) / "model.safetensors")
    base = load_file(tmp_path / "one/base_model/model.safetensors")
    # float32 end to end: dg ~ 1e-7 of the gradient scale instead of float64's, amplified 10x by Adam at eps 1e-3;
    # the bound is 1e-3 of the update (as test_streaming's end-to-end run), a thousand times a wrong update's O(1)
    assert_same_update(wb, wa, base, rel=1e-3)


@pytest.mark.slow
def test_killed_rollout_worker_is_recreated_with_the_synced_weights(tiny_text_path, ray_local):
    import ray

    from rlkit.distributed.orchestration import EngineActor, spawn
    from rlkit.distributed.pool import EnginePool
    from rollout import RolloutRequest, SamplingConfig

    pool = EnginePool(lambda _: spawn(EngineActor, "vllm", model_path=tiny_text_path, num_cpus=0.5, seed=0,
                                    max_model_len=256), num_workers=2, max_retries=1)
    try:
        reqs = [RolloutRequest(prompt=f"What is {i} + {i}?", n=2) for i in range(4)]
        sampling = SamplingConfig(temperature=1.0, max_tokens=6, seed=7)
        before = pool.generate(reqs, sampling)
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(tiny_text_path)
        g = torch.Generator().manual_seed(0)
        new = {k: v + 0.5 * torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}
        pool.update_weights(ray.put(new))
        after = pool.generate(reqs, sampling)
        ids = lambda out: [c.token_ids for group in out for c in group]
        assert ids(after) != ids(before)  # the new weights sample differently
        ray.kill(pool.actors[1])
        again = pool.generate(reqs, sampling)  # worker 1 is dead: recreated, loads `new`, its chunk is resent
        assert pool.restarts == 1
        assert ids(again) == ids(after)
        for x, y in zip([c for g in again for c in g], [c for g in after for c in g]):
            assert x.logprobs == pytest.approx(y.logprobs, abs=1e-4)
        ray.kill(pool.actors[0])  # dies again right after its restart: bounded by max_retries
        pool._make = lambda _: _dead_actor()
        with pytest.raises(RuntimeError, match="rollout.max_retries"):
            pool.generate(reqs, sampling)
    finally:
        pool.close()


def _dead_actor():
    """An engine actor that is already dead when the pool uses it (a worker that keeps dying)."""
    import ray

    from rlkit.distributed.orchestration import EngineActor, spawn

    a = spawn(EngineActor, "hf", model_path="/nonexistent", num_cpus=0.5)
    ray.kill(a)
    return a


def test_dead_policy_rank_stops_with_a_clear_message(tiny_text_path, ray_local):
    """Rank 1 dies: rank 0 would wait in the gradient all-reduce; the group kills it and names the rank."""
    import ray

    from rlkit.distributed.orchestration import spawn
    from rlkit.distributed.pool import PolicyGroup, PolicyRank, PolicyRankError

    group = PolicyGroup(lambda rank: spawn(PolicyRank, tiny_text_path, num_cpus=0.5, lr=1e-2), 2,
                        where=lambda: "/runs/x/checkpoints/step_3")
    items = _items(PolicyRank(tiny_text_path))
    group.train_step(items)
    ray.kill(group.ranks[1])
    with pytest.raises(PolicyRankError, match=r"policy rank 1 .*step_3 \(continue with --resume\)"):
        group.train_step(items)
    with pytest.raises(ray.exceptions.RayActorError):  # rank 0 was stopped too, not left in the collective
        ray.get(group.ranks[0].pid.remote(), timeout=30)


@pytest.mark.parametrize("key", ["rollout.num_workers=0", "trainer.num_ranks=0", "rollout.max_retries=-1",
                                 "rollout.timeout_s=-1", "trainer.timeout_s=-1", "reward_retries=-1",
                                 "ray.placement=packed", "ray.placement_strategy=pack"])
def test_scale_keys_are_checked(key, tmp_path):
    from rlkit.config import ConfigError, GRPOConfig, load_config
    from rlkit.run.checks import check_grpo

    with pytest.raises(ConfigError, match=key.split("=")[0]):  # ranges already at load (rlkit/config_ranges.py)
        check_grpo(load_config(GRPOConfig, None, [f"output_dir={tmp_path}", key]))


def test_local_ray_listens_on_loopback_only(ray_local):
    """Every TCP socket that the local Ray's processes (GCS, raylet, agents, workers) listen on is 127.0.0.1."""
    import psutil
    import ray

    assert ray.util.get_node_ip_address() == "127.0.0.1"
    node = ray._private.worker._global_node
    root_pids = {info.process.pid for infos in node.all_processes.values() for info in infos if info.process}
    procs = set()
    for pid in root_pids:
        try:
            p = psutil.Process(pid)
            procs |= {p, *p.children(recursive=True)}
        except psutil.NoSuchProcess:
            pass
    listening = [c.laddr for p in procs for c in _tcp(p) if c.status == psutil.CONN_LISTEN]
    assert listening  # not vacuous: the GCS and the raylet listen somewhere
    assert all(addr.ip in ("127.0.0.1", "::ffff:127.0.0.1") for addr in listening), listening


def _tcp(p):
    import psutil

    try:
        return p.net_connections(kind="tcp")
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


@pytest.mark.slow
def test_grpo_survives_a_rollout_worker_killed_mid_run(tmp_path):
    """SIGKILL one engine actor's process after step 1 (a crash or an OOM kill): the run recreates it with the
    synced weights, completes, counts the restart, and samples and trains exactly as an undisturbed run."""
    import os
    import signal
    import threading
    import time

    import psutil
    from safetensors.torch import load_file

    common = ["rollout.engine=hf", "rollout.num_workers=2", "max_steps=3"]
    a = _run(tmp_path, "calm", *common)
    killed = []

    def kill_one_engine():
        metrics = tmp_path / "stormy/metrics.jsonl"
        deadline = time.time() + 300
        while time.time() < deadline and not (metrics.exists() and metrics.read_text().strip()):
            time.sleep(0.05)
        for p in psutil.Process().children(recursive=True) + _ray_processes():
            try:
                if p.cmdline() and p.cmdline()[0].startswith(("ray::EngineActor", "ray::EarlyEngineActor")):
                    os.kill(p.pid, signal.SIGKILL)
                    killed.append(p.pid)
                    return
            except psutil.NoSuchProcess:
                pass

    watcher = threading.Thread(target=kill_one_engine)
    watcher.start()
    b = _run(tmp_path, "stormy", *common)
    watcher.join()
    assert killed, "no engine actor process found to kill"
    mb = _jsonl(tmp_path / "stormy/metrics.jsonl")
    assert [m["step"] for m in mb] == [1, 2, 3]
    assert mb[-1]["rollout/worker_restarts"] == 1
    sa, sb = _jsonl(tmp_path / "calm/samples.jsonl"), _jsonl(tmp_path / "stormy/samples.jsonl")
    assert [s["completion"] for s in sa] == [s["completion"] for s in sb]
    wa = load_file(pathlib.Path(a["checkpoint"]) / "model.safetensors")
    wb = load_file(pathlib.Path(b["checkpoint"]) / "model.safetensors")
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-5, atol=1e-6)


def _ray_processes():
    """Every process of the local Ray node (raylet, workers) when Ray runs in this process."""
    import psutil
    import ray

    node = ray._private.worker._global_node if ray.is_initialized() else None
    if node is None:
        return []
    out = []
    for infos in node.all_processes.values():
        for info in infos:
            try:
                p = psutil.Process(info.process.pid)
                out += [p, *p.children(recursive=True)]
            except (psutil.NoSuchProcess, AttributeError):
                pass
    return out


def test_hung_rollout_worker_is_recreated_then_the_call_fails_naming_the_key(tiny_text_path, ray_local):
    """rollout.timeout_s: a call over the limit counts as a hung worker (killed, recreated, resent); past
    rollout.max_retries the error names the key. A limit no generate call can meet makes every try hang."""
    from rlkit.distributed.orchestration import EngineActor, spawn
    from rlkit.distributed.pool import EnginePool
    from rollout import RolloutRequest, SamplingConfig

    pool = EnginePool(lambda _: spawn(EngineActor, "hf", model_path=tiny_text_path, num_cpus=0.5), 1,
                      max_retries=1, timeout_s=1e-4)
    try:
        with pytest.raises(RuntimeError, match=r"hung \(rollout.timeout_s\) 2 times .*'rollout.max_retries' = 1"):
            pool.generate([RolloutRequest(prompt="What is 2 + 2?", n=2)], SamplingConfig(max_tokens=4, seed=0))
        assert pool.restarts == 1
        pool.timeout_s = 0  # the recreated worker is healthy
        out = pool.generate([RolloutRequest(prompt="What is 2 + 2?", n=2)], SamplingConfig(max_tokens=4, seed=0))
        assert len(out) == 1 and len(out[0]) == 2
    finally:
        pool.close()


def test_rollout_worker_whose_constructor_fails_is_not_recreated(tmp_path, ray_local):
    """The same arguments fail the same way: a bad engine option used to cost rollout.max_retries more engine
    starts (tens of seconds) before the run stopped; a worker that served and then died is still recreated
    (test_killed_rollout_worker_is_recreated_with_the_synced_weights)."""
    from rlkit.distributed.orchestration import EngineActor, spawn
    from rlkit.distributed.pool import EnginePool
    from rollout import RolloutRequest, SamplingConfig

    bad = str(tmp_path / "nonexistent")
    pool = EnginePool(lambda _: spawn(EngineActor, "hf", model_path=bad, num_cpus=0.5), 1, max_retries=2)
    try:
        with pytest.raises(RuntimeError, match=f"^rollout worker 0 could not start: its constructor failed "
                                               f"\\(not retried\\); error: ActorDiedError: .*{bad}"):
            pool.generate([RolloutRequest(prompt="What is 2 + 2?", n=1)], SamplingConfig(max_tokens=2, seed=0))
        assert pool.restarts == 0
    finally:
        pool.close()


def test_last_line_of_a_remote_error_keeps_the_exception_and_its_details():
    from rlkit.distributed.pool import _last_line

    pydantic = RuntimeError("The actor died because of an error raised in its creation task, ray::EngineActor\n"
                            "  File \"x.py\", line 3, in f\n"
                            "pydantic_core._pydantic_core.ValidationError: 1 validation error for SchedulerConfig\n"
                            "max_num_seqs\n  Input should be greater than or equal to 1 [type=greater_than_equal]\n"
                            "    For further information visit https://errors.pydantic.dev/2/v/greater_than_equal")
    assert _last_line(pydantic) == ("RuntimeError: pydantic_core._pydantic_core.ValidationError: 1 validation error "
                                    "for SchedulerConfig; max_num_seqs; Input should be greater than or equal to 1 "
                                    "[type=greater_than_equal]")
    assert _last_line(OSError("trace\nOSError: no such file\n")) == "OSError: OSError: no such file"
    assert _last_line(ValueError("one line")) == "ValueError: one line"
