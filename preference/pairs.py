"""RLAIF-V preference pairs from scored responses: threshold, k per prompt, ties, length balance.

Why this exact recipe (RLAIF-V, arXiv 2405.17220, and its released `utils/` scripts):
1. Candidates: the n responses to one prompt, sampled with the same decoding settings, each with a score
   (RLAIF-V: minus the number of rejected claims). A response without a score (None: no claims, an
   unfinished think block, a failed labeler call) is never paired, as in the reference code, where a
   response with no facts has no score at all.
2. Every two responses whose scores differ by at least `threshold` (default 1) form a candidate pair, the
   higher score chosen. Scores closer than that, equal scores included, are ties: never a pair (DPO on a
   tie would teach noise). Identical texts are never paired.
3. Keep up to `k` pairs per prompt (paper: 2), drawn at random with a seeded generator (`k=0`: all).
4. Length balance, over the whole set: a response with fewer claims tends to have fewer rejected ones, so
   chosen responses drift shorter (or longer, for other scorers) than rejected ones and DPO would learn
   length instead of faithfulness. As in the reference `get_pairs_filter_shorten.py`, drop pairs whose
   relative length gap, in the direction of the bias, exceeds a ratio r, and pick r in {0, 0.02, ..., 0.98,
   no filter} that minimises |mean chosen length - mean rejected length| / mean rejected length. Ties
   between ratios go to the largest (most pairs kept; the reference takes the smallest). Lengths are in
   words by default (the reference's `len(text.split())`), or tokens when token ids are given.

Pure logic over scores and texts: no model, no driver import (tests use hand-made scores).
"""
from __future__ import annotations

import dataclasses
import random
from typing import Sequence

RATIOS = tuple(round(0.02 * i, 2) for i in range(50))  # 0.00 .. 0.98, as the reference searches
UNITS = ("words", "tokens", "chars")


@dataclasses.dataclass
class Candidate:
    """One scored response to a prompt."""

    text: str  # the response as decoded
    score: float | None  # higher is better; None: unscored, never paired
    token_ids: list | None = None  # sampled ids (length in tokens; kept for DPO)


@dataclasses.dataclass
class Pair:
    """A preference between two responses of prompt `group` (indices into that prompt's candidates)."""

    group: int
    chosen: int
    rejected: int
    chosen_score: float
    rejected_score: float
    chosen_len: int
    rejected_len: int


def response_length(c: Candidate, unit: str = "words") -> int:
    """Length of a response: words (whitespace split), tokens (len(token_ids)) or characters."""
    if unit == "words":
        return len(c.text.split())
    if unit == "tokens":
        if c.token_ids is None:
            raise ValueError("length unit 'tokens' needs token_ids on every candidate")
        return len(c.token_ids)
    if unit == "chars":
        return len(c.text)
    raise ValueError(f"length unit must be one of {', '.join(UNITS)}, got {unit!r}")


def candidate_pairs(scores: Sequence[float | None], threshold: float = 1.0,
                    texts: Sequence[str] | None = None) -> list[tuple[int, int]]:
    """All (chosen, rejected) index pairs with score[chosen] - score[rejected] >= threshold.

    Scores closer than `threshold` (ties) and None scores never pair; with `texts`, identical texts never
    pair. Order: by (i, j) with i < j, the lower index first, as `itertools.combinations` gives them.

    >>> candidate_pairs([0, -1, -1, None, -3])
    [(0, 1), (0, 2), (0, 4), (1, 4), (2, 4)]
    >>> candidate_pairs([0, -1, -3], threshold=2)
    [(0, 2), (1, 2)]
    """
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0 (equal scores are never a preference), got {threshold}")
    out = []
    n = len(scores)
    for i in range(n):
        for j in range(i + 1, n):
            si, sj = scores[i], scores[j]
            if si is None or sj is None:
                continue
            if texts is not None and texts[i].strip() == texts[j].strip():
                continue
            if si - sj >= threshold:
                out.append((i, j))
            elif sj - si >= threshold:
                out.append((j, i))
    return out


def _bias_gap(p: Pair, shorter: bool) -> float:
    """Relative length gap of a pair in the direction of the set's bias (0 when the pair goes the other way)."""
    if shorter:  # chosen shorter on average: the reference's (rejected - chosen) / rejected
        return (p.rejected_len - p.chosen_len) / p.rejected_len if p.rejected_len else 0.0
    return (p.chosen_len - p.rejected_len) / p.chosen_len if p.chosen_len else 0.0


