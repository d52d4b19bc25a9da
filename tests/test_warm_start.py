"""Start-up (issue 17, point 7; rlkit/distributed/warm_start.py, rlkit/models/cache.py): what makes the first rollout come sooner changes nothing it
computes.

- a tiny model served from the build cache is byte-identical to a fresh build, the cache key changes with every
  input of the build, a damaged cache entry is rebuilt, and a run's copy shares no file with the cache;
- the training texts read column-wise equal the row-wise ones;
- actors started bare and given their arguments later (two-stage) sample and score exactly as actors started in
  one go; an actor asked for with other options than it was started with is started anew;
- the actors the GRPO driver starts early are the ones its pools ask for (same options), so none is wasted;
- a bare engine whose construction fails ends like an engine whose constructor fails (the pool recreates it and
  reports the error the same way); a bare policy rank's failure is named by the policy group;
- vLLM's token ranks run eagerly on CPU (no torch.compile at the first rollout) and count the same;
- no garbage collection runs while a bare actor names and imports its modules, nor while the driver loads its
  processor (third pass: both import most of vLLM / transformers, and collections rescan all of it); the driver
  freezes nothing (its Ray objects stay collectable; no nanobind leak reports at exit).
"""
import gc
import json
import pathlib

import pytest
import torch

TEXTS = ["What is 2 + 3?", "What colour is the circle?", "5", "blue"]


def _files(d) -> dict:
    return {p.name: p.read_bytes() for p in sorted(pathlib.Path(d).iterdir()) if p.is_file()}


# ----------------------------------------------------------------------------------------------- tiny cache
def test_cached_tiny_build_is_byte_identical_and_private(tmp_path, monkeypatch):
    from rlkit.models.loading import build_tiny
    from rlkit.models.cache import _MANIFEST, build_tiny_cached, tiny_key

    monkeypatch.setenv("RLKIT_CACHE_DIR", str(tmp_path / "cache"))
    fresh = _files(build_tiny("text", tmp_path / "fresh", texts=TEXTS, seed=3))
    first = build_tiny_cached("text", tmp_path / "run1" / "base_model", texts=TEXTS, seed=3)  # a miss: built
    entry = tmp_path / "cache" / "tiny" / tiny_key("text", TEXTS, seed=3)
    assert (entry / _MANIFEST).exists()
    (entry / "config.json").touch()  # the hit below must copy, not build: a build would not keep this mtime
    mtime = (entry / "config.json").stat().st_mtime_ns
    second = build_tiny_cached("text", tmp_path / "run2" / "base_model", texts=TEXTS, seed=3)  # a hit: copied
    assert _files(first) == fresh and _files(second) == fresh
    assert (entry / "config.json").stat().st_mtime_ns == mtime
    (second / "model.safetensors").write_bytes(b"changed by run 2")  # a run's copy is its own
    assert (entry / "model.safetensors").read_bytes() == fresh["model.safetensors"]
    # a damaged entry (fails its manifest) is rebuilt, never copied
    (entry / "model.safetensors").write_bytes(b"damaged")
    third = build_tiny_cached("text", tmp_path / "run3" / "base_model", texts=TEXTS, seed=3)
    assert _files(third) == fresh and (entry / "model.safetensors").read_bytes() == fresh["model.safetensors"]


def test_cache_key_changes_with_every_build_input():
    from rlkit.models.cache import tiny_key

    base = dict(tokenizer="small", vocab_size=512, seed=0, hidden_size=128, num_layers=2)
    key = tiny_key("vlm", TEXTS, **base, image_size=84)
    assert key == tiny_key("vlm", list(TEXTS), **base, image_size=84)  # deterministic
    changed = [tiny_key("text", TEXTS, **base, image_size=84), tiny_key("vlm", TEXTS[:-1], **base, image_size=84),
               tiny_key("vlm", TEXTS[:-1] + ["blu", "e"], **base, image_size=84),  # same characters, cut elsewhere
               tiny_key("vlm", TEXTS, **base, image_size=56)]
    changed += [tiny_key("vlm", TEXTS, **{**base, k: v}, image_size=84) for k, v in
                [("tokenizer", "qwen"), ("vocab_size", 256), ("seed", 1), ("hidden_size", 64), ("num_layers", 3)]]
    assert len({key, *changed}) == len(changed) + 1


