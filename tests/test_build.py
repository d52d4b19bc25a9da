"""One builder per thing (rlkit/run/build.py, rlkit/run/labeler.py), used by every command.

The engine tests stop each command at the point where it asks `rollout.make_engine` (or Ray's `spawn`) for an
engine and look at what it asked for: the wiring of every command, without starting vLLM or Ray.
"""
import json

import pytest
import torch

from rlkit.config import GRPOConfig, ModelConfig, RolloutConfig, load_config

EXTRA = {"max_num_seqs": 3, "tensor_parallel_size": 1}  # rollout.engine_kwargs: every vLLM engine must get them


class Asked(Exception):
    pass


@pytest.fixture
def asked(monkeypatch):
    """Every (kind, kwargs) a command passes to rollout.make_engine; the call raises Asked (no engine starts)."""
    import rollout

    calls = []

    def make_engine(kind, **kwargs):
        calls.append((kind, kwargs))
        raise Asked(kind)

    monkeypatch.setattr(rollout, "make_engine", make_engine)
    return calls


def _rows(path, n=4, answer=True):
    path.write_text("".join(json.dumps({"prompt": f"what is {i} plus {i}?", **({"answer": str(2 * i)} if answer else {})})
                            + "\n" for i in range(n)))
    return str(path)


def _vllm_rollout(**kw):
    return RolloutConfig(engine="vllm", engine_kwargs=dict(EXTRA), max_model_len=321, **kw)


def _has_extra(kwargs):
    return all(kwargs.get(k) == v for k, v in EXTRA.items()) and kwargs.get("max_model_len") == 321


def test_engine_options_carry_engine_kwargs_for_vllm_only():
    from rlkit.run.build import engine_options

    r = _vllm_rollout()
    assert _has_extra(engine_options(r, seed=5)) and engine_options(r, seed=5)["seed"] == 5
    assert engine_options(RolloutConfig(engine="hf", engine_kwargs=dict(EXTRA)), 0) == {}
    assert engine_options(r, 0, kind="hf") == {}  # another engine kind of the same run (a claim LM)


def test_grpo_engine_actors_get_engine_kwargs(monkeypatch, tiny_text_path):
    import rlkit.distributed.orchestration
    from rlkit.drivers import grpo
    spawned = []

    def spawn(cls, *args, **kwargs):
        spawned.append((args, kwargs))
        raise Asked(cls.__name__)

    monkeypatch.setattr(rlkit.distributed.orchestration, "spawn", spawn)
    cfg = GRPOConfig(rollout=_vllm_rollout())

    class NoBundles:
        def worker(self, i):
            return None

    with pytest.raises(Asked):
        grpo._engines(cfg, tiny_text_path, NoBundles())
    (args, kwargs), = spawned
    assert args == ("vllm",) and _has_extra(kwargs)


def test_eval_engine_gets_engine_kwargs(asked, tmp_path, tiny_text_path):
    from rlkit.drivers.evaluate import run_eval

    cfg = load_config(GRPOConfig, None, [f"data.eval_source={_rows(tmp_path / 'eval.jsonl')}"])
    cfg.rollout = _vllm_rollout()
    with pytest.raises(Asked):
        run_eval(cfg, tiny_text_path, out=str(tmp_path / "eval.json"))
    (kind, kwargs), = asked
    assert kind == "vllm" and _has_extra(kwargs)


def test_rlaifv_sampler_and_claim_lm_get_engine_kwargs(asked, tmp_path, tiny_text_path, tiny_vlm_path):
    from rlkit.drivers.rlaifv import RLAIFVConfig, run_rlaifv
    from rlkit.run.labeler import labeler_resources

    cfg = RLAIFVConfig(output_dir=str(tmp_path / "run"), rounds=1, prompts_per_round=2,
                       model=ModelConfig(path=tiny_text_path), rollout=_vllm_rollout(n=2))
    cfg.data.source = _rows(tmp_path / "prompts.jsonl", answer=False)
    with pytest.raises(Asked):
        run_rlaifv(cfg)
    with pytest.raises(Asked):  # the splitting/questioning LM served by vLLM (GRPO's rlaifv reward and the rounds)
        labeler_resources({"splitter": "lm", "lm_engine": "vllm"}, tiny_vlm_path, cfg.rollout, cfg.seed)
    assert [k for k, _ in asked] == ["vllm", "vllm"] and all(_has_extra(kw) for _, kw in asked)


def test_ablation_evaluator_gets_engine_kwargs(asked, tiny_text_path):
    from rlkit.drivers.ablation import AblationSection, _Evaluator

    grpo = GRPOConfig(rollout=_vllm_rollout())
    ev = _Evaluator(tiny_text_path, [], AblationSection().eval, None, 8, grpo)
    with pytest.raises(Asked):
        ev._engine()
    (kind, kwargs), = asked
    assert kind == "vllm" and _has_extra(kwargs)


def _vision(path):
    from safetensors.torch import load_file

    return {k: v for k, v in load_file(str(path / "model.safetensors")).items() if "visual" in k}


def test_dpo_builds_the_tiny_model_with_vision_init_std(monkeypatch, tmp_path):
    """`rlkit dpo` resolves tiny:vlm with every model.* key, vision_init_std included (its copy had dropped it)."""
    from rlkit.drivers import dpo
    from rlkit.models.loading import build_tiny

    def stop(*a, **k):
        raise Asked("DPOWorker")

    monkeypatch.setattr(dpo, "DPOWorker", stop)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"q{i}?", "chosen": "yes", "rejected": "no"}) + "\n" for i in range(3)))
    cfg = load_config(dpo.DPOConfig, None, [f"output_dir={tmp_path / 'run'}", f"data.path={pairs}", "model.path=tiny:vlm",
                                            "model.vision_init_std=0.5", "model.hidden_size=32", "model.vocab_size=300"])
    with pytest.raises(Asked):
        dpo.run_dpo(cfg)
    built = _vision(tmp_path / "run" / "base_model")
    texts = dpo.pair_texts(dpo.load_preference_dataset(str(pairs)))
    kw = dict(texts=texts, hidden_size=32, vocab_size=300)
    want = _vision(build_tiny("vlm", tmp_path / "want", vision_init_std=0.5, **kw))
    default = _vision(build_tiny("vlm", tmp_path / "default", **kw))
    assert built.keys() == want.keys()
    assert all(torch.equal(built[k], want[k]) for k in want)
    assert not all(torch.equal(built[k], default[k]) for k in default)


def test_resolve_model_refuses_an_unknown_tiny_kind(tmp_path):
    from rlkit.config import ConfigError
    from rlkit.run.build import resolve_model

    with pytest.raises(ConfigError, match="model.path"):
        resolve_model(ModelConfig(path="tiny:audio"), tmp_path, lambda: [])


def test_reward_resources_close_frees_the_claim_lm():
    from rlkit.run.build import RewardResources
    from rlkit.run.labeler import EngineTextLM

    class Engine:
        closed = 0

        def close(self):
            self.closed += 1

    engine = Engine()
    res = RewardResources(claim_lm=EngineTextLM(engine, None))
    res.close()
    res.close()
    assert engine.closed == 1 and res.claim_lm is None
