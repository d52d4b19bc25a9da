"""The report of the RLAIF-V miniature: per arm and round, the held-out hallucination rates over seeds, the
comparison rule fixed in docs/rlaifv.md ("RLAIF-V in miniature", design), the table and the plot.

Comparison rule (written before the first comparison run): for each labeler setting, the primary number is
CHAIRi-like `chair_i` (hallucinated / checkable claims on the held-out descriptions) of the cold start (round 0)
minus that of the last round. Over seeds: mean of the per-seed values, s.e. of the mean = sqrt(sum se_s^2) / S
with each seed's cluster s.e. (hallucination.aggregate); the difference's s.e. = sqrt(se_0^2 + se_R^2) (unpaired:
conservative, the held-out images are the same). "Falls" = the mean difference exceeds 2 s.e., the difference is
positive on every seed, and no collapse: the last round's `says_anything` is at least 0.95 x round 0's and its
mean length at least half of round 0's. `chair_s` is reported the same way as the secondary number.
"""
from __future__ import annotations

import json
import math
import pathlib

import hallucination as H

ARM_ORDER = ("strong", "self")


def by_arm(results: list[dict]) -> dict:
    """{arm: {round: [per-seed results sorted by seed]}}; the cold start (round 0) belongs to every arm."""
    cold = sorted((r for r in results if r.get("round") == 0 and "chair_i" in r), key=lambda r: r["seed"])
    out: dict = {}
    for r in results:
        if r.get("arm") in (None, "cold_start") or "chair_i" not in r:
            continue
        out.setdefault(r["arm"], {}).setdefault(r["round"], []).append(r)
    for arm in out:
        out[arm][0] = list(cold)
        for k in out[arm]:
            out[arm][k].sort(key=lambda r: r["seed"])
    return {a: dict(sorted(out[a].items())) for a in [*ARM_ORDER, *sorted(set(out) - set(ARM_ORDER))] if a in out}


def combine(rs: list[dict], key: str) -> tuple[float, float]:
    return H.mean_over_seeds([r[key] for r in rs], [r[f"{key}_se"] for r in rs])


def verdict(rounds: dict, key: str = "chair_i") -> dict:
    """The comparison rule on `key` between round 0 and the last round with every seed of round 0."""
    first = rounds[0]
    seeds = [r["seed"] for r in first]
    complete = [k for k, v in rounds.items() if k > 0 and [r["seed"] for r in v] == seeds]
    if not complete:
        return {"key": key, "decided": False, "why": "no round has every seed of the cold start"}
    last_round = max(complete)
    last = rounds[last_round]
    m0, s0 = combine(first, key)
    m1, s1 = combine(last, key)
    d, se = m0 - m1, math.sqrt(s0 * s0 + s1 * s1)
    per_seed = [a[key] - b[key] for a, b in zip(first, last)]
    collapse = [b["says_anything"] < 0.95 * a["says_anything"] or b["words"] < 0.5 * a["words"]
                for a, b in zip(first, last)]
    falls = d > 2 * se and all(x > 0 for x in per_seed) and not any(collapse)
    return {"key": key, "decided": True, "round": last_round, "seeds": seeds, "from": m0, "to": m1, "drop": d,
            "se": se, "z": d / se if se else float("inf"), "per_seed_drop": per_seed, "collapse": collapse,
            "falls": falls}


def table(arms: dict) -> str:
    lines = ["| labeler | round | seeds | claims hallucinated (CHAIRi), mean ± s.e. | per seed | descriptions with one "
             "(CHAIRs) ± s.e. | colour wrong | shape wrong | says anything | words | colour named | shape named | "
             "pairs | pairs right / wrong by truth | labeler right on round's claims |",
             "| --- " * 15 + "|"]
    for arm, rounds in arms.items():
        for k, rs in rounds.items():
            ci, ci_se = combine(rs, "chair_i")
            cs, cs_se = combine(rs, "chair_s")
            mean = lambda key: sum(r.get(key, float("nan")) for r in rs) / len(rs)  # noqa: E731
            pairs = "-" if k == 0 else f"{mean('pairs/kept'):.0f}"
            pr = "-" if k == 0 else f"{mean('pairs_right'):.2f} / {mean('pairs_wrong'):.2f}"
            lab = "-" if k == 0 else f"{mean('labeler_on_round_claims'):.2f}"
            lines.append(f"| {arm} | {k} | {','.join(str(r['seed']) for r in rs)} | {ci:.3f} ± {ci_se:.3f} | "
                         + ", ".join(f"{r['chair_i']:.3f}" for r in rs)
                         + f" | {cs:.3f} ± {cs_se:.3f} | {mean('color_wrong'):.3f} | {mean('shape_wrong'):.3f} | "
                         f"{mean('says_anything'):.3f} | {mean('words'):.1f} | {mean('color_named'):.2f} | "
                         f"{mean('shape_named'):.2f} | {pairs} | {pr} | {lab} |")
    return "\n".join(lines)


