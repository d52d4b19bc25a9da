"""Dynamic sampling in the driver: groups the filter drops are replaced by fresh prompts until the batch has its
configured size (real data stream, real reward scorer, real filter; the engine and prompt rendering are replaced)."""
import random

import pytest

import rlkit.step.collect as collect
import rlkit.drivers.grpo as grpo
from rewards import RewardScorer
from rlkit.config import GRPOConfig, load_config
from rlkit.data import PromptStream, load_source, map_columns
from rlkit.step.filters import get_filter
from rollout import Completion, RolloutRequest


def fake_requests(cfg, processor, rows, rng, step):
    """One fast-mode request per row; its prompt carries what the fake engine answers."""
    requests = [RolloutRequest(prompt=f"{row.index}|{row.answer}", images=[], n=cfg.rollout.n) for row in rows]
    return requests, [(g, "fast", r.prompt) for g, r in enumerate(requests)]


class AnswerEngine:
    """Rows with an even index get one right and one wrong answer (informative); odd rows two wrong ones."""

    def __init__(self):
        self.calls = []

    def generate(self, requests, sampling):
        self.calls.append((len(requests), sampling.seed))
        out = []
        for r in requests:
            index, answer = r.prompt.split("|", 1)
            answers = [answer, "wrong"] if int(index) % 2 == 0 else ["wrong", "wrong"]
            out.append([Completion(a, [1], [0.0], [], "stop") for a in answers])
        return out


@pytest.mark.parametrize("refill_rounds, expect_kept", [(10, 4), (0, None)])
def test_refill_keeps_the_batch_size(monkeypatch, refill_rounds, expect_kept):
    cfg = load_config(GRPOConfig, None, ["trainer.prompts_per_step=4", "rollout.n=2", "data.source=arithmetic",
                                         "algorithm.group_filter=all_equal", f"algorithm.refill_rounds={refill_rounds}"])
    monkeypatch.setattr(collect, "_requests", fake_requests)
    ds = map_columns(load_source("arithmetic", limit=50), {})
    rows = collect.StepRows(cfg, PromptStream(ds, seed=0))
    with RewardScorer(grpo.reward_specs(cfg), isolation="inline") as scorer:
        c = collect.collect(cfg, AnswerEngine(), None, rows, scorer, get_filter("all_equal"), random.Random(0), step=1)
    informative = [s for s in c.everything if s.row.index % 2 == 0]
    if expect_kept is None:  # no refill: train on what the first round kept
        assert c.rounds == 0 and c.seen == 4 and c.kept == len(informative) // 2
    else:
        assert c.kept == expect_kept and len(c.samples) == 2 * expect_kept
        assert c.rounds >= 1 and c.seen == len(c.everything) // 2 > 4
    assert sorted({s.group for s in c.samples}) == list(range(c.kept))  # renumbered groups
    assert all(s.row.index % 2 == 0 for s in c.samples)  # only informative groups are trained on
    assert len(c.result.total) == len(c.everything)  # rewards cover every drawn sample


def test_streamed_chunks_hand_over_kept_groups_as_they_come(monkeypatch):
    """rollout.stream_chunks=2: every round is generated in two calls of whole groups, the second seeded where the
    first ended (sample offset), and each call's kept groups reach `on_kept` at once, renumbered in order."""
    cfg = load_config(GRPOConfig, None, ["trainer.prompts_per_step=4", "rollout.n=2", "data.source=arithmetic",
                                         "algorithm.group_filter=all_equal", "algorithm.refill_rounds=10",
                                         "rollout.stream_chunks=2"])
    monkeypatch.setattr(collect, "_requests", fake_requests)
    ds = map_columns(load_source("arithmetic", limit=50), {})
    rows = collect.StepRows(cfg, PromptStream(ds, seed=0))
    engine, parts = AnswerEngine(), []
    with RewardScorer(grpo.reward_specs(cfg), isolation="inline") as scorer:
        c = collect.collect(cfg, engine, None, rows, scorer, get_filter("all_equal"), random.Random(0), step=1,
                          on_kept=parts.append)
    assert engine.calls[:2] == [(2, engine.calls[0][1]), (2, engine.calls[0][1] + 4)]  # 2 rows x n=2 samples
    assert [s for part in parts for s in part] == c.samples  # the same objects, in order, nothing twice
    assert sorted({s.group for s in c.samples}) == list(range(c.kept)) and c.kept == 4
    assert all(len(part) % 2 == 0 and part for part in parts)  # whole groups only, no empty part
    firsts = [part[0].group for part in parts]
    assert firsts == sorted(firsts) and firsts[0] == 0