def test_tiny_texts_column_wise_equal_row_wise():
    import datasets

    from rlkit.run.build import row_texts as tiny_texts

    ds = datasets.Dataset.from_dict({"prompt": ["a b", "c", "d e f", "g"], "answer": [1, 22, 3, 4],
                                     "image": ["x.png", "y.png", "z.png", "w.png"]})
    for d in (ds, ds.shuffle(seed=1).select([2, 0, 3])):  # an indices mapping, as after a shuffle or a limit
        assert tiny_texts(d) == list(d["prompt"]) + [str(a) for a in d["answer"]]
    no_answer = ds.remove_columns("answer")
    assert tiny_texts(no_answer) == list(no_answer["prompt"])


# ----------------------------------------------------------------------------------------------- two-stage actors
@pytest.fixture
def ray_local():
    from rlkit.distributed.orchestration import init_ray, shutdown

    init_ray("", 4)
    yield
    shutdown()


def _early(plan):
    from rlkit.distributed.warm_start import EarlyStart

    early = EarlyStart(lambda: None, lambda: None, lambda placement: plan)  # Ray is up (fixture); no placement
    early.start()
    assert early.wait() is None
    return early


def test_two_stage_actors_sample_and_score_like_one_stage(tiny_text_path, ray_local):
    from rlkit.distributed.orchestration import EngineActor, spawn
    from rlkit.distributed.pool import EnginePool, PolicyGroup, PolicyRank
    from rlkit.records import TrainItem
    from rollout import RolloutRequest, SamplingConfig

    opts = dict(num_cpus=0.5, num_gpus=0.0, env={"RLKIT_TEST": "1"}, bundle=None)
    early = _early([(EngineActor, ("vllm", "qwen3", "Qwen3ForCausalLM"), opts), (PolicyRank, ("qwen3",), opts)])
    engine_kw = dict(model_path=tiny_text_path, seed=5, max_model_len=256)
    from rlkit.policy.settings import WorkerSettings

    settings = WorkerSettings(lr=1e-2, seed=0)
    pools = []
    try:
        for make in (early.spawn, spawn):  # two-stage first, then the usual one-stage actors
            pools.append((EnginePool(lambda i, make=make: make(EngineActor, "vllm", **opts, **engine_kw)),
                          PolicyGroup(lambda r, make=make: make(PolicyRank, tiny_text_path, settings, **opts))))
        assert early.taken == 2
        reqs = [RolloutRequest(prompt=f"What is {i} + {i}?", n=3) for i in range(3)]
        sampling = SamplingConfig(temperature=1.0, max_tokens=6, seed=11)
        (e2, p2), (e1, p1) = pools
        out2, out1 = e2.generate(reqs, sampling), e1.generate(reqs, sampling)
        flat = lambda out: [(c.token_ids, c.logprobs) for group in out for c in group]  # noqa: E731
        assert flat(out2) == flat(out1)  # the same engine code and seeds: bit-identical
        items = [TrainItem(r.prompt, [], c.token_ids, 1.0 if k % 2 else -1.0, [])
                 for r, group in zip(reqs, out1) for k, c in enumerate(group)]
        import ray

        assert p2.compute_logprobs(items) == p1.compute_logprobs(items)
        untimed = lambda m: {k: v for k, v in m.items() if not k.startswith("time/")}  # noqa: E731
        assert untimed(p2.train_step(items)) == untimed(p1.train_step(items))  # the same update
        w2, w1 = ray.get(p2.state_dict()), ray.get(p1.state_dict())
        assert w2.keys() == w1.keys() and all(torch.equal(w2[k], w1[k]) for k in w1)
    finally:
        early.close()
        for e, p in pools:
            e.close()
            p.close()


