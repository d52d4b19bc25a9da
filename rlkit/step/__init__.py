"""One GRPO step's parts: modes, collect (rollout, rewards, group filter, refill), per-mode metrics, reward health."""
