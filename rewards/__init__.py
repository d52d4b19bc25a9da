"""rlkit rewards: scorers with TRL's signature, a registry, plug-ins by path, and hard time limits.

A reward is any callable `fn(prompts, completions, **columns) -> list[float | None]` (None: does not apply
to this sample). The loop builds a `RewardScorer` from the config's `rewards:` list and calls it once per
step; see docs/rewards.md. This package is a leaf: it imports no rlkit driver, policy worker or rollout code.

Built-in rewards (registered by name): `exact_match`, `math_accuracy`, `multiple_choice`, `format`, `length`, and the
model-based `rlpr` (needs `resources.policy`; rewards/rlpr.py) and `rlaifv` (needs `resources.labeler`; docs/rlaifv.md).
"""
from rewards.registry import available_rewards, get_reward, load_path, register_reward, unregister_reward
from rewards.scorer import RewardError, RewardFailure, RewardScorer, RewardSpec, ScoreResult, compose

# Importing the built-ins registers them.
from rewards.basic import exact_match, multiple_choice  # noqa: E402
from rewards.math_equiv import math_accuracy  # noqa: E402
from rewards.structure import length_penalty, think_format  # noqa: E402
import rewards.rlpr  # noqa: E402,F401  (registers `rlpr`; the module, not the function, so `rewards.rlpr` stays importable)
import rewards.rlaifv  # noqa: E402,F401  (registers `rlaifv`; same reason)

__all__ = [
    "RewardError", "RewardFailure", "RewardScorer", "RewardSpec", "ScoreResult", "available_rewards", "compose",
    "exact_match", "get_reward", "length_penalty", "load_path", "math_accuracy", "multiple_choice",
    "register_reward", "think_format", "unregister_reward",
]
