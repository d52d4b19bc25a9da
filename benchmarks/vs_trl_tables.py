"""The tables benchmarks/vs_trl.py prints (and `--render` reprints from saved JSON): Markdown, one row per case.

Kept apart from the benchmark's runners so each file holds one job: vs_trl.py runs the sides and summarises,
this formats what they measured.
"""
from __future__ import annotations

import json
import pathlib


def _f(x, fmt="{:.3f}") -> str:
    return "-" if x is None else fmt.format(x)


def _mem(d: dict) -> str:
    return ", ".join(f"{k} {v:.0f}" for k, v in sorted(d.items())) or "-"


def format_table(results: list[dict]) -> str:
    """Markdown: one row per case (medians), then peak RSS per process in MiB."""
    lines = ["| size | model | P x n x T | rlkit step s | TRL step s | floor s | rlkit/TRL | rlkit/floor "
             "| streamed (K) step s | streamed/TRL | streamed/floor | rollout tok/s rlkit / TRL / floor | TRL mode |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for r in results:
        tps = r["rollout_tokens_per_s"]
        k = f" ({r['stream_chunks']})" if r.get("stream_chunks") else ""
        lines.append(
            f"| {r['size']} | {r['model']} | {r['prompts']} x {r['n']} x {r['max_tokens']} | {_f(r['rlkit_step_s'])} "
            f"| {_f(r['trl_step_s'])} | {_f(r['floor_s'])} | {_f(r['ratio'], '{:.2f}')} "
            f"| {_f(r['rlkit_over_floor'], '{:.2f}')} | {_f(r.get('rlkit_stream_step_s'))}{k} "
            f"| {_f(r.get('stream_ratio'), '{:.2f}')} | {_f(r.get('stream_over_floor'), '{:.2f}')} "
            f"| {_f(tps['rlkit'], '{:.0f}')} / {_f(tps['trl'], '{:.0f}')} / "
            f"{_f(tps['floor'], '{:.0f}')} | {r.get('trl_mode') or '-'} |")
    lines += ["", "| size | model | peak RSS MiB: rlkit processes | rlkit streamed | TRL process | floor process |",
              "| --- | --- | --- | --- | --- | --- |"]
    for r in results:
        m = r["peak_rss_mib"]
        lines.append(f"| {r['size']} | {r['model']} | {_mem(m['rlkit'])} | {_mem(m.get('rlkit_stream') or {})} "
                     f"| {_mem(m['trl'])} | {_mem(m['floor'])} |")
    asy = [r for r in results if r.get("rlkit_async_step_s")]
    if asy:
        lines += ["", "| size | model | async (k) step s | async/TRL | rlkit on-policy / async | rlkit step s | TRL step s |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
        for r in asy:
            lines.append(f"| {r['size']} | {r['model']} | {_f(r['rlkit_async_step_s'])} ({r['max_staleness']}) "
                         f"| {_f(r['async_ratio'], '{:.2f}')} | {_f(r['async_speedup'], '{:.2f}')} "
                         f"| {_f(r['rlkit_step_s'])} | {_f(r['trl_step_s'])} |")
    return "\n".join(lines)


def format_sweep(rows: list[dict]) -> str:
    lines = ["| T | rlkit step s | rollout s | reward s | update s | sync s | rollout tok/s | peak RSS MiB |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['tokens']} | error: {r['error']} | | | | | | |")
            continue
        p = r["phases"]
        lines.append(f"| {r['tokens']} | {r['step_s']:.3f} | {p['rollout_s']:.3f} | {p['reward_s']:.3f} "
                     f"| {p['update_s']:.3f} | {p['sync_s']:.3f} | {r['rollout_tokens_per_s']:.0f} "
                     f"| {_mem(r['peak_rss_mib'])} |")
    return "\n".join(lines)


def format_phases(results: list[dict]) -> str:
    """Where rlkit's step goes (median seconds per phase, from metrics.jsonl's time/* keys) beside the floor."""
    lines = ["| size | model | rollout s | reward s | update s (worker compute) | sync s | step s "
             "| floor: generation s | floor: fwd+bwd+AdamW s |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        f = r.get("floor_parts") or {}
        for label, p in ((r["model"], r.get("rlkit_phases") or {}),
                         (f"{r['model']}, streamed ({r.get('stream_chunks')})", r.get("rlkit_stream_phases") or {}),
                         (f"{r['model']}, async ({r.get('max_staleness')})", r.get("rlkit_async_phases") or {})):
            if not p and label != r["model"]:
                continue
            lines.append(f"| {r['size']} | {label} | {_f(p.get('rollout_s'))} | {_f(p.get('reward_s'))} "
                         f"| {_f(p.get('update_s'))} ({_f(p.get('update_compute_s'))}) | {_f(p.get('sync_s'))} "
                         f"| {_f(p.get('step_s'))} | {_f(f.get('generation_s'))} | {_f(f.get('train_s'))} |")
    return "\n".join(lines)


def render(files: list[str]) -> str:
    results = [json.loads(pathlib.Path(f).read_text()) for f in files]
    out = [format_table([r["case"] for r in results]), "", format_phases([r["case"] for r in results])]
    for r in results:
        if r.get("sweep"):
            c = r["case"]
            out += ["", f"completion-length sweep (rlkit), {c['size']} {c['model']}, {c['prompts']} x {c['n']}:", "",
                    format_sweep(r["sweep"])]
    return "\n".join(out)
