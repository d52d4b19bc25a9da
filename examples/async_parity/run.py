"""Learning parity of asynchronous GRPO (issue 19 point 4; design in docs/async.md, "Learning parity").

Per seed: the ablation's cold start (rlkit.drivers.ablation, reused when already written with the same settings),
then one GRPO run per k in --ks with `rollout.max_staleness: k` from that checkpoint, same seed, prompts and
steps; the ablation's held-out rows and grader, evaluated in the loop. Every arm writes
OUT/seed_<s>/k<k>.json when it ends; a rerun skips the arms whose JSON exists with the same settings.
At the end: OUT/parity.json, parity.md, parity.png, and with --doc the table in that markdown file between
`<!-- parity:begin -->` and `<!-- parity:end -->` (the plot copied beside it).

    PYTHONPATH=. .venv/bin/python examples/async_parity/run.py                       # seeds 0 1, k 0 1 2
    PYTHONPATH=. .venv/bin/python examples/async_parity/run.py --steps 4 --eval-every 2 --eval-limit 20 --out /tmp/p
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import shutil
import sys
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from rlkit.config import to_dict  # noqa: E402
from rlkit.drivers.ablation import _cold_start, _run_arm, load_ablation_config, read_jsonl  # noqa: E402
from rlkit.drivers.cold_start import cold_rows as checked_cold_rows  # noqa: E402
from parity_stats import async_summary, compare, parity_table, score_at, tail_mean  # noqa: E402
from rlkit.records import DEEP  # noqa: E402

MODE = DEEP  # the mode the deep-only runs train and the criterion reads


class LoadSampler:
    """The 1-minute load average every `every` seconds in a daemon thread, while a phase runs."""

    def __init__(self, every: float = 30.0):
        self.every, self.samples, self._stop = every, [os.getloadavg()[0]], threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.wait(self.every):
            self.samples.append(os.getloadavg()[0])

    def stop(self) -> dict:
        self._stop.set()
        self.samples.append(os.getloadavg()[0])
        s = self.samples
        return {"min": min(s), "max": max(s), "mean": sum(s) / len(s), "n": len(s)}


def arm_config(grpo, k: int, correction: dict, steps: int, deep_ratio: float, seed_offset: int = 0):
    alg = dataclasses.replace(grpo.algorithm, loss_opts={**grpo.algorithm.loss_opts, **correction})
    return dataclasses.replace(grpo, max_steps=steps, seed=grpo.seed + seed_offset, rollout=dataclasses.replace(grpo.rollout, max_staleness=k),
                               algorithm=alg, modes=dataclasses.replace(grpo.modes, deep_ratio=deep_ratio))


def run_seed(grpo, abl, seed: int, ks, correction: dict, steps: int, out: pathlib.Path, seed_offset: int = 0) -> dict:
    from rlkit.run.build import load_prompt_data

    g = dataclasses.replace(grpo, seed=seed, output_dir=str(out / f"seed_{seed}"),
                            model=dataclasses.replace(grpo.model, seed=seed))
    sdir = pathlib.Path(g.output_dir)
    sdir.mkdir(parents=True, exist_ok=True)
    train = [dict(r) for r in load_prompt_data(g)]
    cs = abl.cold_start
    cold_rows = checked_cold_rows(g, cs, train, prefix="ablation.cold_start.")
    t, load = time.perf_counter(), LoadSampler()
    start_model = _cold_start(g, cs, cold_rows, train, sdir)
    cold = {"wall_s": time.perf_counter() - t, "load": load.stop()}
    arms = {}
    for k in ks:
        cfg = arm_config(g, k, correction, steps, abl.deep_only_ratio, seed_offset)
        stamp = {"grpo": to_dict(cfg), "eval": to_dict(abl.eval), "start_model": start_model}
        path = sdir / f"k{k}.json"
        if path.exists():
            done = json.loads(path.read_text())
            if done.get("stamp") == json.loads(json.dumps(stamp)):
                print(f"async parity: seed {seed} k={k} already done ({path})")
                arms[k] = done
                continue
        print(f"async parity: seed {seed} k={k}, {steps} steps (load average {os.getloadavg()[0]:.1f})", flush=True)
        load, cpu0 = LoadSampler(), os.times()
        run = _run_arm(f"k{k}", abl.deep_only_ratio, cfg, abl.eval, start_model, sdir, None, None)
        cpu1 = os.times()
        run["load"] = load.stop()
        run["cpu_s_this_process"] = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
        run["async"] = async_summary(read_jsonl(sdir / f"k{k}" / "metrics.jsonl"))
        arms[k] = {"k": k, "seed": seed, "stamp": stamp, "cold_start": cold, **run}
        path.write_text(json.dumps(arms[k], indent=1))
    return arms


def load_control(path: str, seeds) -> dict:
    """{seed: the on-policy arm of a --grpo-seed-offset run} from its output folder (seeds it lacks are left out)."""
    out = {}
    for s in seeds:
        f = pathlib.Path(path) / f"seed_{s}" / "k0.json"
        if path and f.exists():
            out[s] = json.loads(f.read_text())
    return out


def control_table(per_seed: dict, control: dict, n: int) -> str:
    """Two on-policy runs from one checkpoint (GRPO seeds s and s + offset): how far apart they end."""
    from parity_stats import diff_se

    lines = ["| seed | on-policy final | on-policy, other GRPO seed | d (SE) | within 2 SE |", "| --- | --- | --- | --- | --- |"]
    for s in sorted(control):
        p0, pc = score_at(per_seed[s][0]["curve"], MODE), score_at(control[s]["curve"], MODE)
        se = diff_se(p0, pc, n)
        lines.append(f"| {s} | {p0:.3f} | {pc:.3f} (GRPO seed {control[s]['stamp']['grpo']['seed']}) | "
                     f"{pc - p0:+.3f} ({se:.3f}, {(pc - p0) / se:+.1f} SE) | {'yes' if abs(pc - p0) <= 2 * se else 'no'} |")
    return "\n".join(lines) + "\n"


def write_plot(per_seed: dict, path: pathlib.Path, control: dict | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = sorted(per_seed)
    fig, axes = plt.subplots(1, len(seeds), figsize=(5.5 * len(seeds), 4), squeeze=False)
    colors = {0: "black", 1: "tab:blue", 2: "tab:orange"}
    for ax, s in zip(axes[0], seeds):
        for k, arm in sorted(per_seed[s].items()):
            pts = [(r["step"], r[f"eval/{MODE}/accuracy"]) for r in arm["curve"] if r.get(f"eval/{MODE}/accuracy") is not None]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, color=colors.get(k),
                    label=f"k = {k}" + (" (on-policy)" if k == 0 else ""))
        if control and s in control:
            pts = [(r["step"], r[f"eval/{MODE}/accuracy"]) for r in control[s]["curve"]
                   if r.get(f"eval/{MODE}/accuracy") is not None]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], linestyle="--", color="gray", marker=".",
                    label="k = 0, another GRPO seed (control)")
        ax.set_title(f"seed {s}")
        ax.set_xlabel("GRPO step")
        ax.set_ylabel(f"held-out accuracy, {MODE} mode")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("asynchronous GRPO (rollout.max_staleness = k) vs on-policy, arithmetic miniature", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(per_seed: dict, n: int, correction: dict, steps: int, control: dict | None = None) -> str:
    seeds = sorted(per_seed)
    finals = {s: {k: score_at(a["curve"], MODE) for k, a in per_seed[s].items()} for s in seeds}
    tails = {s: {k: tail_mean(a["curve"], MODE) for k, a in per_seed[s].items()} for s in seeds}
    lines = [f"Held-out {MODE}-mode accuracy after {steps} steps (n = {n} rows; d = score(k) - score(0); SE = the "
             f"binomial s.e. of d), correction `{correction['correction']}` in every arm:", "", parity_table(finals, n, tails),
             "Runs (from each run's metrics.jsonl; wall time and load average sampled every 30 s during the run):", "",
             "| seed | k | steps | wall s (with evaluations) | load avg (min-max, mean) | staleness histogram (samples at lag 0, 1, 2) "
             "| masked share | mismatch, lag-0 steps | mismatch, stale steps | wait s/step | train reward |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in seeds:
        for k, a in sorted(per_seed[s].items()):
            y, ld = a["async"], a["load"]
            hist = ", ".join(f"{int(v)}" for v in y["staleness_hist"].values()) or "-"
            f = (lambda v: "n/a" if v is None else f"{v:.4f}")
            pct = (lambda v: "n/a" if v is None else f"{v:.3%}")
            lines.append(f"| {s} | {k} | {a['steps']} | {a['wall_s']:.0f} | {ld['min']:.1f}-{ld['max']:.1f}, "
                         f"{ld['mean']:.1f} | {hist} | {pct(y['masked_frac'])} | {f(y['mismatch_fresh_steps'])} | "
                         f"{f(y['mismatch_stale_steps'])} | {f(y['wait_s_mean'])} | {f(y['reward_mean'])} |")
    if control:
        lines += ["", "Control (two on-policy runs from the same checkpoint, GRPO seed s and s + offset: the run-to-run "
                  "spread that staleness is compared with):", "", control_table(per_seed, control, n)]
    return "\n".join(lines) + "\n"


def write_doc(doc: pathlib.Path, body: str, png: pathlib.Path) -> None:
    begin, end = "<!-- parity:begin -->", "<!-- parity:end -->"
    target = doc.parent / "async_parity.png"
    shutil.copyfile(png, target)
    block = f"{begin}\n{body}\n![held-out accuracy against GRPO step, k = 0, 1, 2](async_parity.png)\n{end}"
    text = doc.read_text()
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    doc.write_text(text)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="examples/ablation/ablation.yaml")
    ap.add_argument("--out", default="runs/async_parity")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--ks", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--correction", default="icepop", help="algorithm.loss_opts.correction of every arm")
    ap.add_argument("--eval-every", type=int, default=0, help="0: the config's ablation.eval.every")
    ap.add_argument("--eval-limit", type=int, default=0, help="0: the config's ablation.eval.limit")
    ap.add_argument("--cold-steps", type=int, default=0, help="0: the config's ablation.cold_start.steps")
    ap.add_argument("--doc", default="", help="markdown file whose parity block gets the table (docs/async.md)")
    ap.add_argument("--control", default="", help="output folder of a --grpo-seed-offset run with --ks 0: its on-policy "
                    "arms are drawn and tabulated beside k = 0")
    ap.add_argument("--grpo-seed-offset", type=int, default=0, help="the GRPO runs use seed + this (the cold start: "
                    "seed); a control: another on-policy trajectory from the same checkpoint")
    args = ap.parse_args(argv)
    if 0 not in args.ks:
        ap.error("--ks must include 0 (the on-policy reference)")
    grpo, abl = load_ablation_config(args.config, [])
    ev = dataclasses.replace(abl.eval, modes=[MODE], every=args.eval_every or abl.eval.every,
                             limit=args.eval_limit or abl.eval.limit)
    cs = dataclasses.replace(abl.cold_start, steps=args.cold_steps or abl.cold_start.steps)
    abl = dataclasses.replace(abl, seeds=[], eval=ev, cold_start=cs)
    grpo = dataclasses.replace(grpo, output_dir=args.out)
    correction = {"correction": args.correction}
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    per_seed = {s: run_seed(grpo, abl, s, args.ks, correction, args.steps, out, args.grpo_seed_offset) for s in args.seeds}
    n = ev.limit
    finals = {s: {k: score_at(a["curve"], MODE) for k, a in per_seed[s].items()} for s in per_seed}
    result = {"mode": MODE, "n": n, "steps": args.steps, "correction": correction, "seeds": args.seeds, "ks": args.ks,
              "finals": finals, "comparison": compare(finals, n), "wall_s_this_invocation": time.perf_counter() - t,
              "per_seed": {s: {k: {kk: v for kk, v in a.items() if kk != "stamp"} for k, a in arms.items()}
                           for s, arms in per_seed.items()}}
    (out / "parity.json").write_text(json.dumps(result, indent=1, default=str))
    control = load_control(args.control, args.seeds)
    body = report(per_seed, n, correction, args.steps, control)
    (out / "parity.md").write_text(body)
    write_plot(per_seed, out / "parity.png", control)
    if args.doc:
        write_doc(pathlib.Path(args.doc), body, out / "parity.png")
    print(body)
    return result


if __name__ == "__main__":
    main()
