"""The async learning-parity script (examples/async_parity/run.py) end to end in miniature (slow tier, ~2 min):
a 3-step cold start, two 2-step GRPO arms (k = 0, 1) with in-loop evaluation on 10 held-out rows; per-arm JSON,
the report and the doc block are written; a rerun skips both arms and rewrites the same block."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = {"OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled",
       "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
       "PYTHONHASHSEED": "0"}


def _run(out, doc):
    cmd = [sys.executable, "examples/async_parity/run.py", "--steps", "2", "--eval-every", "1", "--eval-limit", "10",
           "--cold-steps", "3", "--seeds", "0", "--ks", "0", "1", "--out", str(out), "--doc", str(doc)]
    env = {**os.environ, **ENV, "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_parity_script_runs_writes_and_skips(tmp_path):
    out, doc = tmp_path / "parity", tmp_path / "async.md"
    doc.write_text("# doc\n\nbefore\n<!-- parity:begin -->\nold\n<!-- parity:end -->\nafter\n")
    r = _run(out, doc)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for k in (0, 1):
        arm = json.loads((out / "seed_0" / f"k{k}.json").read_text())
        assert arm["steps"] == 2 and arm["curve"][0]["step"] == 0 and arm["curve"][-1]["step"] == 2
        assert arm["stamp"]["grpo"]["rollout"]["max_staleness"] == k
        assert arm["stamp"]["grpo"]["algorithm"]["loss_opts"]["correction"] == "icepop"
    assert json.loads((out / "seed_0" / "k1.json").read_text())["async"]["staleness_hist"]  # k = 1 logs lags
    result = json.loads((out / "parity.json").read_text())
    assert list(result["comparison"]) == ["1"] and result["n"] == 10
    text = doc.read_text()
    assert "old" not in text and text.startswith("# doc\n\nbefore\n<!-- parity:begin -->") and text.endswith("after\n")
    assert "| 1 |" in text and (tmp_path / "async_parity.png").exists()
    r2 = _run(out, doc)
    assert r2.returncode == 0, r2.stdout[-3000:] + r2.stderr[-3000:]
    assert r2.stdout.count("already done") == 2
    assert doc.read_text() == text  # same arms, same block
