"""RLPR in the GRPO loop (slow tier): the example
config runs, rlpr reaches the policy actor, the std filter drops groups and refills from fresh prompts, and a
resumed run keeps the baseline cache and the filter's EMA."""
import json
import pathlib

import pytest

import rlkit.drivers.grpo
from rlkit.config import GRPOConfig, load_config

pytestmark = [
    pytest.mark.slow,
]
ROOT = pathlib.Path(__file__).resolve().parents[1]


def read_jsonl(path):
    return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines()]


@pytest.mark.parametrize("chunks", [1, 3], ids=["whole", "streamed"])
def test_rlpr_example_with_filter_refill_and_resume(tmp_path, monkeypatch, capsys, chunks):
    """With rollout.stream_chunks 3 every prompt is its own chunk: RLPR asks the policy actor for logprobs while
    earlier chunks' parts are queued on it (the weights have not moved: the same scores), and a step whose groups
    are all dropped sends no part and skips the update."""
    monkeypatch.chdir(ROOT)  # the example names its data file relative to the repository root
    common = [f"output_dir={tmp_path / 'run'}", "logging.progress=false", "rollout.n=4", "rollout.max_tokens=12",
              "cold_start.steps=2", "cold_start.limit=64",  # the example's cold start, in miniature (reused on resume)
              f"rollout.stream_chunks={chunks}",
              "trainer.prompts_per_step=3", "logging.save_every=1", "logging.keep_checkpoints=0",
              # filter from step 2 with an unreachable threshold: every group is dropped, refills run out
              "algorithm.group_filter_opts={beta: 1.0e+9, ema: 0.5, ema_start_step: 1, filter_start_step: 2}",
              "algorithm.refill_rounds=1"]
    cfg = load_config(GRPOConfig, ROOT / "examples/rlpr/grpo_rlpr.yaml", [*common, "max_steps=2"])
    rlkit.drivers.grpo.run_grpo(cfg)
    out = tmp_path / "run"
    m1, m2 = read_jsonl(out / "metrics.jsonl")
    assert m1["rlpr/scored"] == 12 and m1["rlpr/baselines_computed"] == 3 and m1["reward/rlpr/fail_frac"] == 0.0
    assert m1["filter/active"] == 0.0 and m1["filter/groups_kept"] == 3 and m1["filter/refill_rounds"] == 0
    assert 0.0 <= m1["reward/rlpr/mean"] <= 1.0
    # step 2: all 3 groups dropped, one refill round of 3 fresh prompts dropped too: no update this step
    assert m2["filter/active"] == 1.0 and m2["filter/groups_seen"] == 6 and m2["filter/groups_kept"] == 0
    assert m2["filter/refill_rounds"] == 1 and m2["filter/filtered_frac"] == 1.0 and m2["train/update_skipped"] == 1.0
    assert m2["rlpr/scored"] == 24  # both rounds scored
    ck = out / "checkpoints/step_2"
    cache = json.loads((ck / "reward_state.json").read_text())["rlpr"]["baselines"]
    assert len(cache) == m2["rlpr/baseline_cache_size"]
    filt = json.loads((ck / "run_state.json").read_text())["group_filter"]
    assert filt["ema"] is not None

    rlkit.drivers.grpo.run_grpo(load_config(GRPOConfig, ROOT / "examples/rlpr/grpo_rlpr.yaml", [*common, "max_steps=3"]),
                        resume=True)
    assert "reusing the cold start" in capsys.readouterr().out  # --resume: the run's own cold start, not redone
    m3 = read_jsonl(out / "metrics.jsonl")[-1]
    assert m3["step"] == 3 and m3["rlpr/baseline_cache_size"] >= len(cache)  # the cache came back
    assert m3["filter/ema"] == pytest.approx(0.5 * filt["ema"] + 0.5 * sum(filt["pending"]) / len(filt["pending"]))
