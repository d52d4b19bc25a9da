"""The hybrid-vs-deep-only ablation of MiniCPM-V 4.5, as one driver: `rlkit ablation --config FILE`.

    cold start (both formats) ──► GRPO deep-only  (modes.deep_ratio = 1)   ──► held-out eval in both modes
                              └─► GRPO hybrid     (modes.deep_ratio = 0.5) ──► held-out eval in both modes
    ──► ablation.json, ablation.md (table), ablation.png (held-out score against cumulative sampled tokens)

The config file is a GRPO config (every key of `rlkit grpo`, shared by both runs) plus an `ablation:` section
(`AblationSection` below). Both runs start from the same cold-start checkpoint with the same seed, so they see
the same prompts in the same order and make the same number of updates; they differ only in the deep ratio.
The held-out curve is evaluated every `ablation.eval.every` steps, and at step 0 (the cold-start policy, shared).

Held-out evaluation: each run evaluates itself in the loop (`trainer.eval_every`, `rlkit.drivers.evaluate`) when the
held-out rows come from `data.source`; for another source (`ablation.eval.source`) the runs save a checkpoint
every `every` steps and `rlkit.drivers.ablation_eval.checkpoint_curve` evaluates them afterwards with the same
`evaluate_modes`. `_held_out_curve` is the only switch.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import time

from rlkit.config import ColdStartSection, ConfigError, GRPOConfig, _build, check_ranges, dump_config, load_tree, to_dict
from rlkit.drivers.cold_start import cold_rows as checked_cold_rows
from rlkit.drivers.cold_start import load_rows
from rlkit.drivers.cold_start import run_cold_start
from rlkit.records import DEEP, FAST, MODES


@dataclasses.dataclass
class EvalSection:
    source: str = ""  # held-out data, like data.source (empty: data.source)
    split: str = "test"  # held-out split of the eval source (its prompts must not occur in the training rows)
    limit: int = 300  # held-out rows evaluated (0: the whole split)
    every: int = 25  # evaluate every N GRPO steps (and at step 0 and after the last step)
    modes: list = dataclasses.field(default_factory=lambda: [FAST, DEEP])  # modes each policy is evaluated in
    max_tokens: int = 0  # greedy answer budget (0: rollout.max_tokens)
    reward: str = "exact_match"  # registered reward used as the held-out score (its mean over rows)


@dataclasses.dataclass
class AblationSection:
    hybrid_deep_ratio: float = 0.5  # modes.deep_ratio of the hybrid run
    deep_only_ratio: float = 1.0  # modes.deep_ratio of the deep-only run
    seeds: list = dataclasses.field(default_factory=list)  # run the whole ablation once per seed (sets seed and model.seed) into output_dir/seed_<s> and compare over seeds (rlkit/drivers/ablation_seeds.py); empty: once, with `seed`
    cold_start: ColdStartSection = dataclasses.field(default_factory=ColdStartSection)
    eval: EvalSection = dataclasses.field(default_factory=EvalSection)


RUNS = ("deep_only", "hybrid")


def load_ablation_config(path=None, overrides: list[str] | None = None) -> tuple[GRPOConfig, AblationSection]:
    """(GRPO config shared by both runs, ablation section) from a YAML file and dotted overrides
    (`ablation.cold_start.steps=100`, `trainer.lr=1e-4`); errors name the key."""
    tree = load_tree(path, overrides)
    section = tree.pop("ablation", None) or {}
    grpo = _build(GRPOConfig, tree, "")
    abl = _build(AblationSection, section, "ablation.")
    check_ablation(grpo, abl)
    return grpo, abl


def check_ablation(grpo: GRPOConfig, abl: AblationSection) -> None:
    from rlkit.run.checks import check_grpo, check_modes

    check_grpo(grpo)
    if grpo.cold_start.steps:  # both runs start from the one cold start of `ablation.cold_start`
        raise ConfigError("config key 'cold_start.steps': the ablation's cold start is 'ablation.cold_start' "
                          "(one for both runs); move the section there")
    check_ranges(abl, "ablation.")  # numeric ranges (rlkit/config_ranges.py)
    check_modes("ablation.cold_start.modes", abl.cold_start.modes)
    check_modes("ablation.eval.modes", abl.eval.modes)
    if (abl.eval.source or grpo.data.source) == grpo.data.source and abl.eval.split == grpo.data.split:
        raise ConfigError(f"config key 'ablation.eval.split': {abl.eval.split!r} is the training split (data.split)")
    from rewards.registry import available_rewards

    if len(set(abl.seeds)) != len(abl.seeds) or not all(isinstance(s, int) for s in abl.seeds):
        raise ConfigError(f"config key 'ablation.seeds': {abl.seeds!r}; use a list of distinct integers")
    if abl.eval.reward not in available_rewards():
        raise ConfigError(f"config key 'ablation.eval.reward': unknown reward {abl.eval.reward!r}")


# ----------------------------------------------------------------------------------------------- driver
def run_ablation(grpo: GRPOConfig, abl: AblationSection) -> dict:
    """Cold start once, GRPO deep-only and hybrid from it, held-out curves; writes the report. Returns it."""
    from rewards.registry import get_reward
    from rlkit.run.build import load_prompt_data

    if abl.seeds:  # one ablation per seed, then the comparison over seeds
        from rlkit.drivers.ablation_seeds import run_seeds

        return run_seeds(grpo, abl, run_ablation)
    t_all = time.perf_counter()
    check_ablation(grpo, abl)
    out = pathlib.Path(grpo.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    dump_config(grpo, out / "grpo_config.yaml")
    (out / "ablation_config.json").write_text(json.dumps(to_dict(abl), indent=1))

    train = [dict(r) for r in load_prompt_data(grpo)]
    ev, cs = abl.eval, abl.cold_start
    held_rows = load_rows(grpo, ev.source, ev.split, ev.limit)
    if {r["prompt"] for r in held_rows} & {r["prompt"] for r in train}:
        raise ConfigError(f"config key 'ablation.eval.split': the held-out rows ({ev.source or grpo.data.source}, "
                          f"{ev.split!r}) share prompts with the training rows")
    cold_rows = checked_cold_rows(grpo, cs, train, prefix="ablation.cold_start.") if cs.steps else []
    max_tokens = ev.max_tokens or grpo.rollout.max_tokens
    score_fn = get_reward(ev.reward)

    t = time.perf_counter()
    start_model = _cold_start(grpo, cs, cold_rows, train, out)
    t_cold = time.perf_counter() - t

    runs: dict[str, dict] = {}
    evaluator = _Evaluator(start_model, held_rows, ev, score_fn, max_tokens, grpo)
    try:
        t = time.perf_counter()
        start_record = evaluator.evaluate_start()
        t_eval_start = time.perf_counter() - t
        for name, ratio in (("deep_only", abl.deep_only_ratio), ("hybrid", abl.hybrid_deep_ratio)):
            runs[name] = _run_arm(name, ratio, grpo, ev, start_model, out, evaluator, start_record)
    finally:
        evaluator.close()
    result = {"source": grpo.data.source, "seed": grpo.seed, "max_steps": grpo.max_steps,
              "prompts_per_step": grpo.trainer.prompts_per_step, "group_size": grpo.rollout.n,
              "held_out": {"split": ev.split, "n": len(held_rows), "reward": ev.reward, "max_tokens": max_tokens,
                           "rows_sha256": _rows_digest(held_rows)},
              "cold_start": {"steps": abl.cold_start.steps, "wall_s": t_cold, "checkpoint": start_model},
              "eval_start_wall_s": t_eval_start, "runs": runs, "wall_s": time.perf_counter() - t_all}
    write_report(result, out)
    return result


def _rows_digest(rows: list[dict]) -> str:
    """sha256 of the rows' prompts and answers: the same held-out rows give the same digest."""
    import hashlib

    return hashlib.sha256(json.dumps([[r["prompt"], str(r.get("answer"))] for r in rows]).encode()).hexdigest()


