"""Distribution: Ray set-up and placement (orchestration), the engine pool and the policy group (pool), resources."""
