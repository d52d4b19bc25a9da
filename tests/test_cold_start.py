"""The supervised cold start before RL (`cold_start:` of `rlkit grpo`, rlkit/drivers/cold_start.py): its
rows are checked before anything starts, its checkpoint belongs to the run and is reused only when every
setting it depends on is equal, and `rlkit grpo` starts RL (and the KL reference) from it."""
from __future__ import annotations

import json
import pathlib

import pytest

from rlkit.config import ColdStartSection, ConfigError, GRPOConfig, load_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
ROWS = [{"prompt": f"What is {i} plus one?", "answer": str(i + 1), "reasoning": f"{i} and one more."}
        for i in range(12)]


def _data(tmp_path, rows) -> str:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _cfg(tmp_path, rows=ROWS, **cold) -> GRPOConfig:
    return load_config(GRPOConfig, None, [f"output_dir={tmp_path / 'run'}", f"data.source={_data(tmp_path, rows)}",
                                          "model.path=tiny:text", "seed=3"]
                       + [f"cold_start.{k}={v}" for k, v in cold.items()])


def test_shipped_rlpr_example_starts_from_a_cold_start():
    """The example the README names for RLPR must not start RL from random weights (issue #15 p3)."""
    cfg = load_config(GRPOConfig, ROOT / "examples/rlpr/grpo_rlpr.yaml")
    assert cfg.model.path.startswith("tiny:") and cfg.cold_start.steps >= 100 and cfg.cold_start.modes == ["deep"]
    rows = [json.loads(line) for line in (ROOT / cfg.data.source).read_text().splitlines()]
    assert all(r["reasoning"].strip() for r in rows)  # every row can be taught in deep mode


@pytest.mark.parametrize("override, key", [
    ("cold_start.steps=-1", "cold_start.steps"),
    ("cold_start.lr=0", "cold_start.lr"),
    ("cold_start.modes=[slow]", "cold_start.modes"),
    ("cold_start.modes=[]", "cold_start.modes"),
    ("cold_start.stepz=3", "cold_start.stepz"),
])
def test_bad_cold_start_keys_are_named(override, key):
    from rlkit.run.checks import check_grpo

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        check_grpo(load_config(GRPOConfig, None, [override]))


def test_rows_without_reasoning_are_refused_before_anything_starts(tmp_path):
    """A deep cold start writes the reasoning column inside the think block: a row without it is one line
    naming the key, the row and the data, raised by `prepare` before the model is built or Ray starts."""
    from rlkit.drivers.grpo import prepare

    rows = ROWS[:5] + [{"prompt": "What is 99 plus one?", "answer": "100"}] + ROWS[5:]
    cfg = _cfg(tmp_path, rows, steps=2)
    with pytest.raises(ConfigError) as e:
        prepare(cfg)
    msg = str(e.value)
    assert "cold_start.reasoning_column" in msg and "row 5 " in msg and "rows.jsonl" in msg and "\n" not in msg
    assert not (tmp_path / "run" / "base_model").exists() and not (tmp_path / "run" / "cold_start").exists()
    from rlkit.drivers.cold_start import cold_rows

    fast = _cfg(tmp_path, rows, steps=2, modes="[fast]")  # the fast format needs no reasoning
    assert len(cold_rows(fast, fast.cold_start, rows)) == len(rows)


def test_ablation_refuses_a_second_cold_start(tmp_path):
    from rlkit.drivers.ablation import load_ablation_config

    with pytest.raises(ConfigError, match=r"'cold_start\.steps'.*ablation\.cold_start"):
        load_ablation_config(ROOT / "examples/ablation/ablation.yaml", ["cold_start.steps=5"])


def test_cold_start_is_reused_only_when_its_stamp_matches(tmp_path, capsys):
    """Built once into output_dir/cold_start; the same settings reuse it (no training: the weights file is
    untouched); any setting it depends on (here the learning rate) trains it again."""
    from rlkit.drivers.cold_start import MARKER, cold_rows, run_cold_start

    cfg = _cfg(tmp_path, steps=2, batch_size=4, modes="[fast,deep]")
    out = pathlib.Path(cfg.output_dir)
    rows = cold_rows(cfg, cfg.cold_start, ROWS)
    path = pathlib.Path(run_cold_start(cfg, cfg.cold_start, rows, ROWS, out))
    assert path == out / "cold_start" and (path / MARKER).exists()
    stamp = json.loads((path / MARKER).read_text())
    assert stamp["rows"] == 2 * len(ROWS) and stamp["steps"] == 2 and stamp["seed"] == 3  # one row per mode
    weights = next(path.glob("*.safetensors"))
    before = weights.stat().st_mtime_ns
    assert run_cold_start(cfg, cfg.cold_start, rows, ROWS, out) == str(path)
    assert "reusing the cold start" in capsys.readouterr().out and weights.stat().st_mtime_ns == before
    changed = _cfg(tmp_path, steps=2, batch_size=4, modes="[fast,deep]", lr=5e-4)
    run_cold_start(changed, changed.cold_start, rows, ROWS, out)
    assert json.loads((path / MARKER).read_text())["lr"] == 5e-4 and weights.stat().st_mtime_ns != before


def test_grpo_prepare_starts_from_the_cold_start(tmp_path):
    """`rlkit grpo`'s prepare: the workers and the KL reference load the cold-start checkpoint, and with
    cold_start.steps 0 (the default) nothing of it is written."""
    from rlkit.drivers.grpo import prepare

    p = prepare(_cfg(tmp_path, steps=2, batch_size=4, modes="[deep]"))
    assert p.base_model == p.start_model == str(tmp_path / "run" / "cold_start")
    assert json.loads((tmp_path / "run" / "cold_start" / "cold_start_losses.json").read_text())["steps"] == 2
    assert ColdStartSection().steps == 0
    plain = prepare(load_config(GRPOConfig, None, [f"output_dir={tmp_path / 'plain'}", "model.path=tiny:text",
                                                   f"data.source={_data(tmp_path, ROWS)}"]))
    assert plain.base_model == str(tmp_path / "plain" / "base_model")
    assert not (tmp_path / "plain" / "cold_start").exists()