def _cold_start(grpo: GRPOConfig, cs: ColdStartSection, cold_rows: list[dict], train: list[dict],
                out: pathlib.Path) -> str:
    """The checkpoint both runs start from (rlkit/drivers/cold_start.py), in `out/cold_start`."""
    return run_cold_start(grpo, cs, cold_rows, train, out, who="rlkit ablation")


def _run_arm(name: str, ratio: float, grpo: GRPOConfig, ev: EvalSection, start_model: str, out: pathlib.Path,
             evaluator, start_record: dict) -> dict:
    from rlkit.drivers.grpo import run_grpo

    cfg = dataclasses.replace(
        grpo, output_dir=str(out / name),
        model=dataclasses.replace(grpo.model, path=start_model),
        modes=dataclasses.replace(grpo.modes, deep_ratio=ratio),
    )
    # In-loop evaluation reads data.source's eval split: used unless the held-out rows come from another
    # source, which only the checkpoint curve can evaluate.
    in_run = ev.source in ("", grpo.data.source)
    if in_run:
        cfg = dataclasses.replace(cfg, trainer=dataclasses.replace(
            cfg.trainer, eval_every=ev.every, eval_modes=list(ev.modes), accuracy_reward=ev.reward),
            data=dataclasses.replace(cfg.data, eval_split=ev.split, eval_limit=ev.limit))
    else:
        cfg = dataclasses.replace(cfg, logging=dataclasses.replace(cfg.logging, save_every=ev.every, keep_checkpoints=0))
    moved = fresh_run_dir(cfg.output_dir)
    if moved:
        print(f"rlkit ablation: the previous {name} run was moved to {moved}")
    print(f"rlkit ablation: {name} (modes.deep_ratio={ratio}), {cfg.max_steps} GRPO steps -> {cfg.output_dir}")
    t = time.perf_counter()
    summary = run_grpo(cfg)
    wall = time.perf_counter() - t
    t = time.perf_counter()
    curve = _held_out_curve(pathlib.Path(cfg.output_dir), in_run, evaluator, start_record)
    t_curve = time.perf_counter() - t
    metrics = read_jsonl(pathlib.Path(cfg.output_dir) / "metrics.jsonl")
    steps = [m for m in metrics if "reward/mean" in m]
    return {"deep_ratio": ratio, "steps": summary.get("step"), "checkpoint": summary.get("checkpoint"),
            "tokens_sampled_total": _tokens(steps[-1]) if steps else 0, "wall_s": wall,
            "eval_wall_s": t_curve, "curve": curve, "final": final_scores(curve),
            "train": {mode: {k: _mean([m.get(f"mode/{mode}/{k}") for m in steps])
                             for k in ("reward_mean", "tokens_mean", "share")} for mode in MODES}}


