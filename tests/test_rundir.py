"""A run directory belongs to one run (rlkit/run/rundir.py), and checkpoints prove themselves (rlkit/run/checkpoint.py).

Unit level (no Ray): the drivers' first touch of output_dir (`grpo.prepare`, `run_dpo`, `run_rlaifv`, the CLI)
refuses a used directory, moves it aside on --overwrite, checks the config on --resume; checkpoints carry a
manifest, resume skips a damaged one and falls back, pruning never drops the only intact one. One short
end-to-end run resumes past a checkpoint with a missing weights file.
"""
import dataclasses
import json
import pathlib
import subprocess
import sys

import pytest
import yaml

from rlkit.run import checkpoint as ckpt
from rlkit.config import GRPOConfig, load_config
from rlkit.run.rundir import GRPO_RESUMABLE, RunDirError, config_changes, holds_run, open_run

ROOT = pathlib.Path(__file__).resolve().parents[1]


def grpo_cfg(out, *extra, model="tiny:text"):
    return load_config(GRPOConfig, None, [f"output_dir={out}", f"model.path={model}", "data.source=arithmetic",
                                          "data.limit=8", "logging.progress=false", *extra])


def fake_run(out, cfg=None, steps=(), keep=0):
    """A run directory as a driver leaves it: config.yaml, metrics.jsonl, checkpoints/step_N (small files)."""
    from rlkit.config import dump_config

    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg or grpo_cfg(out), out / "config.yaml")
    with open(out / "metrics.jsonl", "a") as f:
        for s in steps:
            f.write(json.dumps({"step": s, "reward/mean": 0.5}) + "\n")
    for s in steps:
        staging = ckpt.staging_dir(out, s)
        (staging / "model.safetensors").write_bytes(bytes([s]) * 4096)
        (staging / "sub").mkdir()
        (staging / "sub" / "adapter.bin").write_bytes(b"x" * 100)
        ckpt.finalize(out, s, staging, {"step": s}, keep=keep)
    return out


# ------------------------------------------------------------------------------------ a new run, a used dir
def test_new_run_into_a_used_dir_is_refused_in_one_line(tmp_path):
    from rlkit.drivers.grpo import prepare

    out = fake_run(tmp_path / "run", steps=[1, 2])
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(RunDirError) as e:
        prepare(grpo_cfg(out))
    msg = str(e.value)
    assert "\n" not in msg and str(out) in msg
    assert "--resume" in msg and "new output_dir" in msg and "--overwrite" in msg
    assert "config.yaml" in msg and "checkpoints" in msg
    assert sorted(p.name for p in out.iterdir()) == before  # nothing written


def test_free_dirs_are_fine(tmp_path):
    assert holds_run(tmp_path / "missing") == [] and holds_run(tmp_path) == []
    (tmp_path / "notes.txt").write_text("mine")  # other files do not make a run
    assert open_run(grpo_cfg(tmp_path), resume=False, overwrite=False, allowed=GRPO_RESUMABLE) is None
    (tmp_path / "base_model").mkdir()  # a built tiny model alone does: a new config must not reuse it
    assert holds_run(tmp_path) == ["base_model"]


def test_overwrite_moves_the_old_run_aside(tmp_path, capsys):
    from rlkit.drivers.grpo import prepare

    out = fake_run(tmp_path / "run", steps=[1])
    old_metrics = (out / "metrics.jsonl").read_text()
    p = prepare(grpo_cfg(out, "model.hidden_size=64"), overwrite=True)
    moved = [d for d in tmp_path.iterdir() if d.name.startswith("run.old-")]
    assert len(moved) == 1 and (moved[0] / "metrics.jsonl").read_text() == old_metrics
    assert (moved[0] / "checkpoints" / "step_1" / "COMPLETE").exists()
    assert p.resume_from is None and not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["hidden_size"] == 64
    assert "moved to" in capsys.readouterr().out
    with pytest.raises(RunDirError, match="exclude each other"):
        prepare(grpo_cfg(out), resume=True, overwrite=True)


