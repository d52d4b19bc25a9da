"""rlkit's GRPO step against TRL's GRPOTrainer on the same work, and against the floor (bare vLLM generation plus
a bare forward+backward+AdamW of the same sequences).

    python benchmarks/vs_trl.py --size small|realistic --model text|vlm [--reps 2] [--steps 3] [--warmup 1]
                                [--trl-engine auto|vllm|transformers] [--tokens 64,128,256] [--out FILE]
                                [--stream-chunks K] [--max-staleness K]

Sizes (P prompts x n completions x T new tokens, one optimizer step per rollout batch):
- small: 1 x 4 x 16 on the default tiny models (rlkit.models.loading.build_tiny);
- realistic: 16 x 8 x 128; text: a Qwen3-style model, hidden 256, 4 layers, a ~4k-token BPE vocabulary; vlm: the
  default tiny Qwen2.5-VL at the same batch shape.

Each side runs in its own child process (this script with `--side`), so peak resident memory is per process and
start-up is excluded from the step times: rlkit's step time is the median `time/step_s` of `rlkit.drivers.grpo.run_grpo`'s
metrics.jsonl after `--warmup` steps; TRL's is the median time between `on_step_begin` and `on_step_end` of its
optimizer steps after the same warm-up (its generation happens inside the step). Repetitions alternate the order
(A/B, B/A, ...), and the floor runs in every repetition, so all three see the same machine load. Random tiny models
almost never emit EOS, so every completion is T tokens long on both sides (checked: tokens per step are printed).

`--max-staleness K` adds the asynchronous side "rlkit_async" (rollout.max_staleness = K: the engines collect the
next batches while the policy trains; docs/async.md), run like the others in every repetition.

`--tokens 64,128,256` adds an rlkit-only sweep of the completion length (step time, phase times and peak RSS per
process). One torch thread per process throughout (rlkit.runtime_env).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import random
import statistics
import subprocess
import sys
import tempfile
import time

from rlkit.runtime_env import apply_defaults  # noqa: E402  (before torch/vLLM/Ray)

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from peak_rss import PeakRSS  # noqa: E402
from vs_trl_tables import format_phases, format_sweep, format_table, render  # noqa: E402,F401

apply_defaults()

SIZES = {  # prompts, n, max new tokens
    "small": (1, 4, 16),
    "realistic": (16, 8, 128),
}
MICRO_BATCH = 64  # sequences per forward/backward pass on every side (rlkit's default micro_batch_size)
LR = 1e-4


@dataclasses.dataclass
class Case:
    size: str
    model: str
    prompts: int
    n: int
    tokens: int

    @property
    def sequences(self) -> int:
        return self.prompts * self.n


def trl_batching(sequences: int, micro_batch: int = MICRO_BATCH) -> dict:
    """TRL settings for one generation of `sequences` completions and one optimizer step over all of them."""
    bs = min(sequences, micro_batch)
    if sequences % bs:
        raise ValueError(f"{sequences} sequences do not split into micro-batches of {bs}")
    ga = sequences // bs
    return {"per_device_train_batch_size": bs, "gradient_accumulation_steps": ga, "steps_per_generation": ga,
            "num_iterations": 1}


# ------------------------------------------------------------------------------------------------ model / data
def _synthetic_words(count: int = 30000, seed: int = 0) -> list[str]:
    """Pseudo-words, so a BPE trained on them reaches a few thousand tokens (the task text alone gives ~400)."""
    r = random.Random(seed)
    syl = [c + v + e for c in "bcdfghjklmnprstvwz" for v in "aeiou" for e in ("", "n", "r", "s")]
    words = ["".join(r.choice(syl) for _ in range(r.randint(1, 3))) for _ in range(count)]
    return [" ".join(words[i:i + 12]) for i in range(0, count, 12)]


def build_model(case: Case, out_dir: str) -> str:
    from rlkit.data import load_source
    from rlkit.models.loading import build_tiny

    ds = load_source(_source(case), "train", seed=0)
    texts = list(ds["prompt"]) + [str(a) for a in ds["answer"]]
    if case.size == "realistic" and case.model == "text":
        return str(build_tiny("text", out_dir, texts=texts + _synthetic_words(), vocab_size=4096, hidden_size=256,
                              num_layers=4, intermediate_size=768, num_heads=4, num_kv_heads=2))
    return str(build_tiny(case.model, out_dir, texts=texts))


def _source(case: Case) -> str:
    return "easy_vqa" if case.model == "vlm" else "arithmetic"


def prompt_rows(case: Case, count: int) -> list:
    """The first `count` rows of the data source, in rlkit's PromptStream order (shuffled with seed 0)."""
    from rlkit.data import PromptStream, load_source, open_image, to_row

    ds = load_source(_source(case), "train", seed=0)
    stream = PromptStream(ds, seed=0, shuffle=True)
    rows = []
    for idx, raw in stream.take(count):
        row = to_row(idx, raw)
        row.images = [open_image(im, idx) for im in row.images]
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------ sides
def side_rlkit(case: Case, model_dir: str, steps: int, warmup: int, stream_chunks: int = 1,
               max_staleness: int = 0) -> dict:
    from rlkit.config import GRPOConfig, load_config
    from rlkit.drivers.grpo import run_grpo

    out_dir = tempfile.mkdtemp(prefix="rlkit-vs-trl-")
    cfg = load_config(GRPOConfig, None, [
        f"output_dir={out_dir}", f"max_steps={warmup + steps}", f"model.path={model_dir}",
        f"data.source={_source(case)}", "rollout.engine=vllm", f"rollout.n={case.n}",
        f"rollout.max_tokens={case.tokens}", "rollout.temperature=1.0", f"trainer.prompts_per_step={case.prompts}",
        f"trainer.micro_batch_size={MICRO_BATCH}", f"trainer.lr={LR}", "logging.progress=false",
        "logging.log_samples=false", "rewards=[{name: exact_match}]", f"rollout.stream_chunks={stream_chunks}",
        f"rollout.max_staleness={max_staleness}",
    ])
    with PeakRSS() as mem:
        run_grpo(cfg)
    rows = [json.loads(line) for line in pathlib.Path(out_dir, "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "time/step_s" in r][warmup:]
    med = lambda k: statistics.median(r[k] for r in rows)  # noqa: E731
    phases = {k.split("/")[1]: med(k) for k in rows[0] if k.startswith("time/")}
    tokens = med("tokens/sampled")
    return {"step_s": med("time/step_s"), "steps": [r["time/step_s"] for r in rows], "phases": phases,
            "tokens_per_step": tokens, "rollout_tokens_per_s": tokens / phases["rollout_s"],
            "step_tokens_per_s": tokens / phases["step_s"], "peak_rss_mib": mem.mib()}


def side_trl(case: Case, model_dir: str, steps: int, warmup: int, engine: str) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rewards import get_reward

    torch.set_num_threads(1)
    rows = prompt_rows(case, case.prompts * (warmup + steps))
    data = {"prompt": [[{"role": "user", "content": r.prompt}] for r in rows], "answer": [r.answer for r in rows]}
    if case.model == "vlm":
        data["image"] = [r.images[0] for r in rows]
    ds = Dataset.from_dict(data)
    batching = trl_batching(case.sequences)
    common = dict(output_dir=tempfile.mkdtemp(prefix="trl-vs-rlkit-"), max_steps=warmup + steps,
                  num_generations=case.n, max_completion_length=case.tokens, temperature=1.0, learning_rate=LR,
                  beta=0.0, report_to=[], logging_steps=1, save_strategy="no", use_cpu=True, bf16=False,
                  disable_tqdm=True, seed=0, chat_template_kwargs={"enable_thinking": False},
                  dataloader_num_workers=0, **batching)

    class Timer(TrainerCallback):
        def __init__(self):
            self.t0, self.times = 0.0, []

        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.t0)

    modes = ["vllm", "transformers"] if engine == "auto" else [engine]
    errors = {}
    with PeakRSS() as mem:
        for mode in modes:
            extra = dict(use_vllm=True, vllm_mode="colocate", vllm_gpu_memory_utilization=0.3,
                         vllm_max_model_length=1024) if mode == "vllm" else dict(use_vllm=False)
            timer = Timer()
            try:
                cfg = GRPOConfig(**common, **extra)
                trainer = GRPOTrainer(model=model_dir, reward_funcs=[get_reward("exact_match")], args=cfg,
                                      train_dataset=ds, callbacks=[timer])
                gen = {"s": 0.0}
                for attr in ("_generate_single_turn",):  # generation time, for rollout tokens/s
                    orig = getattr(trainer, attr)

                    def timed(*a, _orig=orig, **k):
                        t0 = time.perf_counter()
                        try:
                            return _orig(*a, **k)
                        finally:
                            gen["s"] += time.perf_counter() - t0
                            gen.setdefault("per_call", []).append(time.perf_counter() - t0)

                    setattr(trainer, attr, timed)
                trainer.train()
                break
            except Exception as e:  # noqa: BLE001  (vLLM colocate is not expected to work on CPU)
                errors[mode] = f"{type(e).__name__}: {str(e)[:300]}"
                print(f"vs_trl: TRL with {mode} failed: {errors[mode]}", file=sys.stderr)
        else:
            raise RuntimeError(f"TRL failed in every mode: {errors}")
    logs = [h for h in trainer.state.log_history if "completions/mean_length" in h]
    times = timer.times[warmup:]
    gens = gen.get("per_call", [])[warmup:]
    tokens = statistics.median(h["completions/mean_length"] for h in logs[warmup:]) * case.sequences
    return {"step_s": statistics.median(times), "steps": times, "mode": mode, "failed_modes": errors,
            "settings": {**batching, "generation_batch_size": cfg.generation_batch_size,
                         "num_generations": cfg.num_generations, "max_completion_length": cfg.max_completion_length,
                         "loss_type": cfg.loss_type, "beta": cfg.beta, "use_vllm": cfg.use_vllm},
            "generation_s": statistics.median(gens) if gens else None, "tokens_per_step": tokens,
            "rollout_tokens_per_s": tokens / statistics.median(gens) if gens else None,
            "step_tokens_per_s": tokens / statistics.median(times), "peak_rss_mib": mem.mib()}


def side_floor(case: Case, model_dir: str, steps: int, warmup: int) -> dict:
    """Bare vLLM generation of the same requests, then a bare forward+backward+AdamW over the sequences."""
    import torch

    from rlkit.policy.batching import build_batch, encode_prompt
    from rlkit.models.loading import load_policy, tokenizer_of
    from rlkit.step.modes import render_prompt
    from rlkit.records import TrainItem
    from rollout import RolloutRequest, SamplingConfig
    from rollout.vllm_engine import VLLMEngine

    torch.set_num_threads(1)
    torch.manual_seed(0)
    rows = prompt_rows(case, case.prompts * (warmup + steps))
    with PeakRSS() as mem:
        engine = VLLMEngine(model_dir, max_model_len=1024, kv_cache_gib=1.0, seed=0)
        model, processor, is_vlm = load_policy(model_dir)
        tok = tokenizer_of(processor)
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
        gen_t, train_t, tokens = [], [], []
        for step in range(warmup + steps):
            batch_rows = rows[step * case.prompts:(step + 1) * case.prompts]
            texts = [render_prompt(processor, r, "fast") for r in batch_rows]
            t0 = time.perf_counter()
            outs = engine.generate([RolloutRequest(prompt=t, images=r.images, n=case.n) for t, r in zip(texts, batch_rows)],
                                   SamplingConfig(temperature=1.0, max_tokens=case.tokens, n=case.n, seed=step))
            t1 = time.perf_counter()
            items = [TrainItem(t, r.images, list(c.token_ids), 0.0, []) for t, r, g in zip(texts, batch_rows, outs)
                     for c in g]
            enc = [encode_prompt(processor if is_vlm else None, tok, t, r.images) for t, r in zip(texts, batch_rows)]
            prompts = [e for e in enc for _ in range(case.n)]
            opt.zero_grad(set_to_none=True)
            total = sum(len(it.completion_ids) for it in items)
            for s in range(0, len(items), MICRO_BATCH):
                b = build_batch(items[s:s + MICRO_BATCH], prompts[s:s + MICRO_BATCH], tok.pad_token_id)
                kw = {k: b[k] for k in ("pixel_values", "image_grid_thw", "mm_token_type_ids") if k in b}
                out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], logits_to_keep=b["Tc"] + 1,
                            use_cache=False, **kw)
                logp = torch.log_softmax(out.logits[:, :-1].float(), -1).gather(-1, b["completion_ids"].unsqueeze(-1))
                loss = -(logp.squeeze(-1) * b["mask"]).sum() / total
                loss.backward()
            opt.step()
            t2 = time.perf_counter()
            if step >= warmup:
                gen_t.append(t1 - t0)
                train_t.append(t2 - t1)
                tokens.append(total)
        engine.close()
    g, t, tok_med = statistics.median(gen_t), statistics.median(train_t), statistics.median(tokens)
    return {"step_s": g + t, "generation_s": g, "train_s": t, "tokens_per_step": tok_med,
            "rollout_tokens_per_s": tok_med / g, "step_tokens_per_s": tok_med / (g + t), "peak_rss_mib": mem.mib()}


