"""RLAIF-V rounds from a config, with a per-round summary: pairs built, labeler verdicts, DPO reward accuracy.

    python examples/rlaifv/run.py --config examples/rlaifv/rlaifv.yaml --calibrate [key.sub=value ...]

--calibrate is for a random or untrained labeler (the tiny demo): it first samples and scores one round with the
paper's rule (accept a claim when P(yes) > P(no)) and no training, reads the yes/no odds from its audit, and
sets `labeler.accept_odds` to their median, so that half the claims are rejected and responses get different
scores. A real labeler's verdicts already vary with the claim: leave it out.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import statistics
import sys

from rlkit.runtime_env import apply_defaults  # noqa: E402  (before torch/vLLM/Ray)

apply_defaults()
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from rlkit.config import load_config  # noqa: E402
from rlkit.rlaifv import RLAIFVConfig, run_rlaifv  # noqa: E402


def calibrate(cfg: RLAIFVConfig) -> float:
    """Median P(yes)/P(no) of the labeler on one round of the starting model's claims (nothing trained)."""
    probe = dataclasses.replace(cfg, output_dir=str(pathlib.Path(cfg.output_dir) / "calibration"), rounds=1,
                                train=False, labeler=dataclasses.replace(cfg.labeler, accept_odds=1.0))
    run_rlaifv(probe)
    audit = pathlib.Path(probe.output_dir) / "round_1" / "audit.jsonl"
    odds = [c["p_yes"] / c["p_no"] for line in audit.read_text().splitlines()
            for c in json.loads(line)["claims"] if c["p_no"] > 0]
    if not odds:
        raise SystemExit("calibration: no claims were found in the sampled responses")
    print(f"calibration: {len(odds)} claims, yes/no odds {min(odds):.3f} .. {max(odds):.3f}, "
          f"accepted with odds > 1: {sum(o > 1 for o in odds) / len(odds):.0%}")
    return statistics.median(odds)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(pathlib.Path(__file__).with_name("rlaifv.yaml")))
    ap.add_argument("--calibrate", action="store_true", help="set labeler.accept_odds to the labeler's median odds")
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. rounds=3 rollout.engine=hf")
    args = ap.parse_args(argv)
    cfg = load_config(RLAIFVConfig, args.config, args.overrides)
    if args.calibrate:
        cfg.labeler.accept_odds = calibrate(cfg)
        print(f"calibration: labeler.accept_odds = {cfg.labeler.accept_odds:.4f}")
    last = run_rlaifv(cfg)
    out = pathlib.Path(cfg.output_dir)
    print(f"{'round':>5} {'pairs':>5} {'score':>6} {'rejected':>8} {'acc0':>5} {'acc':>5} {'margin':>7}  checkpoint")
    for r in range(1, cfg.rounds + 1):
        s = json.loads((out / f"round_{r}" / "round.json").read_text())
        dpo = out / f"round_{r}" / "dpo" / "metrics.jsonl"
        acc0 = json.loads(dpo.read_text().splitlines()[0])["eval/rewards/accuracies"] if dpo.exists() else float("nan")
        print(f"{r:>5} {int(s['pairs/kept']):>5} {s['score/mean']:>6.2f} {s['claims/rejected_frac']:>8.0%} "
              f"{acc0:>5.2f} {s.get('dpo/rewards/accuracies', float('nan')):>5.2f} "
              f"{s.get('dpo/rewards/margins', float('nan')):>7.3f}  {s['checkpoint']}")
    print(f"final model: {last['model']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
