"""The floor under the start-up: how soon can *anything* built on vLLM (and on Ray) have its first rollout back?

    python benchmarks/startup_floor.py [--reps 3] [--out FILE.json]

`benchmarks/startup.py` times rlkit's whole GRPO start. This script times only the part no driver can avoid: a
fresh process that starts one vLLM engine for the README's tiny vision-language model and generates one reply,
with nothing else on the machine's cores (no policy, no processor in the driver, no reward worker, no data). Arms,
alternating within each repetition so that they see the same load:

    plain     one Python process: import vLLM (collector paused, as rlkit's actors import it), build the engine
              (`rollout.vllm_engine.VLLMEngine` with the example's options), generate. No Ray.
    ray       one Python process: start a local Ray as rlkit does (`orchestration.init_ray`), start one engine actor
              the way rlkit's early start does (a bare `warm_start.EarlyEngineActor` that imports with the collector
              paused, then `construct`), generate through it.

Times are seconds since the process was launched; `cpu_s` is the CPU seconds of the process and all its
descendants by the first reply. Whatever these print is a lower bound for rlkit's start-up (docs/performance.md,
"The floor"): the GRPO command also starts the policy, loads the processor and the data, on the same two cores.
"""
from __future__ import annotations

import time

_T_PYTHON = time.time()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import pathlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE / "benchmarks"))
from startup import alternate, median_mark, print_cpu_and_load, tree_cpu_seconds  # noqa: E402

ARMS = ("plain", "ray")
CONFIG = HERE / "examples" / "easy_vqa" / "grpo.yaml"


def _request():
    from PIL import Image

    from rollout import RolloutRequest, SamplingConfig

    prompt = ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What shape is this?<|im_end|>\n"
              "<|im_start|>assistant\n")
    return [RolloutRequest(prompt, images=[Image.new("RGB", (64, 64), "red")])], SamplingConfig(max_tokens=8, n=1)


def child(arm: str, t0: float, model: str, options: dict, trace: str) -> int:
    """The measured process: one engine, one generation; marks written to `trace`. `options`: the engine's
    keywords, worked out by the parent (no config parsing is timed here)."""
    marks = {"python": _T_PYTHON - t0}
    if arm == "plain":
        from rlkit.distributed.warm_start import engine_imports, model_classes, warm

        warm(engine_imports("vllm", *model_classes(model)))
        marks["imports"] = time.time() - t0
        from rollout import make_engine

        engine = make_engine("vllm", model_path=model, **options)
        marks["engine"] = time.time() - t0
        requests, sampling = _request()
        engine.generate(requests, sampling)
    else:
        import ray

        from rlkit.distributed import orchestration

        orchestration.init_ray(num_cpus=2)  # first: importing warm_start imports torch (its actor classes)
        marks["ray_init"] = time.time() - t0
        from rlkit.distributed.warm_start import EarlyEngineActor, model_classes

        actor = orchestration.spawn(EarlyEngineActor, "vllm", *model_classes(model), num_cpus=1,
                                    env={"RLKIT_ACTOR_NAME": "EngineActor"})
        actor.construct.remote("vllm", model_path=model, **options)
        ray.get(actor.__ray_ready__.remote())
        marks["engine"] = time.time() - t0
        requests, sampling = _request()
        ray.get(actor.generate.remote(requests, sampling))
    marks["rollout"] = time.time() - t0
    marks["cpu_s"] = tree_cpu_seconds(os.getpid())
    marks["cpu_by_process"] = tree_cpu_seconds(os.getpid(), by_process=True)
    pathlib.Path(trace).write_text(json.dumps(marks))
    if arm == "ray":
        orchestration.shutdown()
    return 0


def tiny_model(workdir: str) -> tuple[str, dict]:
    """The README example's tiny vision-language model, built (or copied from rlkit's cache) as `prepare` does,
    and the engine options its config gives."""
    from rlkit.config import GRPOConfig, load_config
    from rlkit.run.build import engine_options, load_prompt_data, resolve_model, row_texts

    cfg = load_config(GRPOConfig, CONFIG)
    ds = load_prompt_data(cfg)
    return resolve_model(cfg.model, pathlib.Path(workdir), lambda: row_texts(ds)), engine_options(cfg.rollout, cfg.seed)


def run_once(arm: str, model: str, options: dict, timeout_s: float) -> dict:
    trace = tempfile.mktemp(suffix=".json")
    env = dict(os.environ, PYTHONPATH=str(HERE), OMP_NUM_THREADS="1", VLLM_ENABLE_V1_MULTIPROCESSING="0")
    load = os.getloadavg()[0]
    t0 = time.time()
    cmd = [sys.executable, __file__, "--child", arm, "--t0", repr(t0), "--model", model, "--options", json.dumps(options),
           "--trace", trace]
    p = subprocess.run(cmd, cwd=HERE, env=env, capture_output=True, text=True, timeout=timeout_s)
    if p.returncode != 0 or not os.path.exists(trace):
        raise RuntimeError(f"{arm} run failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    return {"marks": json.loads(pathlib.Path(trace).read_text()), "load1": load}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default="")
    ap.add_argument("--timeout-s", type=float, default=300)
    ap.add_argument("--child", choices=ARMS)
    ap.add_argument("--t0", type=float)
    ap.add_argument("--model", default="")  # (the child's)
    ap.add_argument("--options", default="{}")
    ap.add_argument("--trace", default="")
    args = ap.parse_args(argv)
    if args.child:
        return child(args.child, args.t0, args.model, json.loads(args.options), args.trace)
    workdir = tempfile.mkdtemp(prefix="rlkit-floor-")
    model, options = tiny_model(workdir)
    runs = alternate(list(ARMS), lambda arm: run_once(arm, model, options, args.timeout_s), args.reps)

    def med(arm, key):
        return median_mark(runs, arm, key)

    print("\n" + "seconds since the command (median)".ljust(36) + "".join(f"{a:>10}" for a in ARMS))
    for key in ("python", "imports", "ray_init", "engine", "rollout", "cpu_s"):
        print(key.ljust(36) + "".join(f"{med(a, key):>10.1f}" for a in ARMS))
    print_cpu_and_load(runs, 36)
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(
            {"arms": list(ARMS), "cpus": os.cpu_count(), "model": model,
             "median": {a: {k: med(a, k) for k in ("engine", "rollout", "cpu_s")} for a in ARMS}, "runs": runs},
            indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
