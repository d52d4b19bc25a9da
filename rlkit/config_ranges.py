"""Allowed ranges of the numeric config keys: one table, checked when a config is loaded (rlkit/config.py).

Keyed by section class name and field, so a section shared by several configs (TrainerConfig in GRPO, DPO and
RLAIF-V) is checked the same everywhere. A spec is ">= 0", "> 0", "<= 1", an interval "[0, 1]" / "(0, 1]" /
"[0, 1)", or "each <spec>" for a list of numbers. A value outside gives one line naming the key, the value and
the allowed range:

    config key 'trainer.lr': -1.0 is out of range (allowed: > 0)

Every float key is also checked to be finite (YAML's .nan / .inf). docs/config.md shows each key's range.
"""
from __future__ import annotations

import dataclasses
import math
import re

RANGES: dict[str, dict[str, str]] = {
    "GRPOConfig": {"max_steps": ">= 1", "reward_timeout_s": "> 0", "reward_retries": ">= 0",
                   "reward_fail_steps": ">= 0", "reward_fail_frac": "(0, 1]"},
    "ModelConfig": {"image_size": ">= 1", "hidden_size": ">= 1", "num_layers": ">= 1", "vision_depth": ">= 1",
                    "vision_init_std": ">= 0", "vocab_size": ">= 1", "seed": ">= 0"},
    "DataConfig": {"limit": ">= 0", "eval_limit": ">= 0", "check_rows": ">= -1"},
    "ModesConfig": {"deep_ratio": "[0, 1]"},
    "RolloutConfig": {"n": ">= 1", "temperature": "> 0", "top_p": "(0, 1]", "max_tokens": ">= 1",
                      "max_model_len": ">= 1", "kv_cache_gib": ">= 0", "gpu_memory_utilization": "(0, 1]",
                      "num_cpus": ">= 0", "num_gpus": ">= 0", "num_workers": ">= 1", "max_retries": ">= 0",
                      "timeout_s": ">= 0", "stream_chunks": ">= 1", "max_staleness": ">= 0"},
    "AlgorithmConfig": {"kl_coef": ">= 0", "refill_rounds": ">= 0"},
    "TrainerConfig": {"prompts_per_step": ">= 1", "lr": "> 0", "weight_decay": ">= 0", "betas": "each [0, 1)",
                      "adam_eps": "> 0", "max_grad_norm": ">= 0", "micro_batch_size": ">= 1", "mini_batch_size": ">= 0",
                      "ppo_epochs": ">= 1", "num_cpus": ">= 0", "num_gpus": ">= 0", "timeout_s": ">= 0",
                      "num_ranks": ">= 1", "eval_every": ">= 0"},
    "LoggingConfig": {"save_every": ">= 0", "keep_checkpoints": ">= 0"},
    "RayConfig": {"num_cpus": ">= 0", "placement_timeout_s": "> 0"},
    # rlkit/drivers/dpo.py
    "DPODataConfig": {"limit": ">= 0"},
    "DPOSection": {"beta": "> 0", "epochs": ">= 1", "max_steps": ">= 0", "batch_size": ">= 1",
                   "warmup_ratio": "[0, 1)", "eval_every": ">= 0"},
    # rlkit/drivers/rlaifv.py
    "RLAIFVConfig": {"rounds": ">= 1", "prompts_per_round": ">= 1"},
    "LabelerConfig": {"batch_size": ">= 1", "accept_odds": "> 0", "lm_max_tokens": ">= 1", "max_claims": ">= 1",
                      "short_answer_words": ">= 0"},
    "PairsConfig": {"threshold": "> 0", "k": ">= 0"},
    # rlkit/drivers/ablation.py
    "AblationSection": {"hybrid_deep_ratio": "[0, 1]", "deep_only_ratio": "[0, 1]"},
    "ColdStartSection": {"steps": ">= 0", "lr": "> 0", "batch_size": ">= 1", "warmup_steps": ">= 0", "limit": ">= 0"},
    "EvalSection": {"limit": ">= 0", "every": ">= 1", "max_tokens": ">= 0"},
}

