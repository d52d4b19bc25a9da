"""One GRPO step's samples: prompts from the stream, rendered per mode, generated, scored and filtered.

`collect` draws `trainer.prompts_per_step` rows, assigns each sample its thinking mode, sends the requests to the
engine, scores every completion and drops the groups the group filter rejects, refilling from fresh prompts
(`algorithm.refill_rounds`). With `rollout.stream_chunks` it generates each round in chunks of whole groups and
hands every chunk's kept groups to the caller as soon as they are scored, so the policy can train on them while
the next chunk is generated (rlkit/policy/streaming.py). The driver (rlkit/drivers/grpo.py) owns everything after that.
"""
from __future__ import annotations

import dataclasses
import random
import time

from rewards import RewardScorer, ScoreResult
from rlkit.config import GRPOConfig
from rlkit.data import DataError, PromptStream, open_image, prompt_too_long, to_row
from rlkit.step.modes import assign_modes, deep_ratio_at, render_prompt
from rlkit.records import MODES, Sample, reward_columns
from rollout import RolloutRequest, SamplingConfig
from rollout.base import balanced_chunks, requests_n


class StepRows:
    """Takes the next rows from the stream, skipping (and counting) bad ones when data.on_bad_row=skip."""

    def __init__(self, cfg: GRPOConfig, stream: PromptStream):
        self.cfg, self.stream, self.skipped = cfg, stream, 0
        self.unfit: set[int] = set()  # rows whose prompt the engine could not take (reported once each)

    def take(self, k: int):
        rows = []
        tries = 0
        while len(rows) < k:
            for idx, raw in self.stream.take(k - len(rows)):
                tries += 1
                try:
                    row = to_row(idx, raw, self.cfg.modes.mode_column)
                    row.images = [open_image(im, idx) for im in row.images]
                    if row.answer is None:
                        raise DataError(f"row {idx}: 'answer' is missing or empty")
                    rows.append(row)
                except DataError as e:
                    self._bad(e)
            if tries > 100 * k and len(rows) < k:
                raise DataError(f"{self.skipped} bad rows in a row; stopping (see the messages above)")
        return rows

    def drop_unfit(self, batch: list[Sample]) -> list[Sample]:
        """`batch` without the groups whose prompt did not fit the engine (finish_reason 'prompt_too_long': longer
        than rollout.max_model_len, images included): each such row is a bad row, reported and counted the first
        time. Only the engine knows a prompt's length (its image tokens), so this is found when the row is drawn,
        not by the checks before Ray. The row stays in the stream (a later epoch draws it, and drops it, again), so
        the order of rows and a resumed run stay what they would be."""
        unfit = {s.group: s.row.index for s in batch if s.finish_reason == "prompt_too_long"}
        for idx in sorted(set(unfit.values()) - self.unfit):
            self._bad(prompt_too_long(idx, self.cfg.rollout.max_model_len))
            self.unfit.add(idx)
        return [s for s in batch if s.group not in unfit]

    def _bad(self, e: DataError) -> None:
        """data.on_bad_row: 'error' stops the run with `e` (naming the option that would skip it); 'skip' counts."""
        if self.cfg.data.on_bad_row == "error":
            raise DataError(f"{e} (data.on_bad_row=skip leaves such rows out)") from None
        self.skipped += 1
        print(f"rlkit: skipping bad row: {e}")


@dataclasses.dataclass
class Collected:
    """One step's training samples after filtering, and what it took to get them."""

    samples: list  # kept groups' samples, group ids renumbered 0..kept-1
    everything: list  # every sample drawn this step (filtered ones included: the sampling cost)
    result: ScoreResult  # reward results over everything
    seen: int  # groups drawn
    kept: int  # groups kept
    rounds: int  # refill rounds used
    t_rollout: float
    t_reward: float