def fresh_run_dir(path) -> pathlib.Path | None:
    """Make `path` free for a new GRPO run: an existing one (whose metrics.jsonl a new run would append to) is
    renamed to `<name>.previous-<n>`, never deleted. Returns the new name of the moved folder, if any."""
    path = pathlib.Path(path)
    if not path.exists():
        return None
    n = 1
    while path.with_name(f"{path.name}.previous-{n}").exists():
        n += 1
    target = path.with_name(f"{path.name}.previous-{n}")
    path.rename(target)
    return target


def _held_out_curve(run_dir: pathlib.Path, in_run: bool, evaluator, start_record: dict) -> list[dict]:
    """The run's eval records, step 0 first: from metrics.jsonl when the run evaluated itself, else (rlkit.drivers.ablation_eval)
    from its checkpoints."""
    if in_run:
        curve = curve_from_metrics(run_dir / "metrics.jsonl")
        return curve if curve and curve[0]["step"] == 0 else [start_record] + curve
    return evaluator.checkpoint_curve(run_dir, start_record)


class _Evaluator:
    """One greedy vLLM engine in this process for every held-out evaluation of the ablation (weights are
    swapped in place), created on first use."""

    def __init__(self, model_path: str, rows, ev: EvalSection, score_fn, max_tokens: int, grpo: GRPOConfig):
        self.model_path, self.rows, self.ev, self.score_fn = model_path, rows, ev, score_fn
        self.max_tokens, self.grpo, self.engine = max_tokens, grpo, None
        from rlkit.models.loading import load_processor

        self.processor = load_processor(model_path)

    def _engine(self):
        if self.engine is None:
            from rlkit.run.build import local_engine

            self.engine = local_engine(self.grpo.rollout, self.grpo.seed, self.model_path)
        return self.engine

    def _evaluate_modes(self):
        from rlkit.drivers.ablation_eval import prompt_rows, reward_rows_score_fn
        from rlkit.drivers.evaluate import evaluate_modes

        return evaluate_modes(self._engine(), self.processor, prompt_rows(self.rows), modes=list(self.ev.modes),
                              score_fn=reward_rows_score_fn(self.score_fn), max_tokens=self.max_tokens,
                              system_prompt=self.grpo.data.system_prompt)

    def evaluate_start(self) -> dict:
        from rlkit.drivers.ablation_eval import eval_record

        return eval_record(0, 0, self._evaluate_modes())

    def checkpoint_curve(self, run_dir: pathlib.Path, start_record: dict) -> list[dict]:
        from rlkit.drivers.ablation_eval import checkpoint_curve

        return checkpoint_curve(run_dir, self._engine(), self.processor, self.rows, modes=list(self.ev.modes),
                                score_fn=self.score_fn, max_tokens=self.max_tokens,
                                system_prompt=self.grpo.data.system_prompt, start=start_record)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None