def test_actor_asked_with_other_options_is_started_anew(tiny_text_path, ray_local):
    import ray

    from rlkit.distributed.pool import PolicyRank

    early = _early([(PolicyRank, ("qwen3",), dict(num_cpus=0.5, num_gpus=0.0, env={}, bundle=None))])
    a = early.spawn(PolicyRank, tiny_text_path, num_cpus=0.5, env={"X": "1"})  # another environment
    try:
        assert early.taken == 0 and not hasattr(a, "construct")  # a usual PolicyRank
        assert ray.get(a.where.remote())["bundle"] is None
    finally:
        ray.kill(a)
        early.close()


def test_grpo_starts_early_exactly_the_actors_its_pools_ask_for(tmp_path):
    """The early plan (rlkit/distributed/warm_start.py grpo_plan) against the spawn calls of grpo._engines and grpo._policy,
    recorded without Ray: a difference would start every actor twice."""
    from rlkit.drivers import grpo
    from rlkit.config import GRPOConfig, load_config
    from rlkit.distributed.orchestration import EngineActor, Placement
    from rlkit.distributed.pool import PolicyRank
    from rlkit.distributed.warm_start import _options_key, grpo_plan

    cfg = load_config(GRPOConfig, None, [f"output_dir={tmp_path}", "rollout.num_workers=2", "trainer.num_ranks=1",
                                         "rollout.num_cpus=0.5", "rollout.kv_cache_gib=2", "trainer.num_cpus=1"])
    asked = []

    def record(cls, *a, num_cpus=1.0, num_gpus=0.0, env=None, bundle=None, **k):
        asked.append((cls, _options_key(num_cpus, num_gpus, env, bundle)))
        return object()

    placement = Placement([], [], [])  # ray.placement "none"
    grpo._engines(cfg, "m", placement, spawn=record)
    grpo._policy(cfg, "m", "m", tmp_path, placement, spawn=record)
    plan = grpo_plan(cfg, grpo.POLICY_ENV)(placement)
    by_class = lambda xs: sorted(xs, key=lambda x: x[0].__name__)  # noqa: E731
    assert by_class(asked) == by_class([(cls, _options_key(**o)) for cls, _, o in plan])
    assert [c for c, _, _ in plan] == [EngineActor, EngineActor, PolicyRank]
    assert plan[0][1] == ("vllm", "qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration")  # tiny:vlm's classes


def test_tiny_arch_hints_match_the_built_models(tiny_text_path, tiny_vlm_path):
    from rlkit.distributed.warm_start import TINY_ARCH, model_classes

    for kind, path in (("text", tiny_text_path), ("vlm", tiny_vlm_path)):
        cfg = json.loads((pathlib.Path(path) / "config.json").read_text())
        assert TINY_ARCH[kind] == (cfg["model_type"], cfg["architectures"][0]) == model_classes(path)


def _collections_during(fn) -> tuple[list, object]:
    """(the collector's start callbacks while `fn` ran, its result); afterwards nothing stays frozen."""
    runs: list = []

    def cb(phase, info):
        if phase == "start":
            runs.append(info["generation"])

    gc.callbacks.append(cb)
    try:
        return runs, fn()
    finally:
        gc.callbacks.remove(cb)
        gc.unfreeze()


def _make_cycles() -> bool:
    """Allocates enough self-referencing lists to start several collections with the collector on."""
    keep = []
    for _ in range(20000):
        a: list = []
        a.append(a)
        keep.append(a)
    return gc.isenabled()


def test_bare_actor_names_its_imports_with_the_collector_paused():
    from rlkit.distributed.warm_start import _Bare

    class Probe(_Bare):
        @staticmethod
        def imports(*hints):  # engine_imports imports vLLM's platform and model registry while naming
            Probe.enabled = _make_cycles()
            return []

    runs, _ = _collections_during(Probe)
    assert Probe.enabled is False and runs == [] and gc.isenabled()
    assert _collections_during(_make_cycles)[0], "the probe allocates enough to start collections normally"


