"""Fail fast on what cannot run (issue 17, point 5): every error one line naming the key, row or file.

- YAML syntax errors name the file (or override), line and column; an output_dir that cannot be written is named;
- numeric keys are checked against their allowed range when the config is loaded (one table,
  rlkit/config_ranges.py), and the loss / advantage options are tried before any worker starts;
- the prompt data is checked in `prepare`, before Ray: missing and undecodable image files, empty prompts,
  missing answers; with data.on_bad_row skip the bad rows are counted, reported once and never drawn;
- an empty data file says so.

Ray and the cluster (resources, ray.address, the start watch): tests/test_fail_fast_ray.py.
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


def _long_prompt_file(tmp_path):
    rows = [{"prompt": f"what is {i} plus {i}?", "answer": str(2 * i)} for i in range(4)]
    rows[2]["prompt"] = "a b c d " * 200  # over 128 tokens
    f = tmp_path / "d.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return f


def _run_long_prompt(tmp_path, on_bad_row):
    return rlkit("grpo", "model.path=tiny:text", f"data.source={_long_prompt_file(tmp_path)}",
                 f"output_dir={tmp_path / 'run'}", "rollout.max_model_len=128", "max_steps=2",
                 "trainer.prompts_per_step=4", "rollout.n=2", "data.shuffle=false", f"data.on_bad_row={on_bad_row}")


def test_cli_prompt_longer_than_max_model_len_is_one_line_naming_the_row(tmp_path):
    """vLLM refuses a whole generate call for one prompt over its max_model_len; only the engine knows a prompt's
    length (image tokens), so the row is named when it is first drawn: one line, the option that skips it."""
    r = _run_long_prompt(tmp_path, "error")
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1] == (
        "rlkit: error: row 2: its prompt is longer than rollout.max_model_len (128 tokens, image tokens included) "
        "(data.on_bad_row=skip leaves such rows out)")
    assert "Traceback" not in r.stderr + r.stdout


@pytest.mark.slow
def test_cli_prompt_longer_than_max_model_len_skipped_with_on_bad_row_skip(tmp_path):
    r = _run_long_prompt(tmp_path, "skip")
    assert r.returncode == 0, r.stderr[-2000:]
    assert (r.stdout + r.stderr).count("rlkit: skipping bad row: row 2: its prompt is longer") == 1  # drawn twice
    steps = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in steps] == [1, 2]


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
