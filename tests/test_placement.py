"""Placement groups (ray.placement), engine sleep (rollout.sleep) and hung policy ranks (trainer.timeout_s).

- `bundles` reserves one bundle per (worker i, rank i) pair when colocated, two disjoint groups when separate;
- the GRPO driver's own builders put each actor in its bundle (checked from inside the actors), and a
  recreated rollout worker goes back to its predecessor's bundle;
- a placement the cluster cannot hold fails fast, naming the key and the bundles;
- a policy-rank call past trainer.timeout_s stops every rank with an error naming the key;
- engines that cannot free memory (CPU) say so instead of pretending.
"""
import pytest

from rlkit.distributed.orchestration import bundles


def test_bundles_colocate_separate_none():
    r, t = {"CPU": 1, "GPU": 0.5}, {"CPU": 2, "GPU": 0.5}
    groups, workers, ranks = bundles("colocate", 3, 2, r, t)
    # bundles 0 and 1 hold a worker and a rank (one GPU: 0.5 + 0.5); bundle 2 only worker 2
    assert groups == [[{"CPU": 3, "GPU": 1.0}, {"CPU": 3, "GPU": 1.0}, {"CPU": 1, "GPU": 0.5}]]
    assert workers == [(0, 0), (0, 1), (0, 2)] and ranks == [(0, 0), (0, 1)]
    groups, workers, ranks = bundles("separate", 2, 2, {"CPU": 1, "GPU": 0}, {"CPU": 1, "GPU": 1})
    assert groups == [[{"CPU": 1}, {"CPU": 1}], [{"CPU": 1, "GPU": 1}, {"CPU": 1, "GPU": 1}]]  # zero GPUs dropped
    assert workers == [(0, 0), (0, 1)] and ranks == [(1, 0), (1, 1)]
    assert bundles("none", 2, 2, r, t) == ([], [], [])
    with pytest.raises(ValueError, match="placement"):
        bundles("packed", 1, 1, r, t)


@pytest.fixture(scope="module")
def ray_local():
    from rlkit.distributed.orchestration import init_ray, shutdown

    shutdown()  # a Ray an earlier test left running in this process (an in-process run) has other CPUs
    init_ray("", 4)
    yield
    shutdown()


def _cfg(tmp_path, *overrides):
    from rlkit.config import GRPOConfig, load_config

    return load_config(GRPOConfig, None, [f"output_dir={tmp_path}", "rollout.engine=hf", "rollout.num_workers=2",
                                          "trainer.num_ranks=2", "rollout.num_cpus=0.5", "trainer.num_cpus=0.5",
                                          *overrides])


@pytest.mark.parametrize("placement", ["colocate", "separate"])
def test_actors_land_in_their_bundles(tiny_text_path, ray_local, tmp_path, placement):
    import ray

    from rlkit.drivers.grpo import _engines, _placement, _policy
    from rollout import RolloutRequest, SamplingConfig

    cfg = _cfg(tmp_path, f"ray.placement={placement}")
    where = _placement(cfg)
    policy = engine = None
    try:
        keys = [f"CPU_group_{b}_{pg.id.hex()}" for pg in where.groups for b in range(2)]
        # before any actor, each bundle's CPUs are free (so the names are right); Ray's view lags a little
        assert _eventually(lambda: all(ray.available_resources().get(k, 0.0) > 0 for k in keys))
        policy = _policy(cfg, tiny_text_path, tiny_text_path, tmp_path, where)
        engine = _engines(cfg, tiny_text_path, where)
        ranks = policy.where_placed()
        workers = ray.get([a.where.remote() for a in engine.actors])
        pg_ids = [pg.id.hex() for pg in where.groups]
        assert [w["bundle"] for w in workers] == [0, 1] and [r["bundle"] for r in ranks] == [0, 1]
        # Ray's accounting: every bundle is exactly full (0.5 + 0.5 CPU colocated, 0.5 apart)
        assert _eventually(lambda: all(ray.available_resources().get(k, 0.0) == 0.0 for k in keys)), \
            ray.available_resources()
        if placement == "colocate":  # worker i and rank i: the same group and bundle
            assert len(pg_ids) == 1
            assert {w["placement_group"] for w in workers} == {r["placement_group"] for r in ranks} == {pg_ids[0]}
        else:  # two pools
            assert {w["placement_group"] for w in workers} == {pg_ids[0]}
            assert {r["placement_group"] for r in ranks} == {pg_ids[1]}
        # a worker killed between calls is recreated in its predecessor's bundle
        ray.kill(engine.actors[1])
        out = engine.generate([RolloutRequest(prompt="1 + 1 =", n=1), RolloutRequest(prompt="2 + 2 =", n=1)],
                              SamplingConfig(max_tokens=2, seed=0))
        assert len(out) == 2 and engine.restarts == 1
        assert ray.get(engine.actors[1].where.remote())["bundle"] == 1
        assert ray.get(engine.actors[1].where.remote())["placement_group"] == workers[1]["placement_group"]
        assert engine.sleep() is False  # hf engines on a CPU have nothing to free
    finally:
        for g in (engine, policy):
            if g is not None:
                g.close()
        where.remove()