# ----------------------------------------------------------------------------------------------- report
def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines() if line.strip()]


def _tokens(rec: dict) -> int:
    return int(rec.get("tokens_sampled_total", rec.get("tokens/sampled_total", 0)) or 0)


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def curve_from_metrics(path) -> list[dict]:
    """The eval records (`eval/{mode}/accuracy` ...) of a metrics.jsonl, in step order, with
    `tokens_sampled_total` (read from `tokens/sampled_total` when that is the name used)."""
    out = []
    for rec in read_jsonl(path):
        if any(k.startswith("eval/") and k.endswith("/accuracy") for k in rec):
            out.append({"step": rec["step"], "tokens_sampled_total": _tokens(rec),
                        **{k: v for k, v in rec.items() if k.startswith("eval/")}})
    return sorted(out, key=lambda r: r["step"])


def final_scores(curve: list[dict]) -> dict:
    """{mode: {"accuracy", "tokens_mean"}} of the last record of a curve."""
    last = curve[-1] if curve else {}
    return {mode: {"accuracy": last.get(f"eval/{mode}/accuracy"), "tokens_mean": last.get(f"eval/{mode}/tokens_mean")}
            for mode in MODES if f"eval/{mode}/accuracy" in last}


def tokens_to_reach(curve: list[dict], mode: str, target: float) -> int | None:
    """Cumulative sampled tokens at the first eval point whose `mode` accuracy is >= target (None: never)."""
    for rec in curve:
        acc = rec.get(f"eval/{mode}/accuracy")
        if acc is not None and acc >= target - 1e-12:
            return rec["tokens_sampled_total"]
    return None


# The "tokens to reach deep-only's score" line uses a share of deep-only's deep-mode gain, not its final score
# itself: near the ceiling a single eval point's noise (binomial s.e. ~0.01-0.03) decides which run "reaches"
# an exact value first.
REACH_FRACTION = 0.9


def _fmt(v, spec=".3f") -> str:
    return "n/a" if v is None else format(v, spec)