def test_driver_loads_its_processor_with_the_collector_paused():
    import inspect

    from rlkit.distributed.warm_start import load_quietly
    from rlkit.drivers import grpo

    runs: list = []

    def load():  # what collections ran while "loading" (after it, the resumed collector may run one)
        enabled = _make_cycles()
        return enabled, list(runs)

    gc.callbacks.append(lambda phase, info: runs.append(phase))
    try:
        enabled, during = load_quietly(load)
    finally:
        gc.callbacks.pop()
    assert enabled is False and during == [] and gc.isenabled()
    frozen = gc.get_freeze_count()
    load_quietly(_make_cycles)
    # nothing frozen: Ray objects stay collectable before ray.shutdown; no nanobind "leaked" lines at exit
    assert gc.get_freeze_count() == frozen
    assert "load_quietly(load_processor, p.start_model)" in inspect.getsource(grpo.setup)


def test_bad_data_fails_before_the_early_start(tmp_path, ray_stopped):
    """The early start begins after prepare's checks: a run whose data is bad never starts Ray."""
    import sys

    from rlkit.config import GRPOConfig, load_config
    from rlkit.data import DataError
    from rlkit.drivers.grpo import run_grpo

    rows = [{"prompt": "what color is it?", "answer": "red", "image": str(tmp_path / "gone.png")}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = load_config(GRPOConfig, None, [f"output_dir={tmp_path / 'run'}", f"data.source={tmp_path / 'd.jsonl'}"])
    with pytest.raises(DataError, match="image file not found"):
        run_grpo(cfg)
    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized()
    assert not (tmp_path / "run" / "base_model").exists()


@pytest.mark.slow
def test_failed_construction_ends_like_a_failed_constructor(tmp_path, ray_local):
    """Engine: the bare worker exits, the pool recreates it the usual way, whose constructor fails: the same message
    as with usual actors, not retried further; policy rank: the group stops naming the rank and the error."""
    from rlkit.distributed.orchestration import EngineActor, spawn
    from rlkit.distributed.pool import EnginePool, PolicyGroup, PolicyRank, PolicyRankError
    from rollout import RolloutRequest, SamplingConfig

    bad = str(tmp_path / "nonexistent")
    opts = dict(num_cpus=0.5, num_gpus=0.0, env={}, bundle=None)
    early = _early([(EngineActor, ("hf", "", ""), opts), (PolicyRank, ("",), opts)])
    messages = []
    for make in (early.spawn, spawn):
        pool = EnginePool(lambda i, make=make: make(EngineActor, "hf", model_path=bad, **opts), max_retries=2)
        with pytest.raises(RuntimeError, match="rollout worker 0 could not start: its constructor failed") as e:
            pool.generate([RolloutRequest(prompt="x", n=1)], SamplingConfig(max_tokens=2, seed=0))
        messages.append(str(e.value).split("; error: ")[1])
        assert pool.restarts == (1 if make == early.spawn else 0)  # only the bare actor's exit is retried
        pool.close()
    assert messages[0] == messages[1] and bad in messages[0]
    group = PolicyGroup(lambda r: early.spawn(PolicyRank, bad, **opts))
    assert early.taken == 2
    with pytest.raises(PolicyRankError, match=f"policy rank 0 failed .*{bad}"):
        group.train_step([])


# ----------------------------------------------------------------------------------------------- vLLM token ranks
def test_vllm_token_ranks_run_eagerly_on_cpu_and_count_the_same(tiny_text_path):
    import torch._dynamo

    from rollout import RolloutRequest, SamplingConfig, make_engine
    from rollout.vllm_engine import _count_greater_equal

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    engine = make_engine("vllm", model_path=tiny_text_path, seed=0, max_model_len=256)
    try:
        out = engine.generate([RolloutRequest(prompt="What is 1 + 1?", n=4)],
                              SamplingConfig(temperature=1.0, max_tokens=4, seed=0))
        assert len(out[0]) == 4 and all(c.logprobs for c in out[0])
        assert sum(torch._dynamo.utils.counters["frames"].values()) == 0  # nothing went through torch.compile
    finally:
        engine.close()
    from vllm.v1.sample.ops.logprobs import batched_count_greater_than

    g = torch.Generator().manual_seed(0)
    x = torch.randint(-4, 4, (5, 33), generator=g).float().log_softmax(-1)  # many ties
    values = x.gather(-1, torch.randint(0, 33, (5, 1), generator=g))
    assert torch.equal(_count_greater_equal(x, values), batched_count_greater_than(x, values))