def verdict_line(arm: str, v: dict) -> str:
    if not v.get("decided"):
        return f"- {arm}, {v['key']}: undecided ({v['why']})"
    return (f"- {arm}, {v['key']}: round 0 {v['from']:.3f} -> round {v['round']} {v['to']:.3f}: drop {v['drop']:+.3f} "
            f"(s.e. {v['se']:.3f}, {v['z']:+.1f} s.e.; per seed " + ", ".join(f"{x:+.3f}" for x in v["per_seed_drop"])
            + f"; collapse {v['collapse']}) -> {'FALLS' if v['falls'] else 'does not fall'} by the rule")


def report(out: pathlib.Path, wall: float | None = None) -> dict:
    results = [json.loads(p.read_text()) for p in sorted((out / "results").glob("seed*.json"))]
    dev = [r for r in results if "labeler" in r and "policy" in r]
    arms = by_arm(results)
    verdicts = {arm: {key: verdict(rounds, key) for key in ("chair_i", "chair_s")} for arm, rounds in arms.items()
                if 0 in rounds and rounds[0]}
    obj = {"arms": arms, "dev": dev, "verdicts": verdicts, "wall_s_this_command": wall}
    (out / "rlaifv_miniature.json").write_text(json.dumps(obj, indent=1))
    dev_lines = [f"| {d['seed']} | {who} | {d[who]['accuracy']:.3f} | {d[who]['color']:.3f} | {d[who]['shape']:.3f} | "
                 f"{d[who]['accepted']:.3f} |" for d in sorted(dev, key=lambda d: d["seed"]) for who in ("labeler", "policy")]
    text = ("# RLAIF-V in miniature\n\nLabelers on the dev split's claims (half true, half false; accept when "
            "P(yes) > P(no)):\n\n| seed | model | accuracy | colour | shape | accepted |\n| --- | --- | --- | --- | --- | --- |\n"
            + "\n".join(dev_lines) + "\n\n" + (table(arms) if arms else "(no rounds yet)") + "\n\n"
            + "\n".join(verdict_line(a, v) for a, vs in verdicts.items() for v in vs.values())
            + "\n\n![held-out hallucination per round](rlaifv_miniature.png)\n")
    (out / "rlaifv_miniature.md").write_text(text)
    if arms:
        write_plot(arms, out / "rlaifv_miniature.png")
    print(text)
    return obj


def write_plot(arms: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    palette = iter(["tab:green", "tab:red", "tab:purple", "tab:brown"])  # follow-up arms
    colors = {"strong": "tab:blue", "self": "tab:orange"}
    for arm in arms:
        if arm not in colors:
            colors[arm] = next(palette, None)
    for arm, rounds in arms.items():
        ks = list(rounds)
        for ax, key, label in ((axes[0], "chair_i", "claims hallucinated (CHAIRi)"),
                               (axes[1], "chair_s", "descriptions with one (CHAIRs)")):
            ms = [combine(rounds[k], key) for k in ks]
            ax.errorbar(ks, [m for m, _ in ms], yerr=[2 * s for _, s in ms], marker="o", capsize=3,
                        color=colors.get(arm), label=f"{arm} labeler")
            for k in ks:
                ax.plot([k] * len(rounds[k]), [r[key] for r in rounds[k]], ".", color=colors.get(arm), alpha=0.5)
            ax.set_title(label + ", mean ± 2 s.e.", fontsize=9)
        axes[2].plot(ks, [sum(r["says_anything"] for r in rounds[k]) / len(rounds[k]) for k in ks], marker="o",
                     color=colors.get(arm), label=f"{arm}: says anything")
        axes[2].plot(ks, [sum(r["words"] for r in rounds[k]) / len(rounds[k]) / 10 for k in ks], marker="s",
                     linestyle="--", color=colors.get(arm), label=f"{arm}: words / 10")
    axes[2].set_title("no collapse: share saying anything, length / 10", fontsize=9)
    for ax in axes:
        ax.set_xlabel("round (0 = cold start)")
        ax.set_xticks(range(0, 1 + max(max(r) for r in arms.values())))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