def report_table(result: dict) -> str:
    """The markdown table of the ablation (score per mode, tokens, wall time) and the matched-score line."""
    runs = result["runs"]
    lines = ["| run | deep ratio | GRPO steps | held-out fast | held-out deep | fast tokens/answer | deep tokens/answer "
             "| sampled tokens (total) | GRPO wall time |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    first = next(iter(runs.values()))["curve"][0] if runs else {}
    if first.get("step") == 0:
        lines.append(f"| cold start | - | 0 | {_fmt(first.get('eval/fast/accuracy'))} | "
                     f"{_fmt(first.get('eval/deep/accuracy'))} | {_fmt(first.get('eval/fast/tokens_mean'), '.1f')} | "
                     f"{_fmt(first.get('eval/deep/tokens_mean'), '.1f')} | 0 | - |")
    for name, r in runs.items():
        f = r["final"]
        lines.append(f"| {name} | {r['deep_ratio']:g} | {r['steps']} | {_fmt(f.get(FAST, {}).get('accuracy'))} | "
                     f"{_fmt(f.get(DEEP, {}).get('accuracy'))} | {_fmt(f.get(FAST, {}).get('tokens_mean'), '.1f')} | "
                     f"{_fmt(f.get(DEEP, {}).get('tokens_mean'), '.1f')} | {r['tokens_sampled_total']:,} | "
                     f"{r['wall_s']:.0f} s |")
    lines.append("")
    if "deep_only" in runs and "hybrid" in runs:
        d, h = runs["deep_only"], runs["hybrid"]
        lines.append(f"Sampled tokens, hybrid / deep-only: {h['tokens_sampled_total'] / max(1, d['tokens_sampled_total']):.2f} "
                     "(same prompts, same number of updates).")
        end, start = d["final"].get(DEEP, {}).get("accuracy"), d["curve"][0].get(f"eval/{DEEP}/accuracy")
        if end is not None and start is not None:
            target = start + REACH_FRACTION * (end - start)
            td, th = tokens_to_reach(d["curve"], DEEP, target), tokens_to_reach(h["curve"], DEEP, target)
            reached = (f"hybrid after {th:,} ({th / max(1, td):.2f} of deep-only's)" if th is not None
                       else "hybrid at no evaluated point")
            lines.append(f"Deep-mode target = {REACH_FRACTION:.0%} of deep-only's gain ({start:.3f} -> {end:.3f}): "
                         f"{target:.3f}; first reached by deep-only after {td:,} sampled tokens, {reached}.")
    return "\n".join(lines) + "\n"


def write_plot(result: dict, path) -> None:
    """Held-out score against cumulative sampled tokens, one panel per evaluated mode, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    modes = [m for m in MODES if any(f"eval/{m}/accuracy" in rec for r in runs.values() for rec in r["curve"])]
    fig, axes = plt.subplots(1, len(modes), figsize=(5.5 * len(modes), 4), squeeze=False)
    styles = {"deep_only": ("tab:red", "o"), "hybrid": ("tab:blue", "s")}
    for ax, mode in zip(axes[0], modes):
        for name, r in runs.items():
            pts = [(rec["tokens_sampled_total"], rec[f"eval/{mode}/accuracy"]) for rec in r["curve"]
                   if rec.get(f"eval/{mode}/accuracy") is not None]
            color, marker = styles.get(name, (None, "^"))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=color, markersize=4,
                    label=f"{name} (deep ratio {r['deep_ratio']:g})")
        ax.set_title(f"held-out score, {mode} mode")
        ax.set_xlabel("cumulative sampled tokens (training)")
        ax.set_ylabel(f"held-out {result.get('held_out', {}).get('reward', 'score')}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"hybrid vs deep-only GRPO on {result.get('source', '?')} "
                 f"(n={result.get('held_out', {}).get('n', '?')} held-out)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(result: dict, out_dir) -> dict[str, pathlib.Path]:
    """ablation.json, ablation.md (the table) and ablation.png in `out_dir`."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "ablation.json", "md": out / "ablation.md", "png": out / "ablation.png"}
    paths["json"].write_text(json.dumps(result, indent=1))
    held = result.get("held_out", {})
    head = (f"# Hybrid vs deep-only GRPO ({result.get('source', '?')}, seed {result.get('seed', '?')})\n\n"
            f"Held-out: {held.get('n', '?')} rows of split {held.get('split', '?')!r}, greedy, score = mean "
            f"{held.get('reward', '?')}. Total wall time {result.get('wall_s', 0):.0f} s.\n\n")
    paths["md"].write_text(head + report_table(result) + "\n![held-out score against sampled tokens](ablation.png)\n")
    write_plot(result, paths["png"])
    return paths
