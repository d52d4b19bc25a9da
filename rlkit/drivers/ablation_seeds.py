"""`rlkit ablation` over several seeds (`ablation.seeds`): one full ablation per seed, then the comparison of
docs/ablation.md's pre-registered design (rlkit.drivers.ablation_stats), a table and a plot with the seeds' spread.

    output_dir/seed_<s>/      one ordinary ablation per seed (cold start, deep_only/, hybrid/, ablation.json)
    output_dir/ablation_seeds.json, ablation_seeds.md, ablation_seeds.png

A seed sets `seed` (data sample, prompt order, mode draws, sampling) and `model.seed` (a tiny model's
initialisation); everything else, the held-out rows included, is the config's.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time

from rlkit.drivers.ablation_stats import REACH_FRACTION, summarize, verdict

RUNS = ("deep_only", "hybrid")


def run_seeds(grpo, abl, run_one) -> dict:
    """Run `run_one(grpo_s, abl_s)` (rlkit.drivers.ablation.run_ablation) once per seed of `abl.seeds` into
    output_dir/seed_<s>, then write the multi-seed report in output_dir. Returns the report's data."""
    out = pathlib.Path(grpo.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_all, cpu0 = time.perf_counter(), _cpu_seconds()
    per_seed, timing = {}, {}
    for s in abl.seeds:
        g = dataclasses.replace(grpo, seed=s, output_dir=str(out / f"seed_{s}"),
                                model=dataclasses.replace(grpo.model, seed=s))
        t, load0 = time.perf_counter(), os.getloadavg()
        print(f"rlkit ablation: seed {s} -> {g.output_dir} (load average {load0[0]:.1f})")
        per_seed[s] = run_one(g, dataclasses.replace(abl, seeds=[]))
        timing[s] = {"wall_s": time.perf_counter() - t, "loadavg_start": load0, "loadavg_end": os.getloadavg()}
    result = {"seeds": list(abl.seeds), "reach_fraction": REACH_FRACTION,
              "summary": summarize({s: {r: per_seed[s]["runs"][r]["curve"] for r in RUNS} for s in per_seed}),
              "per_seed": {s: _seed_digest(r) for s, r in per_seed.items()}, "timing": timing,
              "wall_s": time.perf_counter() - t_all, "cpu_s_this_process_and_children": _cpu_seconds() - cpu0,
              "held_out": next(iter(per_seed.values()))["held_out"] if per_seed else {},
              "source": grpo.data.source, "max_steps": grpo.max_steps}
    result["verdict"] = verdict(result["summary"].get("deep", {}).get("ratio"))
    write_seeds_report(result, out, {s: r["runs"] for s, r in per_seed.items()})
    return result


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _seed_digest(r: dict) -> dict:
    return {"cold_start_wall_s": r["cold_start"]["wall_s"], "wall_s": r["wall_s"],
            **{name: {"tokens_sampled_total": run["tokens_sampled_total"], "final": run["final"], "wall_s": run["wall_s"],
                      "curve": run["curve"]} for name, run in r["runs"].items()}}


def _f(v, spec=".3f") -> str:
    return "n/a" if v is None else format(v, spec)


def _tok(v) -> str:
    return "never" if v is None else f"{v / 1000:,.1f}k"


def seeds_table(result: dict) -> str:
    """The markdown tables: per seed and mode, start / finals / target / tokens to reach / ratio; then the
    intervals over seeds and the verdict."""
    lines = []
    for mode, m in result["summary"].items():
        lines += [f"**{mode} mode** (target = start + {result['reach_fraction']:g} x deep-only's gain)", "",
                  "| seed | cold start | deep-only final | hybrid final | hybrid - deep-only | target | "
                  "deep-only tokens to target | hybrid tokens to target | ratio hybrid / deep-only |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for s, c in m["seeds"].items():
            if not c["defined"]:
                ratio = "undefined (deep-only did not gain)"
            elif c["censored"]:
                ratio = f"> {c['ratio_above']:.2f} (hybrid never reached)"
            else:
                ratio = f"{c['ratio']:.2f}"
            lines.append(f"| {s} | {c['start']:.3f} | {c['deep_only_final']:.3f} | {c['hybrid_final']:.3f} | "
                         f"{c['final_diff']:+.3f} | {_f(c.get('target'))} | {_tok(c.get('deep_only_tokens'))} | "
                         f"{_tok(c.get('hybrid_tokens'))} | {ratio} |")
        fd, ri = m["final_diff"], m["ratio"]
        lines.append("")
        if fd:
            lines.append(f"Final {mode} score, hybrid - deep-only (same steps): mean {fd['mean']:+.3f}, 95% t interval "
                         f"[{fd['low']:+.3f}, {fd['high']:+.3f}] over {fd['n']} seeds (t = {fd['t']}).")
        if ri:
            lines.append(f"Tokens to reach the {mode} target, hybrid / deep-only: geometric mean {ri['geo_mean']:.2f}, "
                         f"95% interval [{ri['low']:.2f}, {ri['high']:.2f}] (t on log ratios, {ri['n']} seeds).")
        else:
            lines.append(f"Tokens to reach the {mode} target: no interval (a seed is censored or undefined).")
        lines.append("")
    lines += ["| seed | deep-only sampled tokens | hybrid sampled tokens | hybrid / deep-only | seed wall time |",
              "| --- | --- | --- | --- | --- |"]
    for s, d in result["per_seed"].items():
        a, b = d["deep_only"]["tokens_sampled_total"], d["hybrid"]["tokens_sampled_total"]
        lines.append(f"| {s} | {a:,} | {b:,} | {b / max(1, a):.2f} | {result['timing'][s]['wall_s']:.0f} s |")
    lines += ["", f"Verdict (deep mode, pre-registered rule): {result['verdict']}.", ""]
    return "\n".join(lines)


def write_seeds_plot(runs_by_seed: dict, path, title: str = "") -> None:
    """Held-out score against cumulative sampled tokens, one panel per mode: each seed thin, the mean over seeds
    at each eval step thick (x = the seeds' mean tokens), the band = the seeds' min-max at that step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rlkit.drivers.ablation_stats import points

    modes = [m for m in ("fast", "deep") if any(points(r[n]["curve"], m) for r in runs_by_seed.values() for n in r)]
    fig, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 4.2), squeeze=False)
    colors = {"deep_only": "tab:red", "hybrid": "tab:blue"}
    for ax, mode in zip(axes[0], modes):
        for name in RUNS:
            curves = [points(r[name]["curve"], mode) for r in runs_by_seed.values() if name in r]
            for c in curves:
                ax.plot([p[0] for p in c], [p[1] for p in c], color=colors[name], alpha=0.3, lw=0.8)
            k = min(len(c) for c in curves)
            xs = [sum(c[i][0] for c in curves) / len(curves) for i in range(k)]
            ys = [sum(c[i][1] for c in curves) / len(curves) for i in range(k)]
            ax.fill_between(xs, [min(c[i][1] for c in curves) for i in range(k)],
                            [max(c[i][1] for c in curves) for i in range(k)], color=colors[name], alpha=0.12)
            ax.plot(xs, ys, color=colors[name], lw=2, marker="o", markersize=3,
                    label=f"{name}: mean of {len(curves)} seeds (band: min-max)")
        ax.set_title(f"held-out score, {mode} mode")
        ax.set_xlabel("cumulative sampled tokens (training)")
        ax.set_ylabel("held-out exact match")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_seeds_report(result: dict, out_dir, runs_by_seed: dict) -> dict[str, pathlib.Path]:
    out = pathlib.Path(out_dir)
    paths = {"json": out / "ablation_seeds.json", "md": out / "ablation_seeds.md", "png": out / "ablation_seeds.png"}
    paths["json"].write_text(json.dumps(result, indent=1, default=str))
    held = result.get("held_out", {})
    head = (f"# Hybrid vs deep-only GRPO, {len(result['seeds'])} seeds ({result.get('source', '?')}, "
            f"{result.get('max_steps', '?')} steps)\n\nHeld-out: {held.get('n', '?')} rows of split "
            f"{held.get('split', '?')!r}, greedy, score = mean {held.get('reward', '?')}. Total wall time "
            f"{result.get('wall_s', 0):.0f} s.\n\n")
    paths["md"].write_text(head + seeds_table(result) + "\n![held-out score against sampled tokens](ablation_seeds.png)\n")
    write_seeds_plot(runs_by_seed, paths["png"],
                     f"hybrid vs deep-only, {len(result['seeds'])} seeds, n={held.get('n', '?')} held-out")
    return paths
