"""The console: third-party output goes to the run's log folder (errors still show), the progress bar starts
with the first step, and each command ends with a readable summary (rlkit/console.py)."""
import json
import logging
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

from rlkit import console

ROOT = pathlib.Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent("""
    import logging, os, sys
    from rlkit.console import capture_process_output
    path = capture_process_output(sys.argv[1], "Actor", verbose=sys.argv[2] == "1")
    print("INFO 12-03 [core.py:1] engine started")           # what vLLM prints at INFO
    os.write(2, b"[W1203 utils.cpp:68] Warning: NUMA binding\\n")  # C++ straight to file descriptor 2
    logging.getLogger("vllm").warning("a vLLM warning")
    logging.getLogger("some.lib").error("a real ERROR")
    print(path)
""")


def _child(tmp_path, verbose: bool):
    return subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), "1" if verbose else "0"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_actor_output_goes_to_the_log_file_and_only_errors_to_the_console(tmp_path):
    r = _child(tmp_path, verbose=False)
    assert r.returncode == 0, r.stderr
    (log,) = tmp_path.glob("Actor-*.log")
    text = log.read_text()
    for line in ("engine started", "NUMA binding", "a vLLM warning", "a real ERROR", str(log)):
        assert line in text
    console_out = r.stdout + r.stderr
    assert "a real ERROR" in console_out
    assert "engine started" not in console_out and "NUMA" not in console_out and "vLLM warning" not in console_out


def test_verbose_actor_output_reaches_both(tmp_path):
    r = _child(tmp_path, verbose=True)
    assert r.returncode == 0, r.stderr
    (log,) = tmp_path.glob("Actor-*.log")
    for line in ("engine started", "NUMA binding", "a vLLM warning", "a real ERROR"):
        assert line in log.read_text() and line in r.stdout + r.stderr


def test_driver_library_records_go_to_the_file(tmp_path, capfd):
    lib = logging.getLogger("transformers")
    own = logging.StreamHandler(sys.stderr)  # a library's own console handler, as transformers has
    lib.addHandler(own)
    try:
        log_dir = console.start_run_log(tmp_path, "grpo")
        assert os.environ[console.LOG_DIR_ENV] == str(log_dir.resolve())
        lib.warning("a transformers warning")
        lib.error("a transformers error")
        console.stop_run_log()
    finally:
        lib.removeHandler(own)
    err = capfd.readouterr().err
    assert "a transformers error" in err and "a transformers warning" not in err
    text = (log_dir / "driver.log").read_text()
    assert "a transformers warning" in text and "a transformers error" in text
    assert console.LOG_DIR_ENV not in os.environ


def test_a_library_imported_after_the_log_opens_shows_no_progress_bar(tmp_path):
    """datasets reads its switch when it is imported: a local data file loaded after the run log opened printed
    its "Generating train split" bar on the console (in a fresh process: this one may have datasets already)."""
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "q", "answer": "a"}\n')
    code = (f"from rlkit import console; console.start_run_log({str(tmp_path / 'run')!r}, 'grpo'); import datasets; "
            f"datasets.load_dataset('json', data_files={str(data)!r}, cache_dir={str(tmp_path / 'cache')!r})")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Generating" not in r.stderr + r.stdout and "examples/s" not in r.stderr + r.stdout, r.stderr[-2000:]


def test_an_empty_log_folder_is_removed(tmp_path):
    log_dir = console.start_run_log(tmp_path, "grpo")
    console.stop_run_log()  # e.g. a config error before anything was logged
    assert not log_dir.exists() and not (tmp_path / "logs").exists() and tmp_path.exists()
    log_dir = console.start_run_log(tmp_path / "new" / "run", "dpo")  # an output_dir that did not exist
    console.stop_run_log()
    assert not (tmp_path / "new").exists()


