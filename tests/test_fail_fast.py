"""Fail fast on what cannot run (issue 17, point 5): every error one line naming the key, row or file.

- a run that asks Ray for more than the cluster has fails within seconds, in every ray.placement, naming what
  was asked, what exists and the keys to change (before a local Ray starts when the CPUs are known; against
  the real cluster's nodes otherwise); a cluster that may grow is waited for, saying so; an actor that waits
  for resources is named while it waits;
- numeric keys are checked against their allowed range when the config is loaded (one table,
  rlkit/config_ranges.py), and the loss / advantage options are tried before any worker starts;
- the prompt data is checked in `prepare`, before Ray: missing and undecodable image files, empty prompts,
  missing answers; with data.on_bad_row skip the bad rows are counted, reported once and never drawn;
- an empty data file says so.
"""
import dataclasses
import json
import pathlib
import re
import subprocess
import sys
import time
import typing

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------- config ranges
def _roots():
    from rlkit.drivers.ablation import AblationSection
    from rlkit.config import GRPOConfig
    from rlkit.drivers.dpo import DPOConfig
    from rlkit.drivers.rlaifv import RLAIFVConfig

    return [("grpo", GRPOConfig, ""), ("dpo", DPOConfig, ""), ("rlaifv", RLAIFVConfig, ""),
            ("ablation", AblationSection, "ablation.")]


def _where() -> dict:
    """Section class name -> (loader name, root class, dotted prefix, field types), first root that has it."""
    out = {}

    def walk(kind, root, cls, prefix):
        hints = typing.get_type_hints(cls)
        out.setdefault(cls.__name__, (kind, root, prefix, hints))
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                walk(kind, root, hints[f.name], f"{prefix}{f.name}.")

    for kind, root, prefix in _roots():
        walk(kind, root, root, prefix)
    return out


def _outside(spec: str, typ):
    """A value just outside `spec`."""
    import re

    if spec.startswith("each "):
        return [_outside(spec[5:], float)]
    m = re.match(r"^(>=|>)\s*(-?[\d.]+)$", spec)
    if m:
        b = float(m.group(2))
        v = b - 1 if m.group(1) == ">=" else b
    else:
        m = re.match(r"^([\[(])\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*([\])])$", spec)
        lo, hi = float(m.group(2)), float(m.group(3))
        v = lo if m.group(1) == "(" else (hi if m.group(4) == ")" else hi + 0.5)
    return int(v) if typ is int and float(v).is_integer() else v


def _load(kind, override):
    from rlkit.config import load_config

    if kind == "ablation":
        from rlkit.drivers.ablation import load_ablation_config

        return load_ablation_config(None, [override])
    return load_config(dict((k, r) for k, r, _ in _roots())[kind], None, [override])


def _range_cases():
    from rlkit.config_ranges import RANGES

    where = _where()
    cases = []
    for cls_name, table in RANGES.items():
        kind, _, prefix, _ = where[cls_name]
        for name, spec in table.items():
            cases.append(pytest.param(kind, cls_name, name, spec, id=f"{kind}:{prefix}{name}"))
    return cases


@pytest.mark.parametrize("kind, cls_name, name, spec", _range_cases())
def test_every_numeric_range_is_checked_at_load(kind, cls_name, name, spec):
    """A value just outside the allowed range stops `load_config` with one line naming the key and the range."""
    from rlkit.config import ConfigError

    _, _, prefix, hints = _where()[cls_name]
    bad = _outside(spec, hints[name])
    key = f"{prefix}{name}"
    with pytest.raises(ConfigError) as e:
        _load(kind, f"{key}={json.dumps(bad)}")
    msg = str(e.value)
    assert msg.startswith(f"config key '{key}': ") and f"(allowed: {spec})" in msg and "\n" not in msg, msg


