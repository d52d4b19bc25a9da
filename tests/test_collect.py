"""Dynamic sampling in the driver: groups the filter drops are replaced by fresh prompts until the batch has its
configured size (real data stream, real reward scorer, real filter; the engine call is replaced)."""
import random

import pytest

import rlkit.grpo as grpo
from rewards import RewardScorer
from rlkit.config import GRPOConfig, load_config
from rlkit.data import PromptStream, load_source, map_columns
from rlkit.filters import get_filter
from rlkit.records import Sample


def fake_rollout(cfg, engine, processor, rows, rng, step, round_=0):
    """Rows with an even index get one right and one wrong answer (informative); odd rows two wrong ones."""
    out = []
    for g, row in enumerate(rows):
        answers = [row.answer, "wrong"] if row.index % 2 == 0 else ["wrong", "wrong"]
        out += [Sample(step, g, row, "fast", row.prompt, a, [1], [0.0], "stop") for a in answers]
    return out


@pytest.mark.parametrize("refill_rounds, expect_kept", [(10, 4), (0, None)])
def test_refill_keeps_the_batch_size(monkeypatch, refill_rounds, expect_kept):
    cfg = load_config(GRPOConfig, None, ["trainer.prompts_per_step=4", "rollout.n=2", "data.source=arithmetic",
                                         "algorithm.group_filter=all_equal", f"algorithm.refill_rounds={refill_rounds}"])
    monkeypatch.setattr(grpo, "_rollout", fake_rollout)
    ds = map_columns(load_source("arithmetic", limit=50), {})
    rows = grpo.StepRows(cfg, PromptStream(ds, seed=0))
    with RewardScorer(grpo.reward_specs(cfg), isolation="inline") as scorer:
        c = grpo._collect(cfg, None, None, rows, scorer, get_filter("all_equal"), random.Random(0), step=1)
    informative = [s for s in c.everything if s.row.index % 2 == 0]
    if expect_kept is None:  # no refill: train on what the first round kept
        assert c.rounds == 0 and c.seen == 4 and c.kept == len(informative) // 2
    else:
        assert c.kept == expect_kept and len(c.samples) == 2 * expect_kept
        assert c.rounds >= 1 and c.seen == len(c.everything) // 2 > 4
    assert sorted({s.group for s in c.samples}) == list(range(c.kept))  # renumbered groups
    assert all(s.row.index % 2 == 0 for s in c.samples)  # only informative groups are trained on
    assert len(c.result.total) == len(c.everything)  # rewards cover every drawn sample
