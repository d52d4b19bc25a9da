"""MiniCPM-V 4.5's RL recipe in miniature, in one command: cold start -> hybrid GRPO (rule reward + RLPR) -> RLAIF-V.

    .venv/bin/python examples/recipe/run.py --config examples/recipe/recipe.yaml            # docs/recipe.md
    .venv/bin/python examples/recipe/run.py --config examples/recipe/recipe.yaml seeds=[0] grpo.max_steps=10 \\
        cold_start.steps=20 rlaifv.rounds=1 held_out_images=40 output_dir=runs/recipe_smoke       # a quick look

Per seed (a tiny vision-language policy on easy-VQA images, CPU, offline; rows: examples/recipe/tasks.py):
0. cold start: a tiny VLM (weight seed = seed) and supervised steps on rule questions ("what color is the
   shape?" -> "red"), free questions answered in paraphrases ("It is red."), both in fast and deep format
   (`<think>` The image shows a red circle. `</think>` answer), and fast descriptions ("Describe the image.");
1. hybrid GRPO from it (`rlkit.drivers.grpo.run_grpo`, config section `grpo:`): one mode per prompt group,
   exact match on the rule rows (`answer_key: rule_answer`) plus RLPR on the free rows (`answer_key: reference`,
   pinned to deep mode): each reward gives None to the other rows;
2. RLAIF-V rounds from GRPO's checkpoint with self-feedback (`rlkit.drivers.rlaifv.run_round`, the RLAIF-V
   miniature's config and its QA labeler: the round's own policy answers the claim's attribute question);
after each stage the same held-out evaluation: accuracy in fast and in deep mode on fixed test-image questions
(rule: exact match; free: tasks.judge_free) and the hallucination rate of greedy descriptions of the same
held-out images (examples/rlaifv/hallucination.py). Each stage writes OUT/seed<S>/<stage>.json when done and a
rerun skips it (`--force STAGE` redoes that stage and the ones after it); OUT/recipe.{json,md} are rewritten
over every result present.

Why a script and not an `rlkit` subcommand: the recipe composes two example-level pieces (the hallucination
grader and the QA labeler of examples/rlaifv) and a task built for this demonstration; a subcommand would need a
config section in rlkit/config.py and those pieces moved into the library, for one fixed miniature.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
HERE = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT), str(HERE), str(ROOT / "examples" / "rlaifv")]

from rlkit.runtime_env import apply_defaults  # noqa: E402  (before torch/vLLM/Ray)

apply_defaults(TRANSFORMERS_VERBOSITY="error", HF_HUB_DISABLE_PROGRESS_BARS="1", VLLM_LOGGING_LEVEL="ERROR",
               RAY_DEDUP_LOGS="1")

import tasks as T  # noqa: E402


def rlaifv_miniature():
    """examples/rlaifv/miniature.py (its data splits, cold-start builder, rounds and description grader), loaded
    by path under one name: a plain import of `miniature` could find examples/rlpr's script of the same name."""
    name = "rlaifv_miniature"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / "rlaifv" / "miniature.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


@dataclasses.dataclass
class ColdStart:
    steps: int = 300  # supervised steps (batch_size rows each)
    lr: float = 1e-3  # AdamW rate
    batch_size: int = 32  # rows per step


@dataclasses.dataclass
class RLAIFVStage:
    rounds: int = 2  # sample -> claim-check -> pairs -> DPO rounds, each from the previous round's checkpoint
    prompts_per_round: int = 128  # training images described per round (4 samples each)
    dpo_lr: float = 5e-5  # DPO rate (the RLAIF-V miniature's follow-up rate; its design rate 5e-4 collapsed)


@dataclasses.dataclass
class Recipe:
    output_dir: str = "runs/recipe"  # everything goes under it: data/, seed<S>/, recipe.json, recipe.md
    seeds: list = dataclasses.field(default_factory=lambda: [0, 1])  # one whole recipe per seed (weights, rows' draws, GRPO, RLAIF-V)
    held_out_images: int = 300  # the first N of the fixed permutation of test images (2 questions + 1 description each)
    eval_max_tokens: int = 32  # greedy answer budget of the held-out questions (descriptions: the miniature's 24)
    free_reference: str = "word"  # RLPR's reference on free rows: "word" (red) or "sentence" (It is red., the cold start's first paraphrase)
    cold_start: ColdStart = dataclasses.field(default_factory=ColdStart)
    rlaifv: RLAIFVStage = dataclasses.field(default_factory=RLAIFVStage)