def test_cli_refuses_a_used_dir_with_exit_2_and_one_line(tmp_path):
    out = fake_run(tmp_path / "run", steps=[1])
    r = subprocess.run([sys.executable, "-m", "rlkit.cli", "grpo", f"output_dir={out}", "data.source=arithmetic"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("rlkit: error: output_dir") and "--overwrite" in lines[0]


def test_cli_claims_the_dir_before_the_run_log_folder(tmp_path):
    """rlkit grpo: a refused start writes nothing into the other run's folder; with --overwrite the old run is
    moved aside before this run's logs/ is made, so the new logs sit in output_dir, none in the moved run."""
    import argparse
    import logging

    from rlkit.cli import _claim
    from rlkit.console import run_console

    out = fake_run(tmp_path / "run", steps=[1])
    cfg = grpo_cfg(out)
    with pytest.raises(RunDirError):
        _claim(cfg, argparse.Namespace(resume=False, overwrite=False))
    assert not (out / "logs").exists()
    _claim(cfg, argparse.Namespace(resume=False, overwrite=True))
    with run_console(cfg, "grpo") as run:
        logging.getLogger("transformers").warning("a line of the new run")
        run["summary"] = {}
    (old,) = tmp_path.glob("run.old-*")
    assert (old / "checkpoints" / "step_1").is_dir() and not (old / "logs").exists()
    (driver_log,) = (out / "logs").glob("grpo-*/driver.log")
    assert "a line of the new run" in driver_log.read_text()
    assert holds_run(out) == []  # only logs/: free for the driver's own check (open_run)


def test_dpo_and_rlaifv_apply_the_same_rules(tmp_path):
    from rlkit.config import dump_config
    from rlkit.drivers.dpo import DPOConfig, run_dpo
    from rlkit.drivers.rlaifv import RLAIFVConfig, run_rlaifv
    from rlkit.run.rundir import check_resume_config, dpo_resumable

    dpo = load_config(DPOConfig, None, [f"output_dir={tmp_path / 'dpo'}", "data.path=pairs/"])
    fake_run(tmp_path / "dpo", cfg=dpo)
    with pytest.raises(RunDirError, match="holds another run"):
        run_dpo(dpo)
    with pytest.raises(RunDirError, match=r"dpo\.max_steps \(0 -> 9\)"):  # the cosine schedule's length
        run_dpo(load_config(DPOConfig, None, [f"output_dir={tmp_path / 'dpo'}", "data.path=pairs/",
                                              "dpo.max_steps=9"]), resume=True)
    const = load_config(DPOConfig, None, [f"output_dir={tmp_path / 'c'}", "data.path=pairs/",
                                          "dpo.lr_schedule=constant"])
    fake_run(tmp_path / "c", cfg=const)
    check_resume_config(tmp_path / "c", dataclasses.replace(const, dpo=dataclasses.replace(const.dpo, max_steps=9)),
                        dpo_resumable("constant"))  # constant: no length, so allowed
    rl = load_config(RLAIFVConfig, None, [f"output_dir={tmp_path / 'rl'}"])
    (tmp_path / "rl").mkdir()
    dump_config(rl, tmp_path / "rl" / "config.yaml")
    with pytest.raises(RunDirError, match=r"rerun: .*pairs\.threshold"):  # a rerun continues: same config
        run_rlaifv(load_config(RLAIFVConfig, None, [f"output_dir={tmp_path / 'rl'}", "pairs.threshold=2"]))


# ------------------------------------------------------------------------------------ --resume
def test_resume_config_check_names_refused_and_allowed_keys(tmp_path, capsys):
    from rlkit.drivers.grpo import prepare

    out = fake_run(tmp_path / "run", steps=[1])
    with pytest.raises(RunDirError) as e:
        prepare(grpo_cfg(out, "model.hidden_size=64", "trainer.lr=0.5", "max_steps=20"), resume=True)
    msg = str(e.value)
    assert "\n" not in msg and "model.hidden_size (128 -> 64)" in msg and "trainer.lr (0.0001 -> 0.5)" in msg
    assert "max_steps" not in msg  # allowed
    p = prepare(grpo_cfg(out, "max_steps=20", "logging.save_every=5", "ray.num_cpus=2"), resume=True)
    assert p.resume_from == out / "checkpoints" / "step_1"
    line = [l for l in capsys.readouterr().out.splitlines() if "(allowed)" in l]
    assert len(line) == 1 and "max_steps (10 -> 20)" in line[0] and "logging.save_every (0 -> 5)" in line[0]
    assert "ray.num_cpus (0 -> 2)" in line[0]


@pytest.mark.parametrize("key", ["seed=1", "rollout.n=2", "rollout.temperature=0.5", "data.shuffle=false",
                                 "algorithm.kl_coef=0.1", "rewards=[{name: format}]", "trainer.prompts_per_step=2",
                                 "model.path=tiny:vlm", "modes.deep_ratio=0.5", "rollout.num_workers=2"])
def test_what_a_run_computes_cannot_change_on_resume(tmp_path, key):
    from rlkit.config import to_dict

    saved = json.loads(json.dumps(to_dict(grpo_cfg(tmp_path))))  # as read back from config.yaml
    ok, bad = config_changes(saved, grpo_cfg(tmp_path, key), GRPO_RESUMABLE)
    assert bad and not ok, (key, ok, bad)


def test_a_key_added_since_counts_as_its_default(tmp_path):
    from rlkit.config import to_dict

    saved = to_dict(grpo_cfg(tmp_path))
    del saved["trainer"]["eval_modes"], saved["strict_rewards"]  # an older rlkit wrote no such keys
    assert config_changes(saved, grpo_cfg(tmp_path), GRPO_RESUMABLE) == ([], [])


def test_resume_without_a_run_fails_in_one_line(tmp_path):
    from rlkit.drivers.grpo import prepare

    for out in (tmp_path / "typo", tmp_path):
        with pytest.raises(RunDirError, match="nothing to resume") as e:
            prepare(grpo_cfg(out), resume=True)
        assert "\n" not in str(e.value) and str(out) in str(e.value)
    assert not (tmp_path / "typo").exists()  # not created


def test_resume_before_the_first_checkpoint_restarts_at_step_0_logs_aside(tmp_path, capsys):
    from rlkit.drivers.grpo import prepare

    out = fake_run(tmp_path / "run")  # config.yaml, no checkpoint (it died before the first save)
    (out / "metrics.jsonl").write_text('{"step": 0, "eval/fast/accuracy": 0.0}\n')
    p = prepare(grpo_cfg(out), resume=True)
    assert p.resume_from is None and p.start_model == p.base_model
    said = capsys.readouterr().out
    assert "no intact checkpoint" in said and "step 0" in said
    assert not (out / "metrics.jsonl").exists()
    (aside,) = out.glob("metrics.jsonl.orphaned-*")
    assert "eval/fast/accuracy" in aside.read_text()


# ------------------------------------------------------------------------------------ checkpoints
def test_manifest_lists_every_file_with_size_and_sha256(tmp_path):
    import hashlib

    out = fake_run(tmp_path / "run", steps=[1])
    d = out / "checkpoints" / "step_1"
    files = json.loads((d / ckpt.MANIFEST).read_text())["files"]
    assert set(files) == {"model.safetensors", "sub/adapter.bin", "run_state.json"}
    for rel, meta in files.items():
        data = (d / rel).read_bytes()
        assert meta == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert ckpt.damage(d) is None


@pytest.mark.parametrize("harm", ["missing", "truncated", "flipped", "no_complete"])
def test_resume_skips_a_damaged_newest_checkpoint(tmp_path, capsys, harm):
    out = fake_run(tmp_path / "run", steps=[1, 2])
    weights = out / "checkpoints" / "step_2" / "model.safetensors"
    if harm == "missing":
        weights.unlink()
    elif harm == "truncated":
        weights.write_bytes(weights.read_bytes()[:100])
    elif harm == "flipped":  # same size, one byte changed: only the checksum sees it
        data = bytearray(weights.read_bytes())
        data[7] ^= 1
        weights.write_bytes(bytes(data))
    else:
        (out / "checkpoints" / "step_2" / ckpt.COMPLETE).unlink()
    assert ckpt.resume_point(out) == out / "checkpoints" / "step_1"
    lines = [l for l in capsys.readouterr().out.splitlines() if "skipped" in l]
    assert len(lines) == 1 and "step_2" in lines[0]
    assert {"missing": "model.safetensors is missing", "truncated": "has 100 bytes",
            "flipped": "does not match its sha256", "no_complete": "no COMPLETE marker"}[harm] in lines[0]
    (aside,) = (out / "checkpoints").glob("damaged.step_2.*")  # kept, not deleted
    assert (aside / "sub" / "adapter.bin").exists()
    assert [d.name for d in ckpt.complete_checkpoints(out)] == ["step_1"]


def test_every_checkpoint_damaged_means_step_0_and_legacy_ones_are_used_unverified(tmp_path, capsys):
    out = fake_run(tmp_path / "run", steps=[1])
    (out / "checkpoints" / "step_1" / "model.safetensors").unlink()
    assert ckpt.resume_point(out) is None
    out2 = fake_run(tmp_path / "old", steps=[3])
    (out2 / "checkpoints" / "step_3" / ckpt.MANIFEST).unlink()  # written before manifests existed
    capsys.readouterr()
    assert ckpt.resume_point(out2) == out2 / "checkpoints" / "step_3"
    assert "unverified" in capsys.readouterr().out


def test_pruning_keeps_the_newest_intact_checkpoint_when_a_newer_one_is_damaged(tmp_path):
    out = fake_run(tmp_path / "run", steps=[1, 2])
    (out / "checkpoints" / "step_2" / "model.safetensors").unlink()  # damaged after it was written
    staging = ckpt.staging_dir(out, 3)
    (staging / "model.safetensors").write_text("")
    ckpt.finalize(out, 3, staging, {"step": 3}, keep=2)
    # the two newest intact ones are step_3 and step_1: step_1 stays, the damaged step_2 is not counted
    assert [d.name for d in ckpt.complete_checkpoints(out)] == ["step_1", "step_2", "step_3"]
    staging = ckpt.staging_dir(out, 4)
    (staging / "model.safetensors").write_text("")
    ckpt.finalize(out, 4, staging, {"step": 4}, keep=2)
    assert [d.name for d in ckpt.complete_checkpoints(out)] == ["step_3", "step_4"]
    assert ckpt.latest(out).name == "step_4"


def test_no_advice_that_loops(tmp_path):
    out = fake_run(tmp_path / "run", steps=[1, 2])
    started = str(out / "checkpoints" / "step_2")
    note = ckpt.last_note(out, started)
    assert "started from" in note and "fix the cause" in note
    assert ckpt.last_note(out, str(out / "base_model")) == started  # a bare path: the pool adds "--resume"
    assert ckpt.last_note(tmp_path / "none") == ""


# ------------------------------------------------------------------------------------ end to end
def test_grpo_resumes_past_a_checkpoint_missing_its_weights(tmp_path, capsys):
    """Two steps, step_2's weights deleted; --resume continues from step_1 (saying so) to step 3."""
    from rlkit.drivers.grpo import run_grpo

    out = tmp_path / "run"
    common = ["rollout.n=2", "rollout.max_tokens=4", "trainer.prompts_per_step=2", "rollout.engine=hf",
              "logging.save_every=1", "logging.keep_checkpoints=0", "ray.num_cpus=2"]
    run_grpo(grpo_cfg(out, *common, "max_steps=2"))
    (out / "checkpoints" / "step_2" / "model.safetensors").unlink()
    with pytest.raises(RunDirError, match="holds another run"):  # the same command again: refused
        run_grpo(grpo_cfg(out, *common, "max_steps=2"))
    capsys.readouterr()
    summary = run_grpo(grpo_cfg(out, *common, "max_steps=3"), resume=True)
    said = capsys.readouterr().out
    assert "skipped" in said and "step_2 (model.safetensors is missing)" in said and "max_steps (2 -> 3)" in said
    assert summary["step"] == 3
    steps = [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # step 2 again, once; the lost step 2's line was moved aside
    assert [d.name for d in ckpt.complete_checkpoints(out)] == ["step_1", "step_2", "step_3"]
    assert ckpt.damage(out / "checkpoints" / "step_2") is None and list((out / "checkpoints").glob("damaged.step_2.*"))


def test_a_full_disk_while_checkpointing_is_named(tmp_path, monkeypatch):
    """A checkpoint write that fails on a full disk says so in one error naming the folder and the resume point
    (torch reports ENOSPC as an opaque 'unexpected pos' RuntimeError); other failures pass through unchanged."""
    import errno
    import shutil

    out = fake_run(tmp_path / "run", steps=[1])
    with pytest.raises(ckpt.DiskFullError, match=r"step_2 .* the disk is full .*--resume continues from .*step_1"):
        with ckpt.naming_a_full_disk(out, 2):
            raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(ValueError, match="not about space"):  # plenty of room: not a disk-full error
        with ckpt.naming_a_full_disk(out, 2):
            raise ValueError("not about space")
    usage = shutil.disk_usage(out)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=1024))  # what a full tmpfs reports
    with pytest.raises(ckpt.DiskFullError, match=r"0\.0 MiB free"):
        with ckpt.naming_a_full_disk(out, 2):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 869440 vs 869328")