def _eventually(check, timeout_s: float = 10.0) -> bool:
    import time

    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_unsatisfiable_placement_fails_fast_naming_the_key(ray_local):
    """More than the cluster has fails at once (tests/test_fail_fast.py); bundles that fit the cluster but not
    what is free (another actor holds it) wait ray.placement_timeout_s, then name the bundles."""
    import ray

    from rlkit.distributed.orchestration import place, spawn

    with pytest.raises(RuntimeError, match=r"asks Ray for \{CPU: 65, GPU: 0\}.*the cluster has \{CPU: 4, GPU: 0\}"):
        place("separate", "PACK", 1, 1, {"CPU": 64}, {"CPU": 1}, timeout_s=1.0)

    class Hog:
        def ping(self):
            return 1

    hog = spawn(Hog, num_cpus=3)
    try:
        assert ray.get(hog.ping.remote(), timeout=120) == 1
        with pytest.raises(RuntimeError, match=r"ray.placement' = 'separate'.*\{'CPU': 2\}.*ray.placement_timeout_s"):
            place("separate", "PACK", 1, 1, {"CPU": 2}, {"CPU": 1}, timeout_s=1.0)
    finally:
        ray.kill(hog)


def test_hung_policy_rank_stops_the_run_naming_the_key(tiny_text_path, ray_local):
    """A limit no train step can meet makes the rank 'hung': it is stopped and the error names the key."""
    import ray

    from rlkit.distributed.orchestration import spawn
    from rlkit.distributed.pool import PolicyGroup, PolicyRank, PolicyRankError
    from rlkit.records import TrainItem

    group = PolicyGroup(lambda rank: spawn(PolicyRank, tiny_text_path, num_cpus=0.5), 1,
                        where=lambda: "/runs/x/checkpoints/step_2", call_timeout_s=1e-3)
    items = [TrainItem("What is 1 + 1?", [], [5, 6, 7], 1.0, [])]
    with pytest.raises(PolicyRankError, match=r"rank\(s\) \[0\] hung.*'trainer.timeout_s'.*step_2"):
        group.train_step(items)
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(group.ranks[0].where.remote(), timeout=30)


def test_colocate_benchmark_dry_run_checks_sleep_exactness(tmp_path):
    """benchmarks/gpu_colocate.py on the CPU (what the GPU run executes, minus the memory figures): the engine
    cannot sleep there, and its exactness checks pass."""
    import json
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    out = tmp_path / "colo.json"
    proc = subprocess.run([sys.executable, str(root / "benchmarks/gpu_colocate.py"), "--device", "cpu", "--sizes",
                           "tiny", "--prompts", "2", "--n", "2", "--tokens", "6", "--out", str(out)],
                          cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert row["slept"] is False
    assert row["weights_exact_after_generate_wake"] and row["weights_exact_after_update_wake"]
    assert row["weights_changed_by_training"]
    assert row["repeatable_without_sleep"] and row["same_samples_after_generate_wake"]  # CPU sampling repeats


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_hf_engine_sleep_frees_gpu_memory_and_changes_no_sample(tiny_text_path):
    import torch

    from rollout import RolloutRequest, SamplingConfig
    from rollout.hf_engine import HFEngine

    engine = HFEngine(tiny_text_path, device="cuda")
    reqs, sampling = [RolloutRequest(prompt="1 + 1 =", n=3)], SamplingConfig(max_tokens=5, seed=0)
    before = engine.generate(reqs, sampling)
    held = torch.cuda.memory_allocated()
    assert engine.sleep() is True
    assert torch.cuda.memory_allocated() < held
    after = engine.generate(reqs, sampling)
    assert [c.token_ids for c in after[0]] == [c.token_ids for c in before[0]]