def test_grpo_summary_names_scores_checkpoint_logs_and_time(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 0, "eval/fast/accuracy": 0.25}) + "\n")
    lines = console.summary_lines("grpo", {"step": 20, "reward/mean": 0.5, "eval/fast/accuracy": 0.75,
                                           "eval/fast/tokens_mean": 3.0, "time/startup_s": 14.2,
                                           "checkpoint": str(tmp_path / "checkpoints/step_20")},
                                  tmp_path, 95.0, tmp_path / "logs/x")
    assert lines[0] == "rlkit grpo: done: 20 steps in 1 min 35 s (start-up 14.2 s)"
    text = "\n".join(lines)
    assert re.search(r"reward \(last step\) +0\.5000", text)
    assert re.search(r"held-out fast accuracy +0\.7500  \(step 0: 0\.2500\)", text)
    assert re.search(r"checkpoint +" + re.escape(str(tmp_path / "checkpoints/step_20")), text)
    assert str(tmp_path / "metrics.jsonl") in text and str(tmp_path / "logs/x") in text
    assert "{" not in text  # no raw dict


def test_dpo_and_rlaifv_summaries():
    dpo = "\n".join(console.summary_lines("dpo", {"step": 4, "eval/loss": 0.69, "eval/rewards/accuracies": 0.5,
                                                   "checkpoint": "c"}, "/nonexistent", 3.0))
    assert "rlkit dpo: done: 4 steps in 3.0 s" in dpo and "held-out reward accuracy" in dpo and "0.6900" in dpo
    rl = "\n".join(console.summary_lines("rlaifv", {"round": 2, "pairs/kept": 12, "model": "m"}, "/nonexistent", 7200))
    assert "rlkit rlaifv: done: 2 round(s) in 2 h 00 min" in rl and "pairs kept (last round)  12" in rl


def test_grpo_cli_console_is_quiet_and_ends_with_a_summary(tmp_path):
    """The README's first command, two steps: no vLLM/Ray INFO or WARNING lines and no actor output on the
    console (they are in the log folder), the bar starts after the actors are ready, a summary at the end."""
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "rlkit.cli", "grpo", "--config", "examples/easy_vqa/grpo.yaml",
                        f"output_dir={out}", "max_steps=2", "trainer.prompts_per_step=2", "rollout.n=4"],
                       cwd=ROOT, capture_output=True, text=True, timeout=900,
                       # vLLM at INFO whatever an earlier test left in this process's environment (an in-process
                       # `rlkit ablation` sets VLLM_LOGGING_LEVEL=ERROR): the INFO lines must reach the log file
                       env={**os.environ, "VLLM_LOGGING_LEVEL": "INFO"})
    assert r.returncode == 0, r.stderr[-3000:]
    lines = (r.stdout + r.stderr).replace("\r", "\n").splitlines()
    noisy = [l for l in lines if re.search(r"\b(INFO|WARNING|Warning)\b|\((EngineActor|PolicyRank) pid=", l)]
    assert not noisy, noisy[:5]
    (log_dir,) = (out / "logs").iterdir()
    (engine_log,) = log_dir.glob("EngineActor-*.log")
    assert "INFO" in engine_log.read_text() and "vllm" in engine_log.read_text().lower()
    # the bar's clock starts at the first step: it appears after the "ready" line and its elapsed time at the
    # end is the steps' alone, under the start-up time (which it used to include)
    ready = next(i for i, l in enumerate(lines) if "ready;" in l and l.startswith("rlkit:"))
    first_bar = next(i for i, l in enumerate(lines) if l.startswith("grpo:"))
    assert ready < first_bar
    m = re.search(r"\| 2/2 \[(\d+):(\d+)<", [l for l in lines if l.startswith("grpo:")][-1])
    bar_elapsed = int(m.group(1)) * 60 + int(m.group(2))
    out_lines = r.stdout.splitlines()  # rlkit's own step lines (e.g. nothing to learn) may come first
    summary = out_lines[next(i for i, l in enumerate(out_lines) if l.startswith("rlkit grpo: done: ")):]
    assert summary[0].startswith("rlkit grpo: done: 2 steps in ") and "start-up" in summary[0]
    m = re.search(r"start-up (?:(\d+) min )?([\d.]+) s\)", summary[0])
    startup = int(m.group(1) or 0) * 60 + float(m.group(2))
    assert bar_elapsed < startup, (bar_elapsed, summary[0])
    assert any(re.match(r"  checkpoint +.*checkpoints/step_2$", l) for l in summary)
    assert any(re.match(rf"  logs +{re.escape(str(log_dir))}$", l) for l in summary)