_BOUND = re.compile(r"^(>=|>|<=|<)\s*(-?[\d.e+-]+)$")
_INTERVAL = re.compile(r"^([\[(])\s*(-?[\d.e+-]+)\s*,\s*(-?[\d.e+-]+)\s*([\])])$")


def allowed(spec: str, value) -> bool:
    """Whether the number `value` lies in `spec` (see the module docstring); a bad spec raises ValueError."""
    if spec.startswith("each "):
        return isinstance(value, (list, tuple)) and all(allowed(spec[5:], v) for v in value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return False
    m = _BOUND.match(spec)
    if m:
        op, b = m.group(1), float(m.group(2))
        return {">=": value >= b, ">": value > b, "<=": value <= b, "<": value < b}[op]
    m = _INTERVAL.match(spec)
    if m:
        lo, hi = float(m.group(2)), float(m.group(3))
        return ((value >= lo) if m.group(1) == "[" else (value > lo)) and \
               ((value <= hi) if m.group(4) == "]" else (value < hi))
    raise ValueError(f"bad range spec {spec!r}")


def range_errors(section, prefix: str = "", recursive: bool = False) -> list[str]:
    """One message per field of the dataclass instance `section` outside its range (or a non-finite float);
    `prefix` is the section's dotted key ("trainer."). `recursive`: nested sections and lists of them too."""
    out = []
    table = RANGES.get(type(section).__name__, {})
    for f in dataclasses.fields(section):
        value, key = getattr(section, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            if recursive:
                out += range_errors(value, f"{key}.", True)
            continue
        if isinstance(value, list) and value and all(dataclasses.is_dataclass(v) for v in value):
            if recursive:
                for i, v in enumerate(value):
                    out += range_errors(v, f"{key}[{i}].", True)
            continue
        spec = table.get(f.name)
        if spec is not None and not allowed(spec, value):
            out.append(f"config key '{key}': {value!r} is out of range (allowed: {spec})")
        elif spec is None and isinstance(value, float) and not math.isfinite(value):
            out.append(f"config key '{key}': {value!r} is not a finite number")
    return out


def range_of(cls_name: str, field: str) -> str:
    """The allowed range of one key, for docs/config.md ("" if unconstrained)."""
    return RANGES.get(cls_name, {}).get(field, "")


def algorithm_errors(algorithm, temperature: float = 1.0) -> list[str]:
    """The registered policy loss, advantage estimator and KL estimator, called with their options on a tiny batch
    before any worker starts: an unknown name, an option a function does not take, or one out of its range (the
    clip range of ppo_clip: 0 <= clip_low < 1, clip_high >= 0; dual_clip > 1; ...) is one line naming the key.
    `algorithm`: an AlgorithmConfig; `temperature`: rollout.temperature (engine logprobs are sent at 1.0 only)."""
    import torch

    from rlkit.algorithms import get_advantage_fn, get_kl_estimator, get_policy_loss

    one = torch.zeros(1, 1)
    a = algorithm
    checks = (
        ("policy_loss", get_policy_loss, "loss_opts", lambda fn: fn(
            one.clone().requires_grad_(), one, torch.ones(1), torch.ones(1, 1),
            rollout_logprobs=one if temperature == 1.0 else None, **a.loss_opts)),
        ("advantage", get_advantage_fn, "advantage_opts", lambda fn: fn(
            torch.tensor([0.0, 1.0]), torch.tensor([0, 0]), **a.advantage_opts)),
        ("kl_estimator", get_kl_estimator, None, lambda fn: fn(one, one)),
    )
    for name_key, get, opts_key, call in checks:
        name = getattr(a, name_key)
        try:
            fn = get(name)
        except ValueError as e:
            return [f"config key 'algorithm.{name_key}': {_first_line(e)}"]
        try:
            call(fn)
        except (TypeError, ValueError) as e:
            return [f"config key 'algorithm.{opts_key or name_key}': {name!r}: {_first_line(e)}"]
    return []


def _first_line(e: BaseException) -> str:
    lines = [line for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__
