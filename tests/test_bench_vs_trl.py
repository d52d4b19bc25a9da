"""benchmarks/vs_trl.py's plumbing (arguments, TRL batch settings, the result summary and tables) on hand-built
results; the benchmark itself is not a test."""
import importlib.util
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def vs_trl():
    spec = importlib.util.spec_from_file_location("vs_trl", ROOT / "benchmarks" / "vs_trl.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["vs_trl"] = mod  # dataclasses look their module up
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop("vs_trl", None)


def test_arguments(vs_trl):
    a = vs_trl.parse_args(["--size", "realistic", "--model", "vlm", "--reps", "3", "--tokens", "64,128,256",
                           "--out", "x.json"])
    assert (a.size, a.model, a.reps, a.token_list, a.out) == ("realistic", "vlm", 3, [64, 128, 256], "x.json")
    assert vs_trl.case_of(a) == vs_trl.Case("realistic", "vlm", 16, 8, 128)
    assert vs_trl.case_of(vs_trl.parse_args([])).sequences == 4  # small: 1 x 4 x 16
    for bad in (["--tokens", "0"], ["--reps", "0"], ["--size", "huge"]):
        with pytest.raises(SystemExit):
            vs_trl.parse_args(bad)


def test_trl_does_one_generation_and_one_optimizer_step_per_rlkit_step(vs_trl):
    # TRL: one optimizer step = per_device_train_batch_size * gradient_accumulation_steps sequences, and one
    # generation batch = per_device_train_batch_size * steps_per_generation
    for seqs in (4, 128):
        b = vs_trl.trl_batching(seqs)
        assert b["per_device_train_batch_size"] * b["gradient_accumulation_steps"] == seqs
        assert b["per_device_train_batch_size"] * b["steps_per_generation"] == seqs
        assert b["per_device_train_batch_size"] <= vs_trl.MICRO_BATCH and b["num_iterations"] == 1
    with pytest.raises(ValueError):
        vs_trl.trl_batching(96)


def _rep(rl, trl, floor):
    return {"rlkit": {"step_s": rl, "rollout_tokens_per_s": 1000.0, "step_tokens_per_s": 500.0, "tokens_per_step": 64,
                      "phases": {"rollout_s": rl / 2, "reward_s": 0.0, "update_s": rl / 4, "sync_s": rl / 4,
                                 "step_s": rl}, "peak_rss_mib": {"driver": 700.0, "PolicyWorker": 600.0}},
            "trl": {"step_s": trl, "mode": "transformers", "settings": {"per_device_train_batch_size": 4},
                    "rollout_tokens_per_s": 800.0, "step_tokens_per_s": 400.0, "tokens_per_step": 64.0,
                    "peak_rss_mib": {"driver": 2000.0}},
            "floor": {"step_s": floor, "generation_s": floor / 2, "train_s": floor / 2, "rollout_tokens_per_s": 2000.0,
                      "step_tokens_per_s": 900.0, "tokens_per_step": 64, "peak_rss_mib": {"driver": 1900.0}}}


def test_summary_and_tables(vs_trl):
    case = vs_trl.Case("small", "text", 1, 4, 16)
    reps = [_rep(0.10, 0.20, 0.05), _rep(0.30, 0.20, 0.05), _rep(0.20, 0.40, 0.10)]
    reps[2]["rlkit"]["peak_rss_mib"]["PolicyWorker"] = 650.0
    s = vs_trl.summarize(case, reps)
    assert (s["rlkit_step_s"], s["trl_step_s"], s["floor_s"]) == (0.20, 0.20, 0.05)
    assert s["ratio"] == pytest.approx(1.0) and s["rlkit_over_floor"] == pytest.approx(4.0)
    assert s["peak_rss_mib"]["rlkit"] == {"driver": 700.0, "PolicyWorker": 650.0}  # max over repetitions
    assert s["trl_mode"] == "transformers" and s["errors"] == {}
    assert s["rlkit_phases"]["rollout_s"] == pytest.approx(0.10)
    table = vs_trl.format_table([s])
    assert ("| small | text | 1 x 4 x 16 | 0.200 | 0.200 | 0.050 | 1.00 | 4.00 | - | - | - | 1000 / 800 / 2000 "
            "| transformers |") in table  # no streamed side: dashes
    assert "PolicyWorker 650, driver 700" in table
    assert "| small | text | 0.100 | 0.000 | 0.050 (-) | 0.050 | 0.200 | 0.025 | 0.025 |" in vs_trl.format_phases([s])

    streamed = [_rep(0.10, 0.20, 0.05), _rep(0.30, 0.20, 0.05)]
    for r, st in zip(streamed, (0.08, 0.12)):
        r["rlkit_stream"] = {**_rep(st, 0, 0)["rlkit"], "phases": {"rollout_s": st, "update_s": 0.01, "step_s": st}}
    s = vs_trl.summarize(case, streamed, stream_chunks=2)
    assert s["rlkit_stream_step_s"] == pytest.approx(0.10) and s["stream_chunks"] == 2
    assert s["stream_ratio"] == pytest.approx(0.5) and s["stream_over_floor"] == pytest.approx(2.0)
    assert "| 0.200 | 0.200 | 0.050 | 1.00 | 4.00 | 0.100 (2) | 0.50 | 2.00 |" in vs_trl.format_table([s])
    assert "| small | text, streamed (2) | 0.100 | - | 0.010 (-) |" in vs_trl.format_phases([s])

    broken = [_rep(0.1, 0.2, 0.05)]
    broken[0]["trl"] = {"error": "exit 1", "log_tail": "boom"}
    s = vs_trl.summarize(case, broken)
    assert s["trl_step_s"] is None and s["ratio"] is None and "rep0:trl" in s["errors"]
    assert "| - |" in vs_trl.format_table([s])

    sweep = [{"tokens": 64, **_rep(0.1, 0, 0)["rlkit"]}, {"tokens": 256, "error": "exit 1"}]
    text = vs_trl.format_sweep(sweep)
    assert "| 64 | 0.100 | 0.050 |" in text and "| 256 | error: exit 1 |" in text


def test_actor_processes_are_labelled(vs_trl):
    from peak_rss import actor_key  # benchmarks/peak_rss.py (the vs_trl fixture puts benchmarks/ on sys.path)

    assert actor_key("ray::PolicyRank.train_step") == "PolicyWorker"  # the GRPO driver's policy ranks
    assert actor_key("ray::PolicyWorker") == "PolicyWorker"
    assert actor_key("ray::EngineActor.generate") == "EngineActor"
    assert actor_key("ray::EarlyEngineActor.generate") == "EngineActor"  # started early: the same actor
    assert actor_key("ray::EarlyPolicyRank.train_step") == "PolicyWorker"
    assert actor_key("ray::IDLE") == "" and actor_key("python") == ""