@pytest.mark.parametrize("sig, how, code", [("SIGINT", "interrupted", 130), ("SIGTERM", "stopped by SIGTERM", 143)])
def test_ctrl_c_in_a_run_is_one_line_naming_its_newest_checkpoint(tmp_path, sig, how, code):
    """Ctrl-C mid-training used to end in a KeyboardInterrupt traceback (exit 1) saying nothing of the run; SIGTERM
    (a scheduler's stop) in exit 15 and "grpo stopped; its logs are in ...". Now both, after the driver's own
    clean-up: one line naming the newest intact checkpoint `--resume` continues from and the logs, exit 130 / 143;
    and the run resumes from that checkpoint (Ctrl-C case)."""
    import signal
    import time

    out = tmp_path / "run"
    args = [sys.executable, "-m", "rlkit.cli", "grpo", f"output_dir={out}", "model.path=tiny:text",
            "data.source=arithmetic", "rollout.n=2", "rollout.max_tokens=4", "trainer.prompts_per_step=2",
            "rollout.engine=hf", "logging.save_every=1"]
    p = subprocess.Popen([*args, "max_steps=500"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # two steps done (metrics.jsonl only grows; a checkpoint folder is pruned two steps after it is written,
        # and a poll that missed step_2's ~3 s once waited the whole deadline in CI)
        deadline, metrics = time.time() + 600, out / "metrics.jsonl"
        while time.time() < deadline and p.poll() is None and not (
                metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
            time.sleep(0.2)
        p.send_signal(getattr(signal, sig))
        stdout, stderr = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == code, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    m = re.fullmatch(rf"rlkit: grpo {how}; newest checkpoint (\S+/checkpoints/step_(\d+)); --resume continues "
                     r"from it; logs in (\S+)", last)
    assert m and pathlib.Path(m.group(1)).is_dir() and pathlib.Path(m.group(3)).is_dir(), last
    if sig != "SIGINT":
        return
    step = int(m.group(2))
    r = subprocess.run([*args, f"max_steps={step + 1}", "--resume"], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == step + 1 and steps.count(step + 1) == 1, steps


def test_ctrl_c_before_a_run_and_the_run_dir_advice(tmp_path, monkeypatch, capsys):
    """Outside a run (imports, config): "rlkit: interrupted", exit 130 (SIGTERM: "stopped by SIGTERM", 143). In a run
    with no checkpoint, the advice follows what the folder holds: nothing written, or a run to move aside."""
    import signal
    import time

    from rlkit import cli

    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_main", interrupted)
    assert cli.main([]) == 130
    assert capsys.readouterr().err == "rlkit: interrupted\n"

    def terminated(argv):
        os.kill(os.getpid(), signal.SIGTERM)  # the handler `main` installed raises in this (the main) thread
        time.sleep(5)
        return 0

    monkeypatch.setattr(cli, "_main", terminated)
    before = signal.getsignal(signal.SIGTERM)
    try:
        assert cli.main([]) == 143
    finally:
        signal.signal(signal.SIGTERM, before)  # pytest's own again
    assert capsys.readouterr().err == "rlkit: stopped by SIGTERM\n"
    empty = console.Interrupted("grpo", tmp_path / "never", None)
    assert cli.interrupted_line(empty) == "grpo interrupted; nothing written yet: the same command starts it again"
    (tmp_path / "held").mkdir()
    (tmp_path / "held" / "metrics.jsonl").write_text("")
    held = console.Interrupted("dpo", tmp_path / "held", tmp_path / "held" / "logs")
    assert cli.interrupted_line(held) == ("dpo interrupted; no checkpoint written yet: start again with --overwrite "
                                          f"(moves this run aside) or a new output_dir; logs in {tmp_path}/held/logs")
