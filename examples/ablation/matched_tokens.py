"""Analysis added after the pre-registered rule (docs/ablation.md, "Beyond the pre-registered rule"): per seed,
the hybrid's held-out score minus deep-only's at the same sampled tokens, averaged over the hybrid's eval points
(rlkit.drivers.ablation_stats.matched_token_gap), and the t interval over seeds. Reads ablation_seeds.json.

    PYTHONPATH=. python examples/ablation/matched_tokens.py runs/ablation
"""
from __future__ import annotations

import json
import pathlib
import sys

from rlkit.drivers.ablation_stats import matched_token_gap, t_interval


def main(run: str = "runs/ablation") -> int:
    res = json.loads((pathlib.Path(run) / "ablation_seeds.json").read_text())
    out = {}
    for mode in ("deep", "fast"):
        gaps = {s: matched_token_gap(d["deep_only"]["curve"], d["hybrid"]["curve"], mode)
                for s, d in res["per_seed"].items()}
        vals = [g["gap"] for g in gaps.values() if g["gap"] is not None]
        ti = t_interval(vals) if len(vals) > 1 else None
        out[mode] = {"seeds": gaps, "interval": ti}
        per = ", ".join(f"seed {s}: {g['gap']:+.3f} ({g['n_points']} points)" for s, g in gaps.items())
        line = f"{mode}: hybrid - deep-only at equal sampled tokens: {per}"
        if ti:
            line += f"; mean {ti['mean']:+.3f}, 95% t interval [{ti['low']:+.3f}, {ti['high']:+.3f}]"
        print(line)
    (pathlib.Path(run) / "matched_tokens.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
