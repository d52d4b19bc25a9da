"""The shipped tiny RLAIF-V example (examples/rlaifv/rlaifv.yaml) builds preference pairs and trains out of the
box, and a round without pairs says why in one line.

The example's labeler is the tiny random policy, which says "yes" to every claim; the config turns on
`labeler.calibrate` (each round's median odds as the threshold) so verdicts split. The overrides only shrink
the run (one round, 8 prompts, transformers generate instead of a vLLM engine start-up); the labeler, pair and
DPO settings are the shipped ones.
"""
import json
import pathlib

from rlkit.config import load_config
from rlkit.drivers.rlaifv import RLAIFVConfig, run_rlaifv

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHRINK = ["rounds=1", "prompts_per_round=8", "rollout.engine=hf"]


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_shipped_config_builds_pairs_and_trains(tmp_path, capsys):
    out = tmp_path / "run"  # model.path as shipped: tiny:vlm, built into out/base_model
    cfg = load_config(RLAIFVConfig, ROOT / "examples/rlaifv/rlaifv.yaml", [f"output_dir={out}", *SHRINK])
    run_rlaifv(cfg)
    r1 = json.loads((out / "round_1" / "round.json").read_text())
    assert r1["pairs/kept"] > 0 and r1["checkpoint"], r1
    assert 0 < r1["claims/rejected_frac"] < 1 and r1["labeler/calibrated_odds"] > 0
    dpo = read_jsonl(out / "round_1" / "dpo" / "metrics.jsonl")
    assert dpo[0]["eval/rewards/accuracies"] == 0.0  # the policy is its own reference at step 0
    assert dpo[-1]["step"] > 0 and dpo[-1]["eval/rewards/margins"] > 0 and dpo[-1]["eval/rewards/accuracies"] > 0.5

    # the same round with the paper's rule and the random labeler: every claim accepted, no pairs, and one line
    # saying so and which key to change
    capsys.readouterr()
    base = out / "base_model"
    out = tmp_path / "uncalibrated"
    run_rlaifv(load_config(RLAIFVConfig, ROOT / "examples/rlaifv/rlaifv.yaml",
                           [f"output_dir={out}", f"model.path={base}", *SHRINK, "labeler.calibrate=false"]))
    r1 = json.loads((out / "round_1" / "round.json").read_text())
    assert r1["pairs/kept"] == 0 and r1["checkpoint"] is None
    lines = [l for l in capsys.readouterr().out.splitlines() if "produced no preference pairs" in l]
    assert lines == [f"rlkit: round 1 produced no preference pairs: {r1['no_pairs_reason']}; the next round starts "
                     "from the same model"]
    assert "the labeler accepted all" in lines[0] and "labeler.calibrate: true" in lines[0]
