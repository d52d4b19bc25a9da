"""RLAIF-V rounds from a config, with a per-round summary: pairs built, labeler verdicts, DPO reward accuracy.

    python examples/rlaifv/run.py --config examples/rlaifv/rlaifv.yaml [--calibrate] [--overwrite] [key.sub=value ...]

The rounds are `rlkit rlaifv`'s (`rlkit.drivers.rlaifv.run_rlaifv`); this script adds the per-round table. --calibrate is
the same as `labeler.calibrate=true` (already on in rlaifv.yaml): each round's claims are judged against that
round's median yes/no odds, for a random or untrained labeler whose verdicts would otherwise all be "yes"
(rlkit/drivers/rlaifv_checks.py). A real labeler's verdicts already vary with the claim: leave it off.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # this checkout's rlkit, not an installed one

from rlkit.runtime_env import apply_defaults  # noqa: E402  (before torch/vLLM/Ray)

apply_defaults()

from rlkit.config import load_config  # noqa: E402
from rlkit.drivers.rlaifv import RLAIFVConfig, run_rlaifv  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(pathlib.Path(__file__).with_name("rlaifv.yaml")))
    ap.add_argument("--calibrate", action="store_true", help="labeler.calibrate=true: each round's median odds")
    ap.add_argument("--overwrite", action="store_true", help="move an earlier run in output_dir aside")
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. rounds=3 rollout.engine=hf")
    args = ap.parse_args(argv)
    cfg = load_config(RLAIFVConfig, args.config, args.overrides)
    if args.calibrate:
        cfg.labeler.calibrate = True
    last = run_rlaifv(cfg, overwrite=args.overwrite)
    out = pathlib.Path(cfg.output_dir)
    print(f"{'round':>5} {'pairs':>5} {'score':>6} {'rejected':>8} {'acc0':>5} {'acc':>5} {'margin':>7} {'odds':>6}  "
          "checkpoint")
    for r in range(1, cfg.rounds + 1):
        s = json.loads((out / f"round_{r}" / "round.json").read_text())
        dpo = out / f"round_{r}" / "dpo" / "metrics.jsonl"
        acc0 = json.loads(dpo.read_text().splitlines()[0])["eval/rewards/accuracies"] if dpo.exists() else float("nan")
        print(f"{r:>5} {int(s['pairs/kept']):>5} {s['score/mean']:>6.2f} {s['claims/rejected_frac']:>8.0%} "
              f"{acc0:>5.2f} {s.get('dpo/rewards/accuracies', float('nan')):>5.2f} "
              f"{s.get('dpo/rewards/margins', float('nan')):>7.3f} {s.get('labeler/calibrated_odds', float('nan')):>6.3f}  "
              f"{s['checkpoint']}")
    print(f"final model: {last['model']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