def load(path, overrides: list[str]) -> tuple[Recipe, dict]:
    """(recipe, the GRPO section's tree) from the YAML file and dotted overrides; the GRPO section is checked
    as `rlkit grpo` checks its config."""
    from rlkit.config import ConfigError, _build, load_tree

    tree = load_tree(path, overrides)
    grpo = tree.pop("grpo", None)
    if not isinstance(grpo, dict):
        raise ConfigError("config key 'grpo': the recipe needs a GRPO section (a mapping of rlkit grpo keys)")
    recipe = _build(Recipe, tree, "")
    if recipe.free_reference not in T.REFERENCES:
        raise ConfigError(f"config key 'free_reference': {recipe.free_reference!r}; use one of {', '.join(T.REFERENCES)}")
    if not recipe.seeds or len(set(recipe.seeds)) != len(recipe.seeds):
        raise ConfigError(f"config key 'seeds': {recipe.seeds!r}; use a non-empty list of distinct integers")
    grpo_config(grpo, pathlib.Path(recipe.output_dir), recipe.seeds[0], "tiny:vlm", "unused.jsonl")  # fail early
    return recipe, grpo


def grpo_config(tree: dict, sdir: pathlib.Path, seed: int, start: str, source: str):
    from rlkit.config import GRPOConfig, _build
    from rlkit.run.checks import check_grpo

    t = json.loads(json.dumps(tree))
    t.update(output_dir=str(sdir / "grpo"), seed=seed)
    t["model"] = {**t.get("model", {}), "path": start}
    t["data"] = {**t.get("data", {}), "source": source, "check_rows": 0}
    cfg = _build(GRPOConfig, t, "grpo.")
    check_grpo(cfg)
    return cfg


# ------------------------------------------------------------------------------------------------ evaluation
def evaluate(model_path: str, held: list[tuple], rows: list[dict], max_tokens: int) -> dict:
    """Held-out questions in both modes (greedy, transformers engine) and descriptions' hallucination."""
    M = rlaifv_miniature()

    from rlkit.drivers.ablation_eval import prompt_rows
    from rlkit.drivers.evaluate import evaluate_modes
    from rlkit.models.loading import load_processor
    from rollout import make_engine

    t = time.perf_counter()
    per_mode: dict[str, list] = {}

    def score_fn(prows, mode, texts, ids):
        s = T.score(rows, texts)
        per_mode[mode] = list(zip(texts, s))
        return s

    engine = make_engine("hf", model_path=model_path)
    try:
        summary = evaluate_modes(engine, load_processor(model_path), prompt_rows(rows), modes=["fast", "deep"],
                                 score_fn=score_fn, max_tokens=max_tokens)
    finally:
        engine.close()
    vqa = {m: {**T.breakdown(rows, [s for _, s in per_mode[m]]), "tokens_mean": summary[m]["tokens_mean"],
               "samples": [t for t, _ in per_mode[m][:6]]} for m in per_mode}
    t_vqa = time.perf_counter() - t
    hall = M.evaluate(model_path, held)
    return {"vqa": vqa, "hallucination": hall, "eval_s": {"vqa": t_vqa, "describe": hall["eval_s"]}}


# ------------------------------------------------------------------------------------------------ stages
def load_avg() -> float:
    return os.getloadavg()[0]


def write_json(path: pathlib.Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)


def run_seed(seed: int, recipe: Recipe, grpo_tree: dict, data: dict, force: set[str]) -> dict:
    M = rlaifv_miniature()

    from rlkit.drivers.ablation import fresh_run_dir
    from rlkit.drivers.grpo import run_grpo

    out = pathlib.Path(recipe.output_dir)
    sdir = out / f"seed{seed}"
    sdir.mkdir(parents=True, exist_ok=True)
    held = data["held"][:recipe.held_out_images]
    rows = T.held_rows(held)
    results: dict[str, dict] = {}
    todo = T.stages_to_run({s for s in T.STAGES if (sdir / f"{s}.json").exists()}, force)
    for stage in T.STAGES:
        path = sdir / f"{stage}.json"
        if stage not in todo:
            results[stage] = json.loads(path.read_text())
            print(f"recipe: seed {seed}: {stage} already done ({path})", flush=True)
            continue
        t, load0 = time.perf_counter(), load_avg()
        if stage == "cold_start":
            cs = recipe.cold_start
            M.SFT_LR, M.SFT_BATCH = cs.lr, cs.batch_size
            cold = T.cold_rows(data["train"], seed)
            texts = M.vocab_texts(data["train"]) + T.vocab_texts(cold)
            model = M.build_and_train(sdir, "cold_start", seed, cold, cs.steps, texts, seed)
            info = {"steps": cs.steps, "rows": len(cold)}
        elif stage == "grpo":
            cfg = grpo_config(grpo_tree, sdir, seed, results["cold_start"]["model"], data["grpo"])
            moved = fresh_run_dir(cfg.output_dir)
            if moved:
                print(f"recipe: the previous GRPO run was moved to {moved}")
            print(f"recipe: seed {seed}: {cfg.max_steps} hybrid GRPO steps -> {cfg.output_dir}", flush=True)
            summary = run_grpo(cfg)
            model = summary["checkpoint"]
            info = {"steps": summary.get("step"), "train": grpo_train_metrics(pathlib.Path(cfg.output_dir))}
        else:
            r = recipe.rlaifv
            M.ROUND.update(prompts_per_round=r.prompts_per_round, dpo_lr=r.dpo_lr)
            start = results["grpo"]["model"]
            cfg = M.rounds_config(sdir, seed, "self", start, start, data["describe"], r.rounds)
            M.run_rounds(cfg, "self", start, start, force=True)
            model, rounds = start, []
            truth = [json.loads(x) for x in pathlib.Path(data["describe"]).read_text().splitlines()]
            for k in range(1, r.rounds + 1):
                s = json.loads((pathlib.Path(cfg.output_dir) / f"round_{k}" / "round.json").read_text())
                model = s.get("checkpoint") or model
                rounds.append({"round": k, **M.round_diagnostics(pathlib.Path(cfg.output_dir), k, truth)})
            info = {"rounds": rounds, "labeler": "self (the round's own policy, examples/rlaifv/qa_labeler.py)"}
        wall = time.perf_counter() - t
        t = time.perf_counter()
        res = {"seed": seed, "stage": stage, "model": model, "wall_s": wall, "load_avg_1m": [load0, load_avg()],
               **info, **evaluate(model, held, rows, recipe.eval_max_tokens)}
        res["eval_wall_s"] = time.perf_counter() - t
        write_json(path, res)
        results[stage] = res
        row = T.stage_row(res)
        print(f"recipe: seed {seed}: {stage} done in {wall:.0f} s (+ eval {res['eval_wall_s']:.0f} s): held-out fast "
              f"{row['fast']:.3f}, deep {row['deep']:.3f}, CHAIRi {row['chair_i']:.3f}, words {row['words']:.1f}",
              flush=True)
    return results


