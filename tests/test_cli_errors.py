"""Bad input stops with one clear message naming the key, row or path, before any worker starts."""
import json
import subprocess
import sys


def rlkit(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "rlkit.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_misspelt_key(tmp_path):
    r = rlkit("grpo", f"output_dir={tmp_path}", "trainer.lrr=1e-4")
    assert r.returncode == 2
    assert "unknown config key 'trainer.lrr' (did you mean 'trainer.lr'?)" in r.stderr


def test_missing_model_path(tmp_path):
    r = rlkit("grpo", f"output_dir={tmp_path}", f"model.path={tmp_path}/no_such_model")
    assert r.returncode == 2 and "model path not found" in r.stderr and "no_such_model" in r.stderr


def test_dataset_without_answer_column(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"prompt": "2+2?", "label": "4"}) + "\n")
    r = rlkit("grpo", f"output_dir={tmp_path / 'o'}", f"data.source={f}")
    assert r.returncode == 2 and "no 'answer' column" in r.stderr and "data.columns.answer" in r.stderr


def test_unknown_reward_lists_known(tmp_path):
    r = rlkit("grpo", f"output_dir={tmp_path}", "rewards=[{name: no_such_reward}]")
    assert r.returncode == 2 and "no_such_reward" in r.stderr and "exact_match" in r.stderr


def test_eval_names_a_missing_checkpoint(tmp_path):
    r = rlkit("eval", "--checkpoint", str(tmp_path / "no_such_run"), "data.source=arithmetic")
    assert r.returncode == 2 and f"checkpoint not found: {tmp_path / 'no_such_run'}" in r.stderr