@pytest.mark.parametrize("override, fragment", [
    ("trainer.lr=-1", "config key 'trainer.lr': -1.0 is out of range (allowed: > 0)"),
    ("trainer.lr=0", "config key 'trainer.lr': 0.0 is out of range (allowed: > 0)"),
    ("trainer.lr=.nan", "config key 'trainer.lr': nan is out of range"),
    ("modes.deep_ratio=1.5", "config key 'modes.deep_ratio': 1.5 is out of range (allowed: [0, 1])"),
    ("rollout.temperature=0", "config key 'rollout.temperature'"),
    ("rollout.top_p=0", "config key 'rollout.top_p'"),
    ("trainer.betas=[0.9, 1.0]", "config key 'trainer.betas': [0.9, 1.0] is out of range (allowed: each [0, 1))"),
    ("rewards=[{name: exact_match, weight: .inf}]", "config key 'rewards[0].weight': inf is not a finite number"),
])
def test_range_messages(override, fragment):
    from rlkit.config import ConfigError, GRPOConfig, load_config

    with pytest.raises(ConfigError, match="^" + fragment.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        load_config(GRPOConfig, None, [override])


def test_values_at_the_bounds_load():
    from rlkit.config import GRPOConfig, load_config
    from rlkit.run.checks import check_grpo

    cfg = load_config(GRPOConfig, None, ["modes.deep_ratio=1", "rollout.top_p=1", "trainer.betas=[0, 0.999]",
                                         "trainer.max_grad_norm=0", "rollout.num_cpus=0", "data.check_rows=-1",
                                         "rollout.gpu_memory_utilization=1"])
    check_grpo(cfg)


def test_ranges_hold_for_configs_built_in_code():
    """A config built with dataclasses (not loaded) is range-checked by check_grpo / check_dpo."""
    from rlkit.config import ConfigError, GRPOConfig, TrainerConfig
    from rlkit.run.checks import check_grpo
    from rlkit.drivers.dpo import DPOConfig, DPODataConfig, DPOSection, check_dpo

    with pytest.raises(ConfigError, match=r"^config key 'trainer.lr': -1.0 is out of range"):
        check_grpo(GRPOConfig(trainer=TrainerConfig(lr=-1.0)))
    with pytest.raises(ConfigError, match=r"^config key 'dpo.warmup_ratio': 1.0 is out of range \(allowed: \[0, 1\)\)"):
        check_dpo(DPOConfig(data=DPODataConfig(path="x"), dpo=DPOSection(warmup_ratio=1.0)))


@pytest.mark.parametrize("override, fragment", [
    ("algorithm.loss_opts={clip_low: 1.5}", "config key 'algorithm.loss_opts': 'ppo_clip': need 0 <= clip_low < 1"),
    ("algorithm.loss_opts={clip_high: -0.1}", "config key 'algorithm.loss_opts': 'ppo_clip': need 0 <= clip_low"),
    ("algorithm.loss_opts={dual_clip: 0.5}", "config key 'algorithm.loss_opts': 'ppo_clip': dual_clip must be > 1"),
    ("algorithm.loss_opts={clip: 0.2}", "config key 'algorithm.loss_opts': 'ppo_clip': ppo_clip() got an unexpected"),
    ("algorithm.advantage_opts={epsilon: 1}", "config key 'algorithm.advantage_opts': 'grpo': grpo() got an unexpected"),
    ("algorithm.policy_loss=ppo", "config key 'algorithm.policy_loss': unknown policy loss 'ppo'"),
    ("algorithm.kl_estimator=k9", "config key 'algorithm.kl_estimator': unknown KL estimator 'k9'"),
])
def test_algorithm_options_are_tried_before_any_worker(override, fragment):
    from rlkit.config import ConfigError, GRPOConfig, load_config
    from rlkit.run.checks import check_grpo

    with pytest.raises(ConfigError) as e:
        check_grpo(load_config(GRPOConfig, None, [override]))
    assert str(e.value).startswith(fragment) and "\n" not in str(e.value), str(e.value)


def rlkit(*args):
    return subprocess.run([sys.executable, "-m", "rlkit.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


@pytest.mark.parametrize("text, where", [("a: [1, 2\nb: 3\n", "line 2, column 2: expected ',' or ']'"),
                                         ("a:\n  b: 1\n c: 2\n", "line 3, column 2: expected <block end>")])
def test_bad_yaml_is_one_line_naming_file_line_and_column(tmp_path, text, where):
    from rlkit.config import ConfigError, GRPOConfig, load_config

    f = tmp_path / "run.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(GRPOConfig, f)
    assert str(e.value).startswith(f"config file {f} is not valid YAML: {where}") and "\n" not in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(GRPOConfig, None, ["rewards=[{a: 1"])
    assert str(e.value).startswith("override 'rewards': cannot parse value '[{a: 1': line 1, column 7: ")
    assert "\n" not in str(e.value)


def test_cli_output_dir_that_cannot_be_written_is_one_line(tmp_path):
    (tmp_path / "a_file").write_text("")
    r = rlkit("grpo", f"output_dir={tmp_path}/a_file/run", "max_steps=1")
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip() == f"rlkit: error: config key 'output_dir': cannot write in {tmp_path}/a_file/run: Not a directory"


def test_cli_negative_lr_is_one_line_before_anything_starts(tmp_path):
    r = rlkit("grpo", f"output_dir={tmp_path}", "trainer.lr=-1")
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip() == "rlkit: error: config key 'trainer.lr': -1.0 is out of range (allowed: > 0)"
    assert not (tmp_path / "config.yaml").exists()


# ----------------------------------------------------------------------------------------------- data
def _png(path, color=(200, 10, 10)):
    from PIL import Image

    Image.new("RGB", (8, 8), color).save(path)
    return str(path)


def _vqa_file(tmp_path, images):
    rows = [{"prompt": f"what color is it {i}?", "answer": "red", "image": img} for i, img in enumerate(images)]
    f = tmp_path / "d.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return f


def _grpo_cfg(tmp_path, data, *overrides, model="tiny:vlm"):
    from rlkit.config import GRPOConfig, load_config

    return load_config(GRPOConfig, None, [f"output_dir={tmp_path / 'run'}", f"data.source={data}",
                                          f"model.path={model}", *overrides])


def _ray_started() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


@pytest.mark.parametrize("damage, fragment", [
    ("missing", "row 2: image file not found: {path}"),
    ("undecodable", "row 2: image '{path}' cannot be decoded"),
])
def test_bad_image_found_in_prepare_before_ray(tmp_path, damage, fragment, ray_stopped):
    from rlkit.data import DataError
    from rlkit.drivers.grpo import prepare

    good = _png(tmp_path / "ok.png")
    bad = tmp_path / "bad.png"
    if damage == "undecodable":
        bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    cfg = _grpo_cfg(tmp_path, _vqa_file(tmp_path, [good, good, str(bad), good]))
    t0 = time.perf_counter()
    with pytest.raises(DataError) as e:
        prepare(cfg)
    assert str(e.value).startswith(fragment.format(path=bad)) and "\n" not in str(e.value), str(e.value)
    assert not _ray_started()
    assert not (tmp_path / "run" / "base_model").exists()  # found before the model is built
    assert time.perf_counter() - t0 < 30


def test_bad_rows_skipped_up_front_are_never_drawn(tmp_path, tiny_text_path, capsys, ray_stopped):
    from rlkit.data import PromptStream
    from rlkit.drivers.grpo import prepare

    good = _png(tmp_path / "ok.png")
    f = _vqa_file(tmp_path, [good, str(tmp_path / "gone.png"), good, good])
    rows = [json.loads(x) for x in f.read_text().splitlines()]
    rows[3]["prompt"] = ""  # a second bad row: an empty prompt
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    p = prepare(_grpo_cfg(tmp_path, f, "data.on_bad_row=skip", model=tiny_text_path))
    out = capsys.readouterr().out
    assert "rlkit: data: 2 bad row(s) of 4 checked left out (data.on_bad_row: skip); first: row 1: image file " \
           "not found" in out
    assert p.rows == [0, 2] and p.bad_rows == 2 and not _ray_started()
    stream = PromptStream(p.data, seed=0, rows=p.rows)
    assert {i for i, _ in stream.take(20)} == {0, 2}


def test_scan_is_bounded_by_check_rows(tmp_path):
    """data.check_rows 0 turns the scan off (a bad row is then found when drawn); N checks the first N rows."""
    from rlkit.data import DataError
    from rlkit.data.checks import check_rows
    from rlkit.drivers.grpo import load_prompt_data

    good = _png(tmp_path / "ok.png")
    f = _vqa_file(tmp_path, [good, good, str(tmp_path / "gone.png")])
    ds = load_prompt_data(_grpo_cfg(tmp_path, f))
    assert check_rows(ds, limit=0).checked == 0
    assert check_rows(ds, limit=2).checked == 2
    with pytest.raises(DataError, match="^row 2: image file not found"):
        check_rows(ds, limit=-1)


def test_missing_answer_and_bad_mode_are_named(tmp_path):
    from rlkit.data import DataError, load_source
    from rlkit.data.checks import check_rows

    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"prompt": "a", "answer": "1"}) + "\n" + json.dumps({"prompt": "b", "answer": None}) + "\n")
    with pytest.raises(DataError, match="^row 1: 'answer' is missing or empty$"):
        check_rows(load_source(str(f)))
    f.write_text(json.dumps({"prompt": "a", "answer": "1", "mode": "slow"}) + "\n")
    with pytest.raises(DataError, match="^row 0: column 'mode' must be 'fast' or 'deep', got 'slow'$"):
        check_rows(load_source(str(f)))


@pytest.mark.parametrize("name, text", [("empty.jsonl", ""), ("blank.jsonl", "\n \n"), ("list.json", "[]"),
                                        ("header.csv", "prompt,answer\n")])
def test_empty_data_file_says_it_has_no_rows(tmp_path, name, text):
    from rlkit.data import DataError, load_source

    f = tmp_path / name
    f.write_text(text)
    with pytest.raises(DataError) as e:
        load_source(str(f))
    assert str(f) in str(e.value) and "has no rows" in str(e.value) or "have no rows" in str(e.value), str(e.value)
    assert not str(e.value).rstrip().endswith(":")


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
