"""`check_grpo`: every check of a GRPO config that can run before Ray and the engines start.

`rlkit.config.check_grpo_fields` checks the fields themselves (ranges, choices, cross-field rules); the checks
here need the code that registers or interprets a name (modes, sharding strategies, placements, losses and
advantage estimators tried on a one-token batch, group filters, LoRA settings), so they live above it, beside
the builders, and the config module imports nothing of rlkit above itself. Every driver calls `check_grpo`
first (GRPO's `prepare`, `rlkit eval`, the ablation). ConfigError names the key.
"""
from __future__ import annotations

from rlkit.algorithms import get_advantage_fn
from rlkit.config import ConfigError, GRPOConfig, check_async, check_grpo_fields, check_streaming
from rlkit.config_ranges import algorithm_errors
from rlkit.step.filters import FILTERS
from rlkit.policy.lora import lora_settings
from rlkit.step.modes import ModeError, check_schedule
from rlkit.distributed.orchestration import PLACEMENTS
from rlkit.records import MODES
from rlkit.policy.sharding import check_strategy


def check_modes(key: str, modes) -> None:
    """A list of thinking modes in a config: one or both of fast, deep, each once; else one line naming the key."""
    if not modes or any(m not in MODES for m in modes) or len(set(modes)) != len(modes):
        raise ConfigError(f"config key '{key}': {modes!r}: give one or both of {', '.join(MODES)}, each once")


def check_grpo(cfg: GRPOConfig) -> None:
    """The config's own checks, then those of every name it gives; ConfigError naming the key."""
    check_grpo_fields(cfg)
    try:
        check_schedule(cfg.modes.schedule)
    except ModeError as e:
        raise ConfigError(f"config key 'modes.schedule': {e}") from e
    check_modes("trainer.eval_modes", cfg.trainer.eval_modes)
    check_modes("cold_start.modes", cfg.cold_start.modes)
    try:
        check_strategy(cfg.trainer.strategy, lora=bool(cfg.model.lora))
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if cfg.ray.placement not in PLACEMENTS:
        raise ConfigError(f"config key 'ray.placement': {cfg.ray.placement!r}; use one of {', '.join(PLACEMENTS)}")
    check_async(cfg)  # rollout.max_staleness
    if cfg.rollout.stream_chunks != 1:
        try:
            batch_level = getattr(get_advantage_fn(cfg.algorithm.advantage), "batch_level", False)
        except ValueError as e:
            raise ConfigError(f"config key 'algorithm.advantage': {e}") from e
        check_streaming(cfg, batch_level)
    for error in algorithm_errors(cfg.algorithm, cfg.rollout.temperature):  # loss/advantage options, tried
        raise ConfigError(error)
    if cfg.model.lora:
        try:
            lora_settings(cfg.model.lora)
        except (TypeError, ValueError) as e:
            raise ConfigError(str(e) if "config key" in str(e) else f"config key 'model.lora': {e}") from e
    try:
        filter_cls = FILTERS.get(cfg.algorithm.group_filter)
    except ValueError as e:
        raise ConfigError(f"config key 'algorithm.group_filter': {e}") from e
    try:
        filter_cls(**cfg.algorithm.group_filter_opts)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config key 'algorithm.group_filter_opts': {e}") from e
