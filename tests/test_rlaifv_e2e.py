"""RLAIF-V end to end on easy-VQA images with the tiny VLM as policy and labeler: two rounds of sample -> score ->
pairs -> DPO, the data set in TRL's columns, the audit trail, DPO reward accuracy rising on the training pairs, and
the second round starting from the first round's checkpoint.

A random tiny labeler answers nearly every question the same way (its yes/no odds sit in a narrow band, about
1.2 to 1.7, whatever the question), so with the paper's rule (accept when the odds exceed 1) almost every
response scores 0 and few or no pairs exist. The test first scores one round without training, reads the odds
from the audit, and sets `labeler.accept_odds` to their median, so verdicts split and responses differ; a real
labeler needs no such step (docs/rlaifv.md).
"""
import json
import math
import statistics

from preference import load_preference_dataset
from rlkit.config import load_config
from rlkit.drivers.rlaifv import RLAIFVConfig, run_rlaifv


def overrides(out, model, *extra):
    return [f"output_dir={out}", f"model.path={model}", "data.limit=64", "prompts_per_round=6", "rollout.engine=hf",
            "rollout.n=4", "rollout.max_tokens=12", "dpo.epochs=4", "dpo.batch_size=4", "dpo.lr_schedule=constant",
            "dpo.warmup_ratio=0", "trainer.lr=2e-3", "logging.progress=false", *extra]


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_two_rounds_on_easy_vqa(tiny_vlm_path, tmp_path):
    # ---- calibration: score one round without training and read the labeler's yes/no odds from the audit
    probe = run_rlaifv(load_config(RLAIFVConfig, None, overrides(tmp_path / "probe", tiny_vlm_path, "rounds=1",
                                                                 "train=false")))
    assert probe["checkpoint"] is None and not (tmp_path / "probe" / "round_1" / "dpo").exists()
    audit = read_jsonl(tmp_path / "probe" / "round_1" / "audit.jsonl")
    odds = [c["p_yes"] / c["p_no"] for a in audit for c in a["claims"]]
    assert len(odds) >= 12

    # ---- a labeler calibrated to split its verdicts: pairs, DPO, and a second round
    out = tmp_path / "run"
    cfg = load_config(RLAIFVConfig, None, overrides(out, tiny_vlm_path, "rounds=2",
                                                   f"labeler.accept_odds={statistics.median(odds)}"))
    last = run_rlaifv(cfg)
    r1 = json.loads((out / "round_1" / "round.json").read_text())
    assert r1["pairs/kept"] >= 2 and r1["checkpoint"]

    # the data set: TRL's columns, reloadable, scores at least the threshold apart, images attached
    ds = load_preference_dataset(out / "round_1" / "pairs")
    assert ds.column_names[:4] == ["prompt", "chosen", "rejected", "images"] and len(ds) == r1["pairs/kept"]
    for row in ds:
        assert row["chosen_score"] - row["rejected_score"] >= 1 and len(row["images"]) == 1
        assert row["chosen_ids"] and row["rejected_ids"] and row["prompt"][0]["role"] == "user"

    # the audit: every sampled response, with claims, questions, probabilities and verdicts
    audit = read_jsonl(out / "round_1" / "audit.jsonl")
    assert len(audit) == 6 * 4
    claims = [c for a in audit for c in a["claims"]]
    assert claims and all(c["question"].endswith("Please answer yes or no.") and 0 < c["p_yes"] < 1 for c in claims)
    assert {c["accepted"] for c in claims} == {True, False}
    for a in audit:
        if a["status"] == "scored":
            assert a["score"] == -sum(not c["accepted"] for c in a["claims"])

    # DPO on the pairs: reward accuracy on the training pairs rises from 0 (policy == reference)
    dpo = read_jsonl(out / "round_1" / "dpo" / "metrics.jsonl")
    first, final = dpo[0], dpo[-1]
    assert first["step"] == 0 and first["eval/rewards/accuracies"] == 0.0
    assert final["eval/rewards/accuracies"] >= 0.75 and final["eval/rewards/margins"] > 0
    assert final["eval/loss"] < math.log(2) - 0.1

    # round 2 sampled from round 1's checkpoint; both rounds' data and checkpoints are kept
    r2 = json.loads((out / "round_2" / "round.json").read_text())
    assert r2["model"] == r1["checkpoint"]
    assert (out / "round_1" / "pairs").is_dir() and (out / "round_2" / "audit.jsonl").exists()
    assert (out / "round_1" / "dpo" / "checkpoints").is_dir()
    assert [m["step"] for m in read_jsonl(out / "metrics.jsonl")] == [1, 2]
    assert last["model"] == (r2["checkpoint"] or r1["checkpoint"])

    # a rerun skips complete rounds
    again = run_rlaifv(cfg)
    assert again["model"] == last["model"] and len(read_jsonl(out / "metrics.jsonl")) == 2
