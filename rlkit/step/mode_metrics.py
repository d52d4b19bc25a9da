"""Per-mode metrics of a GRPO step: what each thinking mode costs and how well it does.

Every value is over all the samples drawn in the step (`Collected.everything`: refill rounds and the groups the
group filter dropped included), so accuracy and reward describe the policy rather than the filter's choice,
and token counts are the true sampling cost. For each mode m in (fast, deep):

- `mode/{m}/share`: the mode's share of the samples drawn this step;
- `mode/{m}/reward_mean`: mean total reward (the one advantages use);
- `mode/{m}/accuracy`: mean score of the `trainer.accuracy_reward` reward (a None score, i.e. not applicable
  or failed, counts as 0: not known to be right);
- `mode/{m}/tokens_mean`: mean completion tokens;
- `mode/{m}/tokens_sampled`: completion tokens sampled this step; `mode/{m}/tokens_sampled_total`: the same,
  summed over the run (kept in the checkpoint's run state, so it continues across `--resume`).

reward_mean, accuracy and tokens_mean are absent in a step where the mode drew no sample.
"""
from __future__ import annotations

from rlkit.records import MODES, Sample


class ModeMetrics:
    """`step(samples)` -> the metrics above, accumulating the per-mode sampled-token totals.

    `state_dict()` / `load_state_dict()` (JSON-able: `{mode: tokens}`) carry the totals through a checkpoint.
    """

    def __init__(self, accuracy_reward: str, state: dict | None = None):
        self.accuracy_reward = accuracy_reward
        self.totals = {m: 0 for m in MODES}
        self.load_state_dict(state or {})

    def step(self, samples: list[Sample]) -> dict[str, float]:
        out: dict[str, float] = {}
        n = len(samples)
        for mode in MODES:
            ss = [s for s in samples if s.mode == mode]
            tokens = sum(len(s.completion_ids) for s in ss)
            self.totals[mode] += tokens
            out[f"mode/{mode}/share"] = len(ss) / n if n else 0.0
            out[f"mode/{mode}/tokens_sampled"] = tokens
            out[f"mode/{mode}/tokens_sampled_total"] = self.totals[mode]
            if ss:
                out[f"mode/{mode}/reward_mean"] = sum(s.reward for s in ss) / len(ss)
                out[f"mode/{mode}/accuracy"] = sum(_score(s, self.accuracy_reward) for s in ss) / len(ss)
                out[f"mode/{mode}/tokens_mean"] = tokens / len(ss)
        return out

    def state_dict(self) -> dict[str, int]:
        return dict(self.totals)

    def load_state_dict(self, state: dict) -> None:
        unknown = set(state) - set(MODES)
        if unknown:
            raise ValueError(f"per-mode token totals: unknown modes {sorted(unknown)} (expected {', '.join(MODES)})")
        for mode in MODES:
            self.totals[mode] = int(state.get(mode, 0))


def _score(sample: Sample, reward: str) -> float:
    if reward not in sample.rewards:
        raise KeyError(f"sample of row {sample.row.index} has no score of reward {reward!r} "
                       f"(has {', '.join(sample.rewards) or 'none'})")
    v = sample.rewards[reward]
    return 0.0 if v is None else float(v)
