"""Config loading: YAML + dotted overrides, validation messages that name the key."""
import pytest

from rlkit.config import ConfigError, GRPOConfig, RewardConfig, dump_config, load_config
from rlkit.run.checks import check_grpo


def test_defaults_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("max_steps: 3\ntrainer:\n  lr: 0.001\nrewards:\n  - name: exact_match\n    weight: 2\n")
    cfg = load_config(GRPOConfig, f, ["trainer.lr=3e-4", "rollout.n=4", "model.freeze=[vision]"])
    assert cfg.max_steps == 3
    assert cfg.trainer.lr == pytest.approx(3e-4)  # override wins over the file
    assert cfg.rollout.n == 4
    assert cfg.model.freeze == ["vision"]
    assert cfg.rewards == [RewardConfig(name="exact_match", weight=2.0)]
    assert cfg.data.source == "easy_vqa"  # untouched default


def test_round_trip(tmp_path):
    cfg = load_config(GRPOConfig, None, ["seed=7", "data.columns={prompt: question}"])
    dump_config(cfg, tmp_path / "config.yaml")
    again = load_config(GRPOConfig, tmp_path / "config.yaml")
    assert again == cfg


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("trainer.lrr=1", "unknown config key 'trainer.lrr' (did you mean 'trainer.lr'?)"),
        ("trainer.lr=fast", "config key 'trainer.lr': expected float"),
        ("rollout.n=2.5", "config key 'rollout.n': expected int"),
        ("rollout.engine=sglang", "config key 'rollout.engine': 'sglang' is not one of vllm, hf"),
        ("rewards=[{nam: x}]", "unknown config key 'rewards[0].nam'"),
        ("model=3", "config key 'model': expected a mapping"),
        ("rewards=[{name: x, completion_format: xml}]", "'rewards[0].completion_format': 'xml' is not one of"),
    ],
)
def test_bad_keys_are_named(override, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(GRPOConfig, None, [override])
    assert fragment in str(e.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(GRPOConfig, tmp_path / "nope.yaml")


def test_cross_field_checks():
    with pytest.raises(ConfigError, match="rewards\\[0\\]"):
        check_grpo(load_config(GRPOConfig, None, ["rewards=[{name: a, path: b.py:f}]"]))
    with pytest.raises(ConfigError, match="model.freeze"):
        check_grpo(load_config(GRPOConfig, None, ["model.freeze=[eyes]"]))
    with pytest.raises(ConfigError, match="modes.deep_ratio"):
        check_grpo(load_config(GRPOConfig, None, ["modes.deep_ratio=1.5"]))


def test_config_reference_is_current():
    """docs/config.md is generated from the field comments; regenerate with `python -m rlkit.config_docs`."""
    import pathlib

    from rlkit.config_docs import render

    doc = pathlib.Path(__file__).resolve().parents[1] / "docs" / "config.md"
    assert doc.read_text() == render(), "docs/config.md is stale: run `python -m rlkit.config_docs > docs/config.md`"


def test_every_field_is_documented():
    import dataclasses

    from rlkit import config as C
    from rlkit.config_docs import _comments

    for cls in (C.GRPOConfig, C.ModelConfig, C.DataConfig, C.ModesConfig, C.RolloutConfig, C.AlgorithmConfig,
                C.TrainerConfig, C.RewardConfig, C.LoggingConfig, C.RayConfig):
        hints = C._hints(cls)
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.name not in _comments(cls) and not dataclasses.is_dataclass(hints[f.name])]
        assert not missing, f"{cls.__name__} fields without a comment: {missing}"