def collect(cfg: GRPOConfig, engine, processor, rows_src, scorer, group_filter, rng, step: int,
             on_kept=None) -> Collected:
    """Rollout and score `prompts_per_step` prompts; drop the groups the filter rejects and refill from fresh
    prompts, at most `algorithm.refill_rounds` times, so the update keeps its configured size when it can.

    `on_kept` (a streamed step): each round is generated in `rollout.stream_chunks` chunks of whole groups, and
    `on_kept(part)` receives every chunk's kept samples as soon as they are scored (the same samples as one
    call: a chunk's requests keep their seeds)."""
    want, kept, results, everything, seen, rounds = cfg.trainer.prompts_per_step, [], [], [], 0, 0
    t_rollout = t_reward = 0.0
    chunks = cfg.rollout.stream_chunks if on_kept else 1
    while True:
        rows = rows_src.take(want - len(kept))
        requests, owners = _requests(cfg, processor, rows, rng, step)
        sampling = _sampling(cfg, step, rounds)
        for lo, hi in _group_ranges(owners, chunks):
            t0 = time.perf_counter()
            batch = rows_src.drop_unfit(_generate(engine, requests[lo:hi], owners[lo:hi], rows, step, sampling,
                                                  offset=sum(requests_n(requests[:lo], sampling))))
            t1 = time.perf_counter()
            results.append(_score(scorer, batch))
            everything += batch
            t_rollout, t_reward = t_rollout + t1 - t0, t_reward + time.perf_counter() - t1
            groups = [[s for s in batch if s.group == g] for g in sorted({s.group for s in batch})]
            keep = group_filter.update_and_mask([[s.reward for s in g] for g in groups], step)
            seen += len(groups)
            new = [[dataclasses.replace(s, group=len(kept) + j) for s in g]  # group ids renumbered 0..kept-1
                   for j, g in enumerate(g for g, k in zip(groups, keep) if k)]
            kept += new
            if on_kept and new:
                on_kept([s for g in new for s in g])
        if len(kept) >= want or rounds >= cfg.algorithm.refill_rounds:
            break
        rounds += 1
    samples = [s for g in kept for s in g]
    return Collected(samples, everything, _merge_results(results), seen, len(kept), rounds, t_rollout, t_reward)


def _group_ranges(owners: list, parts: int) -> list[tuple[int, int]]:
    """`parts` contiguous request ranges (lo, hi) of whole groups, balanced by group count (a row's requests,
    one per mode, are adjacent)."""
    starts = [i for i, o in enumerate(owners) if i == 0 or o[0] != owners[i - 1][0]]
    ends = starts[1:] + [len(owners)]
    return [(starts[lo], ends[hi - 1]) for lo, hi in balanced_chunks([1] * len(starts), parts)]


def _requests(cfg: GRPOConfig, processor, rows, rng: random.Random, step: int) -> tuple[list, list]:
    """Each row's n samples, grouped by mode into engine requests; owners: (group = the row's index in `rows`,
    mode, prompt text) per request."""
    ratio = deep_ratio_at(step, cfg.modes.deep_ratio, cfg.modes.schedule)
    modes = assign_modes(rows, cfg.rollout.n, ratio, cfg.modes.per, rng)
    requests, owners = [], []
    for g, (row, row_modes) in enumerate(zip(rows, modes)):
        for mode in MODES:
            k = row_modes.count(mode)
            if k:
                text = render_prompt(processor, row, mode, cfg.data.system_prompt)
                requests.append(RolloutRequest(prompt=text, images=row.images, n=k, request_id=(g, mode)))
                owners.append((g, mode, text))
    return requests, owners


def _sampling(cfg: GRPOConfig, step: int, round_: int) -> SamplingConfig:
    r = cfg.rollout
    return SamplingConfig(temperature=r.temperature, top_p=r.top_p, max_tokens=r.max_tokens, n=r.n,
                          seed=cfg.seed * 100003 + step + 1000003 * round_)  # a refill round gets new seeds


def _generate(engine, requests, owners, rows, step: int, sampling: SamplingConfig, offset: int = 0) -> list[Sample]:
    """Samples of `requests` (a contiguous range starting `offset` samples into the round: seeded as in one call)."""
    if offset and sampling.seed is not None:
        sampling = dataclasses.replace(sampling, seed=sampling.seed + offset)
    outs = engine.generate(requests, sampling)
    return [Sample(step, g, rows[g], mode, text, c.text, list(c.token_ids), list(c.logprobs), c.finish_reason)
            for (g, mode, text), group in zip(owners, outs) for c in group]


def _score(scorer: RewardScorer, samples: list[Sample]) -> ScoreResult:
    """Score `samples` in place (rewards by name, total used for advantages). Failures are summarised once per
    step by the driver (rlkit/step/reward_health.py), not here per sample."""
    result = scorer([s.row.prompt for s in samples], [s.completion for s in samples], _columns(samples))
    for i, s in enumerate(samples):
        s.rewards = {name: vals[i] for name, vals in result.per_reward.items()}
        s.reward = float(result.total[i])
    return result


def _merge_results(results: list[ScoreResult]) -> ScoreResult:
    """One ScoreResult over every round of a step (stats cover filtered groups too)."""
    if len(results) == 1:
        return results[0]
    per = {k: [v for r in results for v in r.per_reward[k]] for k in results[0].per_reward}
    failures, offset = [], 0
    for r in results:
        failures += [dataclasses.replace(f, index=f.index + offset) for f in r.failures]
        offset += len(r.total)
    return ScoreResult(per, [t for r in results for t in r.total], failures, results[0].weights,
                       sum(r.retries for r in results))


def _columns(samples: list[Sample]) -> dict[str, list]:
    """The keyword columns every reward receives (`rlkit.records.reward_columns`)."""
    return reward_columns([s.row for s in samples], [s.mode for s in samples], [s.completion_ids for s in samples],
                          [s.prompt_text for s in samples])
