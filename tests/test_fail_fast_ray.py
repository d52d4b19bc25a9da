"""Fail fast on what Ray cannot run (issue 17, point 5), every error one line naming what to change:

- a run that asks Ray for more than the cluster has fails within seconds, in every ray.placement, naming what
  was asked, what exists and the keys to change (before a local Ray starts when the CPUs are known; against
  the real cluster's nodes otherwise); a cluster that may grow is waited for, saying so; an actor that waits
  for resources is named while it waits;
- a ray.address nobody answers on is one line within seconds; a cluster on the loopback address is joined;
- stopping Ray ends the start watch first (no silent exit).

The config and data checks: tests/test_fail_fast.py (whose helpers these tests share).
"""
import re
import subprocess
import sys
import time

import pytest

from test_fail_fast import ROOT, _grpo_cfg, _ray_started, rlkit


# ----------------------------------------------------------------------------------------------- resources
def test_cli_infeasible_resources_fail_before_ray(tmp_path):
    """The reported hang: 2 workers + 2 ranks of 1 CPU on a 2-CPU local Ray: now one line, exit 2, in seconds."""
    t0 = time.perf_counter()
    r = rlkit("grpo", f"output_dir={tmp_path}", "rollout.num_workers=2", "trainer.num_ranks=2", "ray.num_cpus=2")
    took = time.perf_counter() - t0
    assert r.returncode == 2, r.stderr[-2000:]
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("rlkit: error: the run asks Ray for {CPU: 4} in all: rollout.num_workers 2 x {CPU: 1}")
    assert "a local Ray (ray.num_cpus 2) has {CPU: 2}" in line and "trainer.num_cpus" in line, line
    assert took < 60, took  # Python and torch imports on a loaded 2-core machine; Ray never starts


def test_cli_kv_cache_larger_than_the_machine_fails_before_ray(tmp_path):
    """A CPU KV cache the machine cannot hold failed inside the engine actor, which the pool restarted twice (tens of
    seconds) before the run stopped with a traceback: now one line before Ray starts."""
    r = rlkit("grpo", f"output_dir={tmp_path}", "rollout.kv_cache_gib=100000")
    assert r.returncode == 2, r.stderr[-2000:]
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("rlkit: error: config key 'rollout.kv_cache_gib': 1 vLLM CPU engine(s) x 100000 GiB of KV "
                           "cache do not fit the "), line


def test_kv_cache_problem_by_hand(monkeypatch):
    from rlkit.distributed.resources import kv_cache_problem

    gib = 1 << 30
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    assert kv_cache_problem("vllm", 0, 2, 3, 6 * gib) is None  # 3 x 2 GiB = 6 GiB: fits exactly
    assert kv_cache_problem("vllm", 0, 2, 3, 6 * gib - 1).startswith(
        "config key 'rollout.kv_cache_gib': 3 vLLM CPU engine(s) x 2 GiB of KV cache do not fit the 6.0 GiB")
    assert kv_cache_problem("vllm", 0, 0, 3, 0) is None  # 0: sized by the engine
    assert kv_cache_problem("vllm", 1, 2, 3, 0) is None  # GPU engines: their memory is vLLM's to check
    assert kv_cache_problem("hf", 0, 2, 3, 0) is None
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "4")  # vLLM lets it win over the key
    assert kv_cache_problem("vllm", 0, 0, 2, 7 * gib).startswith("VLLM_CPU_KVCACHE_SPACE: 2 vLLM CPU engine(s) x 4 GiB")
    assert kv_cache_problem("vllm", 0, 100, 2, 8 * gib) is None


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_ray_address_nobody_answers_is_one_line_in_seconds(tmp_path):
    """The found hang: `ray.address` naming a port no cluster listens on. Ray retries its GCS for minutes with its
    messages in the run's log only (the console sat at nothing for 10 minutes); now one line naming the key."""
    port = _free_port()
    t0 = time.perf_counter()
    r = rlkit("grpo", f"output_dir={tmp_path}", f"ray.address=127.0.0.1:{port}", "max_steps=1")
    took = time.perf_counter() - t0
    assert r.returncode == 2, r.stderr[-2000:]
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"rlkit: error: config key 'ray.address' ('127.0.0.1:{port}'): no Ray cluster answers at "), line
    assert f"`ray start --head --port={port}`" in line, line
    assert took < 90, took  # imports, data and the tiny model on a loaded 2-core machine; then 5 s at most