# ------------------------------------------------------------------------------------------------ driver
def run_side(side: str, case: Case, model_dir: str, args, tokens: int | None = None) -> dict:
    """This script as a child process (`--side`): its own process, so its own peak memory and start-up.
    Side "rlkit_stream" is rlkit with rollout.stream_chunks = --stream-chunks; "rlkit_async" with
    rollout.max_staleness = --max-staleness."""
    out = tempfile.mktemp(prefix=f"vs_trl-{side}-", suffix=".json")
    chunks = args.stream_chunks if side == "rlkit_stream" else 1
    staleness = args.max_staleness if side == "rlkit_async" else 0
    cmd = [sys.executable, __file__, "--side", "rlkit" if side.startswith("rlkit") else side, "--model-dir", model_dir,
           "--side-out", out, "--size", case.size, "--model", case.model, "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--trl-engine", args.trl_engine, "--side-tokens", str(tokens or case.tokens),
           "--side-chunks", str(chunks), "--side-staleness", str(staleness)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-3000:]
        return {"error": f"exit {proc.returncode}", "log_tail": tail, "wall_s": time.perf_counter() - t0}
    result = json.loads(pathlib.Path(out).read_text())
    result["wall_s"] = time.perf_counter() - t0
    return result


def summarize(case: Case, reps: list[dict], stream_chunks: int = 0, max_staleness: int = 0) -> dict:
    """One entry per case: medians over the repetitions of each side's median step time."""
    def med(side, key):
        vals = [r[side][key] for r in reps if side in r and "error" not in r[side] and r[side].get(key) is not None]
        return statistics.median(vals) if vals else None

    def peak(side):
        out: dict[str, float] = {}
        for r in reps:
            for k, v in (r.get(side, {}).get("peak_rss_mib") or {}).items():
                out[k] = max(out.get(k, 0.0), v)
        return out

    rl, trl, floor = med("rlkit", "step_s"), med("trl", "step_s"), med("floor", "step_s")
    st, asy = med("rlkit_stream", "step_s"), med("rlkit_async", "step_s")
    sides = ("rlkit", "rlkit_stream", "rlkit_async", "trl", "floor")
    trl_modes = sorted({r["trl"].get("mode") for r in reps if "trl" in r and "error" not in r["trl"]})
    return {
        "size": case.size, "model": case.model, "prompts": case.prompts, "n": case.n, "max_tokens": case.tokens,
        "rlkit_step_s": rl, "trl_step_s": trl, "floor_s": floor,
        "ratio": rl / trl if rl and trl else None, "rlkit_over_floor": rl / floor if rl and floor else None,
        "stream_chunks": stream_chunks if st else None, "rlkit_stream_step_s": st,
        "stream_ratio": st / trl if st and trl else None, "stream_over_floor": st / floor if st and floor else None,
        "max_staleness": max_staleness if asy else None, "rlkit_async_step_s": asy,
        "async_ratio": asy / trl if asy and trl else None, "async_speedup": rl / asy if asy and rl else None,
        "trl_mode": ",".join(m for m in trl_modes if m),
        "rollout_tokens_per_s": {s: med(s, "rollout_tokens_per_s") for s in sides},
        "step_tokens_per_s": {s: med(s, "step_tokens_per_s") for s in sides},
        "tokens_per_step": {s: med(s, "tokens_per_step") for s in sides},
        "peak_rss_mib": {s: peak(s) for s in sides},
        "rlkit_phases": _median_dicts([r["rlkit"]["phases"] for r in reps if "phases" in r.get("rlkit", {})]),
        "rlkit_stream_phases": _median_dicts([r["rlkit_stream"]["phases"] for r in reps
                                              if "phases" in r.get("rlkit_stream", {})]),
        "rlkit_async_phases": _median_dicts([r["rlkit_async"]["phases"] for r in reps
                                             if "phases" in r.get("rlkit_async", {})]),
        "floor_parts": {k: med("floor", k) for k in ("generation_s", "train_s")},
        "trl_settings": next((r["trl"]["settings"] for r in reps if "settings" in r.get("trl", {})), None),
        "errors": {f"rep{i}:{s}": r[s]["error"] + "\n" + r[s].get("log_tail", "")[-800:]
                   for i, r in enumerate(reps) for s in r if "error" in r[s]},
        "reps": reps,
    }