def grpo_train_metrics(run_dir: pathlib.Path) -> dict:
    """First and last-5-step means of the GRPO run's reward metrics."""
    from rlkit.drivers.ablation import read_jsonl

    steps = [m for m in read_jsonl(run_dir / "metrics.jsonl") if "reward/mean" in m]
    keys = sorted(k for k in {k for m in steps for k in m} if k.startswith(("reward/", "mode/")) and k.endswith("mean"))
    mean = lambda v: (sum(x for x in v if x is not None) / max(1, sum(x is not None for x in v)))  # noqa: E731
    return {"steps": len(steps), **{f"{k}@first5": mean([m.get(k) for m in steps[:5]]) for k in keys},
            **{f"{k}@last5": mean([m.get(k) for m in steps[-5:]]) for k in keys}}


def build_data(out: pathlib.Path, reference: str = "word") -> dict:
    """The RLAIF-V miniature's image splits (train / held-out test images, fixed) and the GRPO prompt file."""
    M = rlaifv_miniature()

    d = M.build_data(out)  # writes out/data/describe.jsonl: the RLAIF-V stage's prompts
    path = out / "data" / "grpo.jsonl"
    text = "".join(json.dumps(r) + "\n" for r in T.grpo_rows(d["train"], 0, reference))
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return {"train": d["train"], "held": d["held"], "describe": d["prompts"], "grpo": str(path)}


def report(out: pathlib.Path, wall: float | None) -> str:
    results: dict[int, dict] = {}
    for p in sorted(out.glob("seed*/*.json")):
        r = json.loads(p.read_text())
        if r.get("stage") in T.STAGES:
            results.setdefault(r["seed"], {})[r["stage"]] = r
    text = ("# The recipe in one piece\n\nHeld-out: fast / deep = accuracy on the held-out questions (rule: exact "
            "match; free: tasks.judge_free); CHAIRi / CHAIRs: hallucination of greedy held-out descriptions; "
            "mean ± s.e. over seeds (sd / sqrt(S)).\n\n" + T.table(results))
    walls = {s: {k: round(v["wall_s"] + v.get("eval_wall_s", 0)) for k, v in st.items()} for s, st in results.items()}
    (out / "recipe.json").write_text(json.dumps({"results": results, "stage_wall_s": walls,
                                                 "wall_s_this_command": wall}, indent=1))
    (out / "recipe.md").write_text(text)
    print(text)
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(HERE / "recipe.yaml"))
    ap.add_argument("--force", nargs="*", default=[], choices=T.STAGES, help="redo these stages (and the later ones)")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. seeds=[0] grpo.max_steps=10")
    args = ap.parse_args(argv)
    recipe, grpo_tree = load(args.config, args.overrides)
    out = pathlib.Path(recipe.output_dir)
    t = time.perf_counter()
    if not args.report_only:
        data = build_data(out, recipe.free_reference)
        print(f"recipe: {len(data['train'])} training images, {min(recipe.held_out_images, len(data['held']))} "
              f"held-out test images", flush=True)
        for seed in recipe.seeds:
            run_seed(seed, recipe, grpo_tree, data, set(args.force))
    report(out, time.perf_counter() - t)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
