"""The start-up benchmarks' plumbing (benchmarks/startup.py, benchmarks/startup_floor.py): CPU seconds split by
process add up to the tree's total and name the processes; the floor benchmark runs both arms end to end (slow)."""
import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from startup import process_label, tree_cpu_seconds  # noqa: E402


def test_cpu_by_process_names_the_processes_and_adds_up(tmp_path):
    script = tmp_path / "busy_probe.py"
    script.write_text("import sys, time\nt = time.process_time()\nwhile time.process_time() - t < 0.3:\n    pass\n"
                      "print('busy', flush=True)\nsys.stdin.read()\n")
    child = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "busy"  # its 0.3 CPU-s are spent
        assert process_label(child.pid) == f"{os.path.basename(sys.executable)} busy_probe.py"
        parts = tree_cpu_seconds(os.getpid(), by_process=True)
        total = tree_cpu_seconds(os.getpid())
        assert parts[f"{os.path.basename(sys.executable)} busy_probe.py"] >= 0.25, parts
        assert "driver" in parts and parts["driver"] > 0, parts
        # each part is rounded to 0.01; the total keeps clock ticks; this process runs on between the two calls
        assert abs(sum(parts.values()) - total) <= 0.01 * len(parts) + 0.5, (parts, total)
    finally:
        child.stdin.close()
        child.wait(timeout=30)


def test_ray_process_titles_are_labelled_by_actor_class():
    """Ray names an actor's process "ray::ClassName.method" (or "ray::ClassName"); the label keeps the class."""
    title = "ray::EarlyEngineActor.construct"
    child = subprocess.Popen(["bash", "-c", f"exec -a '{title}' sleep 30"])
    try:
        deadline = time.time() + 10
        while time.time() < deadline and process_label(child.pid) != "ray::EarlyEngineActor":
            time.sleep(0.05)
        assert process_label(child.pid) == "ray::EarlyEngineActor"
    finally:
        child.kill()
        child.wait()


def _one_repetition(script: str, tmp_path) -> tuple[dict, str]:
    """benchmarks/<script> with --reps 1: its JSON and what it printed."""
    out = tmp_path / "result.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--reps", "1", "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(out.read_text()), r.stdout


@pytest.mark.slow
def test_floor_benchmark_runs_both_arms(tmp_path):
    """One repetition of each arm: a vLLM engine in a plain process and in a Ray actor, one reply each."""
    result, stdout = _one_repetition("startup_floor.py", tmp_path)
    for arm in ("plain", "ray"):
        (run,) = result["runs"][arm]
        marks = run["marks"]
        assert 0 < marks["engine"] <= marks["rollout"] and marks["cpu_s"] > 1, (arm, marks)
    assert "ray::EarlyEngineActor" in result["runs"]["ray"][0]["marks"]["cpu_by_process"]
    assert "first rollout" in stdout and "CPU s" in stdout


@pytest.mark.slow
def test_startup_benchmark_marks_every_phase_in_order(tmp_path):
    """One run of the README's first command to its first update, every phase marked, in the order they happen."""
    (run,) = _one_repetition("startup.py", tmp_path)[0]["runs"]["this"]
    m = run["marks"]
    order = ["imports", "prepare", "ray_init", "rollout", "update"]
    assert [m[k] for k in order] == sorted(m[k] for k in order), m
    assert m["policy"] <= m["rollout"] and m["engine"] <= m["rollout"], m
    assert m["cpu_s"] <= m["cpu_s_update"] and "driver" in m["cpu_by_process"], m
    assert any(k.startswith("ray::") for k in m["cpu_by_process"]), m["cpu_by_process"]