def length_stats(pairs: Sequence[Pair]) -> dict[str, float]:
    """Mean chosen/rejected lengths, their relative gap, and the shares of pairs with a shorter/longer chosen."""
    n = len(pairs)
    if not n:
        return {"pairs": 0.0, "chosen_len": float("nan"), "rejected_len": float("nan"), "rel_gap": float("nan"),
                "chosen_shorter_frac": float("nan"), "chosen_longer_frac": float("nan")}
    c = sum(p.chosen_len for p in pairs) / n
    r = sum(p.rejected_len for p in pairs) / n
    return {"pairs": float(n), "chosen_len": c, "rejected_len": r, "rel_gap": abs(c - r) / r if r else abs(c - r),
            "chosen_shorter_frac": sum(p.chosen_len < p.rejected_len for p in pairs) / n,
            "chosen_longer_frac": sum(p.chosen_len > p.rejected_len for p in pairs) / n}


def length_balance(pairs: list[Pair], ratios: Sequence[float] = RATIOS) -> tuple[list[Pair], float | None]:
    """Drop the pairs whose length gap in the bias direction exceeds the ratio that best balances the set.

    Returns (kept pairs, chosen ratio; None when no filter balanced better than keeping everything).

    >>> P = lambda c, r: Pair(0, 0, 1, 0.0, -1.0, c, r)
    >>> kept, ratio = length_balance([P(2, 10), P(10, 10), P(9, 10), P(10, 9)])
    >>> ratio, [(p.chosen_len, p.rejected_len) for p in kept]
    (0.78, [(10, 10), (9, 10), (10, 9)])
    """
    if not pairs:
        return [], None
    stats = length_stats(pairs)
    shorter = stats["chosen_len"] < stats["rejected_len"]
    best_gap, best_ratio, best = stats["rel_gap"], None, list(pairs)
    for ratio in sorted(ratios, reverse=True):  # larger ratios first: on a tie the one keeping more pairs wins
        kept = [p for p in pairs if _bias_gap(p, shorter) <= ratio + 1e-12]
        if not kept:
            continue
        gap = length_stats(kept)["rel_gap"]
        if gap < best_gap - 1e-12:
            best_gap, best_ratio, best = gap, ratio, kept
    return best, best_ratio


def build_pairs(groups: Sequence[Sequence[Candidate]], *, threshold: float = 1.0, k: int = 2,
                balance_length: bool = True, length_unit: str = "words",
                seed: int = 0) -> tuple[list[Pair], dict[str, float]]:
    """Pairs over many prompts (groups[g] = the candidates of prompt g), and statistics for the log.

    Steps as in the module docstring: candidate pairs per prompt (threshold, ties, identical texts), up to
    `k` per prompt (seeded random choice; 0 keeps all), then the length balance over all prompts. The
    result is sorted by (group, chosen, rejected), so it does not depend on the sampling order.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0 (0: keep every pair), got {k}")
    if length_unit not in UNITS:
        raise ValueError(f"length unit must be one of {', '.join(UNITS)}, got {length_unit!r}")
    rng = random.Random(seed)
    pairs: list[Pair] = []
    candidates = prompts_with_pairs = unscored = 0
    for g, cands in enumerate(groups):
        unscored += sum(c.score is None for c in cands)
        idx = candidate_pairs([c.score for c in cands], threshold, [c.text for c in cands])
        candidates += len(idx)
        if k and len(idx) > k:
            idx = rng.sample(idx, k)
        prompts_with_pairs += bool(idx)
        for i, j in idx:
            ci, cj = cands[i], cands[j]
            pairs.append(Pair(g, i, j, float(ci.score), float(cj.score),
                              response_length(ci, length_unit), response_length(cj, length_unit)))
    before = length_stats(pairs)
    ratio = None
    if balance_length:
        pairs, ratio = length_balance(pairs)
    pairs.sort(key=lambda p: (p.group, p.chosen, p.rejected))
    after = length_stats(pairs)
    stats = {"pairs/prompts": float(len(groups)), "pairs/unscored_responses": float(unscored),
             "pairs/candidates": float(candidates), "pairs/prompts_with_pairs": float(prompts_with_pairs),
             "pairs/before_length_filter": before["pairs"], "pairs/kept": after["pairs"],
             "pairs/length_ratio": float("nan") if ratio is None else ratio,
             "pairs/chosen_len": after["chosen_len"], "pairs/rejected_len": after["rejected_len"],
             "pairs/rel_len_gap_before": before["rel_gap"], "pairs/rel_len_gap": after["rel_gap"],
             "pairs/score_margin_mean": (sum(p.chosen_score - p.rejected_score for p in pairs) / len(pairs)
                                         if pairs else float("nan"))}
    return pairs, stats