def _median_dicts(ds: list[dict]) -> dict:
    return {k: statistics.median(d[k] for d in ds) for k in ds[0]} if ds else {}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=tuple(SIZES), default="small")
    ap.add_argument("--model", choices=("text", "vlm"), default="text")
    ap.add_argument("--reps", type=int, default=2, help="A/B repetitions (the order alternates)")
    ap.add_argument("--steps", type=int, default=3, help="measured steps per run")
    ap.add_argument("--warmup", type=int, default=1, help="steps skipped per run")
    ap.add_argument("--trl-engine", choices=("auto", "vllm", "transformers"), default="auto",
                    help="auto: try TRL's vLLM colocate mode, fall back to transformers generate")
    ap.add_argument("--tokens", default="", help="rlkit-only completion-length sweep, e.g. 64,128,256 (realistic)")
    ap.add_argument("--stream-chunks", type=int, default=0,
                    help="also run rlkit with rollout.stream_chunks=K (K > 1), reported as 'streamed'")
    ap.add_argument("--max-staleness", type=int, default=0,
                    help="also run rlkit with rollout.max_staleness=K (K > 0), reported as 'async'")
    ap.add_argument("--skip", default="", help="comma list of sides to skip: rlkit,trl,floor")
    ap.add_argument("--out", default="")
    ap.add_argument("--render", default="", help="only print the tables of earlier --out files (comma list)")
    # child-process mode
    ap.add_argument("--side", choices=("rlkit", "trl", "floor"), default=None, help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", default="", help=argparse.SUPPRESS)
    ap.add_argument("--side-out", default="", help=argparse.SUPPRESS)
    ap.add_argument("--side-tokens", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--side-chunks", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--side-staleness", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.tokens:
        args.token_list = [int(t) for t in args.tokens.split(",") if t.strip()]
        if not args.token_list or min(args.token_list) < 1:
            ap.error("--tokens takes positive integers, e.g. 64,128,256")
    else:
        args.token_list = []
    if args.reps < 1 or args.steps < 1 or args.warmup < 0:
        ap.error("--reps and --steps must be >= 1, --warmup >= 0")
    return args


def case_of(args) -> Case:
    p, n, t = SIZES[args.size]
    return Case(args.size, args.model, p, n, args.side_tokens or t)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.render:
        print(render([f for f in args.render.split(",") if f]))
        return 0
    case = case_of(args)
    if args.side:
        if args.side == "trl":
            res = side_trl(case, args.model_dir, args.steps, args.warmup, args.trl_engine)
        elif args.side == "rlkit":
            res = side_rlkit(case, args.model_dir, args.steps, args.warmup, args.side_chunks, args.side_staleness)
        else:
            res = side_floor(case, args.model_dir, args.steps, args.warmup)
        pathlib.Path(args.side_out).write_text(json.dumps(res))
        return 0

    model_dir = build_model(case, tempfile.mkdtemp(prefix="vs_trl-model-"))
    print(f"vs_trl: {case.size} {case.model}: {case.prompts} prompts x {case.n} completions x {case.tokens} tokens, "
          f"one optimizer step per rollout batch, micro-batch {MICRO_BATCH}, lr {LR}, 1 torch thread per process; "
          f"{args.reps} reps x ({args.warmup} warm-up + {args.steps} measured steps); model {model_dir}")
    print(f"vs_trl: TRL settings: {trl_batching(case.sequences)}, num_generations={case.n}, "
          f"max_completion_length={case.tokens}, beta=0, engine={args.trl_engine}", flush=True)
    skip = {s for s in args.skip.split(",") if s}
    trl_probe = {}
    if args.trl_engine == "auto" and "trl" not in skip:
        # TRL's vLLM colocate mode, tried once in its own process; the A/B runs use whichever mode works
        args.trl_engine = "vllm"
        trl_probe = run_side("trl", case, model_dir, args)
        ok = "step_s" in trl_probe
        args.trl_engine = "vllm" if ok else "transformers"
        print(f"vs_trl: TRL vLLM colocate mode: {'works' if ok else 'failed, using transformers generate'}"
              + ("" if ok else ": " + trl_probe.get("log_tail", "")[-600:]), flush=True)
    sides = [s for s in ("rlkit", "trl") + (("rlkit_stream",) if args.stream_chunks > 1 else ())
             + (("rlkit_async",) if args.max_staleness > 0 else ()) if s not in skip]
    reps = []
    for rep in range(args.reps):
        order = sides if rep % 2 == 0 else sides[::-1]  # A/B, then B/A
        r = {}
        for side in order + ([] if "floor" in skip else ["floor"]):
            r[side] = run_side(side, case, model_dir, args)
            res = r[side]
            msg = (f"step {res['step_s']:.3f} s (wall {res['wall_s']:.0f} s)" if "step_s" in res
                   else f"ERROR {res['error']}\n" + res.get("log_tail", "")[-1500:])
            print(f"vs_trl: rep {rep} {side}: {msg}", flush=True)
        reps.append(r)
    out = pathlib.Path(args.out or f"benchmarks/results/vs_trl-{case.size}-{case.model}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"case": summarize(case, reps, args.stream_chunks, args.max_staleness), "sweep": [],
              "trl_vllm_probe": trl_probe}
    out.write_text(json.dumps(result, indent=1))  # written again after each sweep row: a long run keeps its results
    for t in args.token_list:
        row = run_side("rlkit", dataclasses.replace(case, tokens=t), model_dir, args, tokens=t)
        row["tokens"] = t
        result["sweep"].append(row)
        out.write_text(json.dumps(result, indent=1))
        print(f"vs_trl: sweep T={t}: " + (f"{row['step_s']:.3f} s" if "step_s" in row else row["error"]), flush=True)
    print()
    print(format_table([result["case"]]))
    print()
    print(format_phases([result["case"]]))
    if result["sweep"]:
        print()
        print(format_sweep(result["sweep"]))
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
