"""Per-round helpers of the RLAIF-V driver: the labeler calibration (`labeler.calibrate`) and the one-line
reason a round built no preference pairs.

Calibration. A random or untrained labeler answers every yes/no question about the same way: the tiny demo
model's odds P(yes)/P(no) sit in a narrow band (about 1.2 to 1.7) whatever the claim, so with the paper's rule
(accept when the odds exceed 1) every claim is accepted, every response scores 0 and no pair exists. With
`labeler.calibrate: true` the round's threshold is the median odds of the round's own claims, so the claims the
labeler believes least (the lower half) are rejected and responses differ. It is computed from the round's
verdict probabilities after scoring (no extra sampling or labeler pass) and redone every round, because with
`labeler.path: policy` the labeler changes after each DPO round. A trained labeler needs none of this: keep
`calibrate: false` and the paper's `accept_odds: 1`.
"""
from __future__ import annotations

import statistics
from typing import Sequence


def claim_odds(scores: Sequence) -> list[float]:
    """P(yes)/P(no) of every checked claim (a claim with P(no) = 0 counts as infinitely sure)."""
    return [c.p_yes / c.p_no if c.p_no > 0 else float("inf")
            for s in scores for c in s.claims if c.p_yes is not None]


def calibrate_verdicts(scores: Sequence) -> float | None:
    """Re-judge every claim with accept_odds = the median odds of all claims in `scores` (in place).

    A claim is accepted when P(yes) > median * P(no), the scorer's rule with the median as accept_odds, so
    claims at or below the median are rejected. Scores become -(rejected claims) (the rounds' unnormalised
    score). Returns the median, or None when no claim was checked (nothing changes).
    """
    odds = claim_odds(scores)
    if not odds:
        return None
    median = statistics.median(odds)
    for s in scores:
        if not s.claims or s.status != "scored":
            continue
        for c in s.claims:
            c.accepted = bool(c.p_yes > median * c.p_no)
        s.rejected = sum(not c.accepted for c in s.claims)
        s.score = 0.0 - s.rejected
    return median


def no_pairs_reason(scores: Sequence, groups: Sequence[Sequence], stats: dict, *, threshold: float,
                    calibrate: bool, accept_odds: float) -> str:
    """Why `build_pairs` returned nothing, in one line, and which key to change.

    scores: the round's RLAIFVScore results; groups: the candidates per prompt (their `.score`); stats:
    `build_pairs`'s statistics.
    """
    valued = [s for s in scores if s.score is not None]
    if not valued:
        statuses = sorted({s.status for s in scores})
        return (f"no response had a claim to check (statuses: {', '.join(statuses)}); raise rollout.max_tokens "
                "or check the prompts (data.*) so responses say something")
    claims = [c for s in valued for c in s.claims]
    rejected = sum(not c.accepted for c in claims)
    if stats.get("pairs/candidates", 0) > 0:
        return (f"pairs.length_balance dropped all {int(stats['pairs/candidates'])} candidate pairs (their chosen "
                "and rejected lengths could not be matched); set pairs.length_balance: false or sample more "
                "(prompts_per_round, rollout.n)")
    if rejected == 0:
        fix = ("set labeler.calibrate: true (for an untrained labeler) or use a stronger labeler.path"
               if not calibrate else "use a stronger labeler.path")
        return (f"the labeler accepted all {len(claims)} claims (accept_odds {accept_odds:g}), so every response "
                f"scored 0; {fix}")
    if rejected == len(claims) and len({s.score for s in valued}) == 1:
        return (f"the labeler rejected all {len(claims)} claims and every response has the same number of claims; "
                "lower labeler.accept_odds, set labeler.calibrate: true or use a stronger labeler.path")
    spread = max((max(c.score for c in g if c.score is not None) - min(c.score for c in g if c.score is not None))
                 for g in groups if sum(c.score is not None for c in g) >= 2) if any(
        sum(c.score is not None for c in g) >= 2 for g in groups) else 0.0
    return (f"within each prompt the responses' scores differ by at most {spread:g} (< pairs.threshold "
            f"{threshold:g}), or the differing responses are identical texts; lower pairs.threshold or raise "
            "rollout.n / rollout.temperature")
