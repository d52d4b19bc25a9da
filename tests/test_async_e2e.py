"""Asynchronous GRPO end to end (rollout.max_staleness; rlkit/step/ahead.py) with Ray, vLLM and the policy worker.

Default tier: RLPR (a reward that uses the policy) with the std filter and refill, two rollout workers, k = 2:
every trained sample is at most 2 versions old, each batch is sampled by the version the schedule names, the
trainer and the engine agree exactly on samples of lag 0 and disagree on stale ones (the off-policy gap that the
corrections see). Slow tier: a run killed mid-flight and resumed ends exactly as the uninterrupted one."""
import json
import os
import pathlib
import signal
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def read_jsonl(path):
    return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines()]


def test_async_rlpr_filter_refill_two_workers(tmp_path, monkeypatch):
    import rlkit.drivers.grpo
    from rlkit.config import GRPOConfig, load_config

    monkeypatch.chdir(ROOT)  # the example names its data file relative to the repository root
    k, steps = 2, 4
    cfg = load_config(GRPOConfig, ROOT / "examples/rlpr/grpo_rlpr.yaml", [
        f"output_dir={tmp_path / 'run'}", "logging.progress=false", "rollout.n=4", "rollout.max_tokens=12",
        "cold_start.steps=0", "trainer.prompts_per_step=3", f"max_steps={steps}", "logging.save_every=0", "trainer.lr=1e-2",
        f"rollout.max_staleness={k}", "rollout.num_workers=2", "rollout.num_cpus=0.5", "ray.num_cpus=2",
        # the filter is on from step 3 with an unreachable threshold: every group is dropped, one refill round
        "algorithm.group_filter_opts={beta: 1.0e+9, ema: 0.5, ema_start_step: 1, filter_start_step: 3}",
        "algorithm.refill_rounds=1", "algorithm.loss_opts={correction: icepop, correction_opts: {low: 0.5, high: 5.0}}"])
    rlkit.drivers.grpo.run_grpo(cfg)
    out = tmp_path / "run"
    ms = read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in ms] == [1, 2, 3, 4]
    want = [0, 0, 0, 1]  # weights_for(t) = max(0, t - 1 - k): no sync before the last step
    assert [m["async/weights_version"] for m in ms] == want
    samples = read_jsonl(out / "samples.jsonl")
    assert {s["step"]: s["version"] for s in samples} == {1: 0, 2: 0}  # steps 3, 4: every group dropped
    m1, m2, m3 = ms[0], ms[1], ms[2]
    assert m1["async/staleness_hist/0"] == 12 and m2["async/staleness_hist/1"] == 12
    assert m1["rlpr/scored"] == 12 and m1["reward/rlpr/fail_frac"] == 0.0 and m2["reward/rlpr/fail_frac"] == 0.0
    # lag 0: the engine sampled with the weights the trainer holds: the same logprobs, no IS weight
    assert m1["train/mismatch_abs_logprob_diff"] < 1e-4 and m1["train/is_masked_frac"] == 0.0
    # lag 1 after an update with lr 1e-2: the engine's logprobs are the old policy's
    assert m2["train/mismatch_abs_logprob_diff"] > 1e-3 and "train/is_weight_mean" in m2
    # the group filter and refill run in the collecting thread; their metrics are the batch's own
    assert m3["filter/groups_seen"] == 6 and m3["filter/groups_kept"] == 0 and m3["train/update_skipped"] == 1.0
    assert m3["rlpr/scored"] == 24  # both rounds of batch 3 (counted per batch, in the thread)


ARGS = ["model.path=tiny:text", "data.source=arithmetic", "max_steps=6", "rollout.n=4", "rollout.max_tokens=8",
        "trainer.prompts_per_step=3", "rollout.engine=vllm", "trainer.lr=1e-2", "logging.save_every=3",
        "logging.keep_checkpoints=0", "logging.progress=false", "ray.num_cpus=2", "rollout.max_staleness=1",
        "rollout.num_workers=2", "rollout.num_cpus=0.5", "algorithm.group_filter=std_ema",
        "algorithm.loss_opts={correction: seq_mask, correction_opts: {low: 0.5, high: 2.0}}",
        "rewards=[{name: length, kwargs: {max_len: 14, cache: 14, unit: chars}}]"]


@pytest.mark.slow
def test_async_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    """k = 1, checkpoints at steps 3 and 6: killed while step 4 or 5 runs (batch 5 or 6 being collected ahead),
    resumed from step 3, the run logs the same metrics and samples (versions included) and ends with the same
    weights as the uninterrupted one. Batches after a checkpoint are sampled by its weights (a sync step), so
    nothing in flight needs saving: the resumed run collects them again, identically."""
    import torch
    from safetensors.torch import load_file

    import test_resume_kill as rk

    # the kill/resume harness of tests/test_resume_kill.py with this file's arguments (passed, never assigned to
    # rk.ARGS: that would change test_resume_kill's own run when it comes later in the same session)
    rk._finish(rk._start(tmp_path / "straight", args=ARGS))
    out = tmp_path / "killed"
    proc = rk._start(out, args=ARGS)
    ck = out / "checkpoints"
    deadline = time.time() + 600
    while not (ck / "step_3" / "COMPLETE").exists():
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert time.time() < deadline
        time.sleep(0.01)
    time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    end = time.time() + 60
    while rk.session_processes(proc.pid) and time.time() < end:
        time.sleep(0.5)
    assert not (ck / "step_6").exists()
    rk._finish(rk._start(out, "--resume", args=ARGS))

    a, b = read_jsonl(tmp_path / "straight/metrics.jsonl"), read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in b] == [1, 2, 3, 4, 5, 6]
    assert [m["async/weights_version"] for m in a] == [0, 0, 1, 3, 3, 4]  # staleness 0 right after a checkpoint
    assert sum(m["async/staleness_hist/1"] for m in a) > 0
    for x, y in zip(a, b):
        rk._same(x, y)
    sa, sb = read_jsonl(tmp_path / "straight/samples.jsonl"), read_jsonl(out / "samples.jsonl")
    assert len(sa) == len(sb) == 6 * 3 * 4
    for x, y in zip(sa, sb):
        rk._same(x, y)
    wa = load_file(tmp_path / "straight/checkpoints/step_6/model.safetensors")
    wb = load_file(ck / "step_6/model.safetensors")
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], rtol=0, atol=1e-6)