def test_a_cluster_on_the_loopback_address_is_joined(tmp_path):
    """A cluster listening on 127.0.0.1 only (a local rlkit Ray, or `ray start --head --node-ip-address=127.0.0.1`)
    is joined at `ray.address=127.0.0.1:PORT`: Ray would turn that into the machine's own address, where nothing
    listens, and retry it for minutes."""
    head_code = ("import sys, ray\nfrom rlkit.distributed.orchestration import init_ray\ninit_ray('', 1)\n"
                 "print(ray.get_runtime_context().gcs_address, flush=True)\nsys.stdin.read()\n")
    head = subprocess.Popen([sys.executable, "-c", head_code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    try:
        address = head.stdout.readline().strip()
        assert address.startswith("127.0.0.1:"), address
        join_code = ("import ray\nfrom rlkit.distributed.orchestration import init_ray\n"
                     f"init_ray({address!r})\nprint(ray.get(ray.remote(lambda: 'ran').remote()))\n")
        r = subprocess.run([sys.executable, "-c", join_code], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert r.returncode == 0 and r.stdout.strip().endswith("ran"), r.stderr[-2000:]
    finally:
        head.stdin.close()  # the head's Ray stops with it
        head.wait(timeout=60)


def test_prepare_refuses_more_cpus_than_the_local_ray_will_have(tmp_path, ray_stopped):
    """Before Ray starts (a local Ray's CPUs are ray.num_cpus, or this machine's): prepare stops, in-process."""
    from rlkit.drivers.grpo import prepare
    from rlkit.distributed.resources import ResourceError

    cfg = _grpo_cfg(tmp_path, "arithmetic", "rollout.num_workers=2", "trainer.num_ranks=2", "ray.num_cpus=2",
                    "ray.placement=colocate", model="tiny:text")
    with pytest.raises(ResourceError, match=r"^the run asks Ray for \{CPU: 4\} in all: .*a local Ray \(ray.num_cpus 2\) "
                                            r"has \{CPU: 2\} on 1 node\(s\)\. To fix: lower rollout.num_cpus"):
        prepare(cfg)
    assert not _ray_started()
    prepare(_grpo_cfg(tmp_path, "arithmetic", "rollout.num_workers=2", "trainer.num_ranks=2", "ray.num_cpus=4",
                      "data.limit=4", model="tiny:text"))  # 4 CPUs: fits


@pytest.fixture(scope="module")
def ray_two_cpus():
    from rlkit.distributed.orchestration import init_ray, shutdown

    init_ray("", 2)
    yield
    shutdown()


@pytest.mark.parametrize("placement, strategy, rollout, trainer, fragment", [
    ("none", "PACK", {"CPU": 1}, {"CPU": 1}, "the run asks Ray for {CPU: 4, GPU: 0} in all"),
    ("colocate", "PACK", {"CPU": 1}, {"CPU": 1}, "the run asks Ray for {CPU: 4, GPU: 0} in all"),
    ("separate", "PACK", {"CPU": 1}, {"CPU": 1}, "the run asks Ray for {CPU: 4, GPU: 0} in all"),
    ("none", "PACK", {"CPU": 0.5, "GPU": 1}, {"CPU": 0.5}, "the run asks Ray for {CPU: 2, GPU: 2} in all"),
    ("none", "PACK", {"CPU": 0.25}, {"CPU": 3}, "the run asks Ray for {CPU: 6.5, GPU: 0}"),
    ("colocate", "STRICT_SPREAD", {"CPU": 0.5}, {"CPU": 0.5}, "STRICT_SPREAD puts each of the 2 bundles"),
])
def test_infeasible_resources_fail_in_seconds_every_placement(ray_two_cpus, placement, strategy, rollout,
                                                              trainer, fragment):
    """Against the real local Ray (2 CPUs, no GPU): no placement group waits out its timeout, no actor starts."""
    import ray

    from rlkit.distributed.orchestration import place
    from rlkit.distributed.resources import ResourceError

    t0 = time.perf_counter()
    with pytest.raises(ResourceError) as e:
        place(placement, strategy, 2, 2, rollout, trainer, timeout_s=300)
    assert time.perf_counter() - t0 < 10
    assert fragment in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert "the cluster has {CPU: 2, GPU: 0} on 1 node(s)" in str(e.value) or "cluster has 1 node" in str(e.value)
    assert ray.util.placement_group_table() == {} or all(
        g["state"] == "REMOVED" for g in ray.util.placement_group_table().values())


def test_per_node_conditions():
    """Enough in total but not on any one node (two 2-CPU nodes): each actor, or bundle, must fit a node."""
    from rlkit.distributed.resources import capacity_problem

    nodes = [{"CPU": 2.0}, {"CPU": 2.0}]
    assert capacity_problem(1, 1, {"CPU": 1}, {"CPU": 2}, nodes) is None
    assert capacity_problem(1, 1, {"CPU": 1}, {"CPU": 3}, nodes).startswith(
        "one policy rank asks {CPU: 3, GPU: 0} (trainer.num_cpus/num_gpus), but no node has that much: the largest "
        "has {CPU: 2, GPU: 0} (the cluster has {CPU: 4, GPU: 0} on 2 node(s)). To fix: lower rollout.num_cpus")
    colocated = [[{"CPU": 1.5}, {"CPU": 1.5}]]  # worker i + rank i per bundle: 1.5 each fits; 3 on one node not
    assert capacity_problem(2, 2, {"CPU": 1}, {"CPU": 0.5}, nodes, colocated, "PACK") is None
    assert "STRICT_PACK puts placement group 0 ({CPU: 3, GPU: 0} in all) on one node" in capacity_problem(
        2, 2, {"CPU": 1}, {"CPU": 0.5}, nodes, colocated, "STRICT_PACK")
    assert capacity_problem(1, 1, {"GPU": 1}, {"CPU": 1}, nodes).startswith("the run asks Ray for {CPU: 1, GPU: 1}")


def test_driver_placement_on_a_running_ray_checks_its_nodes(ray_two_cpus, tmp_path):
    """The driver's own step before it spawns any actor (`grpo._placement`), Ray already up with 2 CPUs: the
    default 1 CPU per actor, 2 workers + 2 ranks (the reported 6-minute silent hang) now fail at once."""
    from rlkit.drivers.grpo import _placement
    from rlkit.distributed.resources import ResourceError

    cfg = _grpo_cfg(tmp_path, "arithmetic", "rollout.num_workers=2", "trainer.num_ranks=2")
    t0 = time.perf_counter()
    with pytest.raises(ResourceError, match=r"asks Ray for \{CPU: 4, GPU: 0\} .*the cluster has \{CPU: 2, GPU: 0\}"):
        _placement(cfg)
    assert time.perf_counter() - t0 < 10
    _placement(_grpo_cfg(tmp_path, "arithmetic", "rollout.num_workers=2", "trainer.num_ranks=2",
                         "rollout.num_cpus=0.5", "trainer.num_cpus=0.5")).remove()  # 2 CPUs in all: fits


def test_cluster_that_may_grow_is_waited_for_saying_so(ray_two_cpus, capsys):
    """ray.address (grow): one line saying what it waits for, then the error after ray.placement_timeout_s."""
    from rlkit.distributed.orchestration import place
    from rlkit.distributed.resources import ResourceError

    t0 = time.perf_counter()
    with pytest.raises(ResourceError, match=r"\(waited 2 s: ray.placement_timeout_s\)$"):
        place("none", "PACK", 2, 2, {"CPU": 1}, {"CPU": 1}, timeout_s=2, grow=True)
    assert 2 <= time.perf_counter() - t0 < 10
    out = capsys.readouterr().out
    assert "waiting up to 2 s (ray.placement_timeout_s) for the cluster to grow" in out


def test_an_actor_waiting_for_resources_is_named(ray_two_cpus, capsys, monkeypatch):
    """Fits the cluster but not what is free now (another actor holds it): the wait is announced."""
    import ray

    from rlkit.distributed.orchestration import START_WATCH, spawn

    class Hog:
        def ping(self):
            return 1

    class Late:
        def ping(self):
            return 2

    monkeypatch.setattr(START_WATCH, "first_s", 1.0)
    monkeypatch.setattr(START_WATCH, "every_s", 1.0)
    hog = spawn(Hog, num_cpus=2)
    assert ray.get(hog.ping.remote(), timeout=120) == 1
    late = spawn(Late, num_cpus=1)
    try:
        want = re.compile(r"still waiting after \d+ s for 1 Ray actor\(s\) to start: Late \{CPU: 1, GPU: 0\}; the "
                          r"cluster has \{CPU: 0, GPU: 0\} free of \{CPU: 2, GPU: 0\}")
        deadline = time.monotonic() + 30
        out = ""
        while not want.search(out) and time.monotonic() < deadline:
            time.sleep(0.5)
            out += capsys.readouterr().out
        assert want.search(out), out
        ray.kill(hog)
        assert ray.get(late.ping.remote(), timeout=120) == 2  # and it starts once the CPUs are free
    finally:
        for a in (hog, late):
            ray.kill(a)


def test_shutdown_ends_the_start_watch_before_ray(ray_stopped):
    """The start watch's thread polls `ray.wait` on the refs of actors still starting. In a `ray.wait` during
    `ray.shutdown()`, or with its refs freed after it, Ray ends the whole process ("The core worker has already
    been shutdown ... The process will exit": pytest vanished mid-run in CI, rc 1, no summary, after the test
    above). `shutdown` stops the watch and drops its refs while Ray is still up."""
    import ray

    from rlkit.distributed.orchestration import START_WATCH, init_ray, shutdown, spawn

    class Hog:
        def ping(self):
            return 1

    init_ray("", 1)
    hog = spawn(Hog, num_cpus=1)
    assert ray.get(hog.ping.remote(), timeout=120) == 1
    spawn(Hog, num_cpus=1)  # waits for the CPU the first one holds: pending in the watch
    thread = START_WATCH._thread
    assert START_WATCH._pending and thread is not None and thread.is_alive()
    shutdown()
    assert not thread.is_alive() and not START_WATCH._pending and START_WATCH._thread is None
