"""The fault table's checks (benchmarks/faults.py, benchmarks/fault_tools.py): the data-loss audit finds what
is gone and not what was moved aside, and how a run ended is read from its output; slow: one row run for real."""
import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import fault_tools as ft  # noqa: E402


def _run_dir(tmp_path):
    out = tmp_path / "run"
    for step in (1, 2):
        c = out / "checkpoints" / f"step_{step}"
        c.mkdir(parents=True)
        (c / "model.safetensors").write_bytes(bytes([step]) * 100)
        (c / "COMPLETE").write_text("")
    (out / "checkpoints" / ".step_3.tmp").mkdir()  # half-written: not data yet
    (out / "checkpoints" / ".step_3.tmp" / "model.safetensors").write_bytes(b"x")
    (out / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": s / 10}) + "\n" for s in (1, 2, 3))
                                       + '{"step": 4, "lo')  # a line torn by a kill
    return out


def test_lost_finds_deleted_files_and_lines_not_moved_ones(tmp_path):
    out = _run_dir(tmp_path)
    before = ft.snapshot(out)
    assert before["steps"] == [1, 2] and before["logged"] == [1, 2, 3]
    assert len(before["files"]) == 4 and len(before["lines"]["metrics.jsonl"]) == 3  # not the staging, not the torn
    assert ft.lost(before, out) == []
    # a resume that moves step 3's line aside and a checkpoint aside loses nothing
    lines = (out / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text("\n".join(lines[:2]) + "\n")
    (out / "metrics.jsonl.orphaned-1").write_text(lines[2] + "\n")
    (out / "checkpoints" / "step_2").rename(out / "checkpoints" / "step_2.damaged")
    assert ft.lost(before, out) == []
    # deleting or changing either is found
    (out / "metrics.jsonl.orphaned-1").unlink()
    (out / "checkpoints" / "step_2.damaged" / "model.safetensors").write_bytes(b"y" * 100)
    assert ft.lost(before, out) == ["checkpoint file checkpoints/step_2/model.safetensors",
                                    "1 line(s) of metrics.jsonl (steps [3])"]


def test_outcome_reads_how_a_run_ended():
    assert ft.outcome(None, "") == "hung"
    assert ft.outcome(0, "{'step': 3}") == "survived"
    assert ft.outcome(-9, "") == "crashed (signal 9)"
    assert ft.outcome(2, "rlkit: error: config key 'x': bad") == "stopped cleanly"
    tb = "Traceback (most recent call last):\n  File ...\n"
    assert ft.outcome(1, tb + "rlkit.distributed.pool.PolicyRankError: policy rank 0 failed") == "stopped cleanly"
    assert ft.outcome(1, tb + "KeyError: 'step'\n\x1b[36m(PolicyRank pid=1)\x1b[0m ValueError: x") == "crashed"
    assert ft.outcome(1, tb + "RuntimeError: rollout worker 0 died 3 times (config key 'rollout.max_retries')") \
        == "stopped cleanly"
    assert ft.outcome(1, tb + "OSError: [Errno 28] No space left on device") == "crashed"
    # Ctrl-C / SIGTERM: rlkit's own line after the clean-up (exit 130 / 143) is a clean stop; anything else is not
    line = "rlkit: grpo stopped by SIGTERM; newest checkpoint /r/checkpoints/step_1; --resume continues from it"
    assert ft.outcome(143, "grpo: 1/3\n" + line + "\n") == "stopped cleanly"
    assert ft.outcome(130, line.replace("stopped by SIGTERM", "interrupted")) == "stopped cleanly"
    assert ft.outcome(143, tb + "SystemExit: 15") == "crashed"
    assert ft.outcome(1, line) == "crashed"


@pytest.mark.slow
def test_fault_rows_driver_mid_checkpoint_and_rollout_worker(tmp_path):
    """Two rows of the table for real: the driver SIGKILLed while a checkpoint is written, then --resume; a rollout
    engine actor SIGKILLed mid-run. Both must pass (exit 0, every row PASS, no data lost)."""
    out = tmp_path / "faults.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "faults.py"), "--only",
                           "driver-mid-checkpoint,rollout-worker", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["result"] for r in rows] == ["PASS", "PASS"]
    assert all(r["data_lost"] == [] for r in rows)
    assert rows[0]["resumed"].startswith("yes") and rows[1]["observed"] == "survived"
