"""Typed configuration: nested dataclasses, loaded from YAML, overridden with dotted keys, validated at load.

Why dataclasses and not a dict: every key is declared once, with its type, default and one line of
documentation (the field's comment, which `docs/config.md` mirrors); a misspelt key in a YAML file or on the
command line fails before any worker starts, with a message that names the key and suggests the closest one.

    cfg = load_config(GRPOConfig, "examples/easy_vqa/grpo.yaml", ["trainer.lr=3e-4", "max_steps=20"])
"""
from __future__ import annotations

import dataclasses
import difflib
import pathlib
import re
import types
import typing
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the key."""


# ----------------------------------------------------------------------------------------------- sections
@dataclasses.dataclass
class ModelConfig:
    path: str = "tiny:vlm"  # transformers model id or local path; "tiny:vlm" / "tiny:text" build a tiny policy offline
    tokenizer: str = "small"  # tiny models only: "small" (BPE trained on the data's text) or "qwen" (real Qwen vocabulary)
    dtype: str = "float32"  # policy dtype: float32 | bfloat16 | float16
    freeze: list = dataclasses.field(default_factory=list)  # parts kept frozen: any of "vision", "projector", "language"
    image_size: int = 84  # tiny:vlm only: images are resized to this many pixels per side
    hidden_size: int = 128  # tiny models only: width of the language model
    num_layers: int = 2  # tiny models only: depth of the language model
    vision_depth: int = 2  # tiny:vlm only: depth of the vision tower
    vision_init_std: float = 0.0  # tiny:vlm only: std of the vision tower's weight matrices (0: transformers' default)
    vocab_size: int = 512  # tiny models with tokenizer "small": the BPE's target vocabulary size
    seed: int = 0  # tiny models only: the weight-initialisation seed
    lora: dict = dataclasses.field(default_factory=dict)  # LoRA adapters (peft): {r, alpha, dropout, targets: [language, vision, projector]}; empty: full fine-tuning (rlkit/policy/lora.py)


@dataclasses.dataclass
class DataConfig:
    source: str = "easy_vqa"  # built-in source name, a local file/folder (json, jsonl, csv, parquet), or a hub data set name
    split: str = "train"  # split to train on
    columns: dict = dataclasses.field(default_factory=dict)  # rename map {canonical: yours}, e.g. {prompt: question, answer: label}
    source_kwargs: dict = dataclasses.field(default_factory=dict)  # extra arguments for a built-in source (e.g. {types: [color]})
    limit: int = 0  # use at most this many rows (0: all)
    shuffle: bool = True  # reshuffle the prompt order every epoch (seeded)
    system_prompt: str = ""  # optional system message rendered before every prompt
    on_bad_row: str = "error"  # a row that cannot be used (missing field, undecodable image): "error" stops, "skip" counts and continues (bad rows among data.check_rows are left out up front, reported in one line)
    check_rows: int = 10000  # rows checked before Ray starts (prompt, answer, mode, image files exist and decode; each distinct image once): the first N (0: off, -1: all); rows past them are checked when drawn
    eval_source: str = ""  # held-out data for trainer.eval_every and `rlkit eval` ("": data.source; needed when data.source is a plain file, which has no splits)
    eval_split: str = "test"  # split of the held-out data
    eval_limit: int = 200  # held-out rows answered per evaluation (the first ones of the split; 0: all)


@dataclasses.dataclass
class ModesConfig:
    deep_ratio: float = 0.0  # share of samples rendered in deep (thinking) mode: 0 = fast only, 1 = deep only
    schedule: list = dataclasses.field(default_factory=list)  # deep ratio over steps: [[step, ratio], ...], linear between points, constant outside; replaces deep_ratio when set (empty: constant deep_ratio)
    per: str = "prompt"  # draw the mode once per "prompt" (whole group shares it) or per "sample"
    mode_column: str = "mode"  # a row whose column of this name is "fast" or "deep" pins its mode


@dataclasses.dataclass
class RolloutConfig:
    engine: str = "vllm"  # "vllm" (default) or "hf" (transformers generate: reference and fallback)
    n: int = 8  # completions per prompt (the GRPO group size)
    temperature: float = 1.0  # sampling temperature
    top_p: float = 1.0  # nucleus sampling threshold
    max_tokens: int = 16  # maximum new tokens per completion
    max_model_len: int = 1024  # vLLM: longest prompt + completion in tokens
    kv_cache_gib: float = 0.0  # vLLM CPU: KV cache size in GiB; 0: what the engine can run at once (vLLM's max_num_seqs sequences of max_model_len tokens), at most 1 GiB (VLLM_CPU_KVCACHE_SPACE, if set, wins)
    gpu_memory_utilization: float = 0.5  # vLLM GPU: share of GPU memory for the engine
    num_cpus: float = 1.0  # Ray CPUs reserved for each rollout actor
    num_gpus: float = 0.0  # Ray GPUs reserved for each rollout actor (vLLM's CUDA build needs >= 1, or a fraction when sharing)
    num_workers: int = 1  # rollout engine actors; each step's requests are split across them balanced by sample count (vLLM: same samples as one worker, per-request seeds)
    max_retries: int = 2  # a rollout worker that dies is recreated (with the last synced weights) and its requests resent, at most this many times per call
    timeout_s: float = 0.0  # a rollout worker call (generate, weight sync) longer than this counts as hung: killed, recreated, retried like a dead one (0: no limit)
    sleep: bool = False  # engines free their memory while the policy trains (vLLM sleep mode level 1 on GPUs; the hf engine moves its weights off the GPU); no effect where the backend cannot (vLLM's CPU build)
    stream_chunks: int = 1  # generate each step's prompts in this many chunks of whole groups; the policy accumulates a chunk's gradient while the engines generate the next, one optimizer step at the end (same update as 1, on-policy; needs trainer.mini_batch_size 0, ppo_epochs 1, no rollout.sleep, a per-group advantage) (docs/performance.md)
    max_staleness: int = 0  # asynchronous GRPO: the engines collect the next steps' batches while the policy trains, each sampled by weights at most this many versions old (0: on-policy, one step after the other; needs rollout.stream_chunks 1, no rollout.sleep) (docs/async.md)
    engine_kwargs: dict = dataclasses.field(default_factory=dict)  # extra vllm.LLM arguments for every engine, e.g. {tensor_parallel_size: 2} on GPUs (give each actor that many rollout.num_gpus)


@dataclasses.dataclass
class AlgorithmConfig:
    advantage: str = "grpo"  # advantage estimator, by registered name (docs/algorithms.md)
    advantage_opts: dict = dataclasses.field(default_factory=dict)  # keyword arguments of the advantage estimator
    policy_loss: str = "ppo_clip"  # policy loss, by registered name
    loss_opts: dict = dataclasses.field(default_factory=dict)  # keyword arguments of the policy loss (clip_low, clip_high, aggregation, ...)
    kl_coef: float = 0.0  # weight of the KL penalty to the reference policy, in the loss or (kl_in_reward) in the reward (0: no reference model is loaded)
    kl_estimator: str = "k3"  # KL estimator by registered name: k1, k2, k3
    kl_in_reward: bool = False  # True: subtract kl_coef * sum_t k1 from each reward before advantages (no KL term in the loss)
    group_filter: str = "none"  # drop uninformative prompt groups before the update and refill the batch: none, all_equal or std_ema (rlkit/step/filters.py)
    group_filter_opts: dict = dataclasses.field(default_factory=dict)  # keyword arguments of the group filter (std_ema: beta, ema, ema_start_step, filter_start_step)
    refill_rounds: int = 3  # after filtering, at most this many extra rollout rounds of fresh prompts to fill the batch (0: train on what is kept)
    mode_groups: str = "prompt"  # advantage groups with mixed modes: "prompt" normalises over each prompt's whole group, "mode" within each (prompt, mode) subgroup (docs/algorithms.md)


@dataclasses.dataclass
class TrainerConfig:
    prompts_per_step: int = 4  # prompts per GRPO step (each sampled rollout.n times)
    lr: float = 1e-4  # AdamW learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    betas: list = dataclasses.field(default_factory=lambda: [0.9, 0.999])  # AdamW betas
    adam_eps: float = 1e-8  # AdamW eps (the denominator's floor): elements whose gradient is near it get steps of about lr whatever their size
    max_grad_norm: float = 1.0  # gradient clipping by global norm (0: off)
    micro_batch_size: int = 64  # sequences per forward/backward pass (gradient accumulation above it)
    mini_batch_size: int = 0  # sequences per optimizer step (0: the whole rollout batch, one step per epoch)
    ppo_epochs: int = 1  # passes over the rollout batch; old logprobs are computed once when there is more than one step
    shuffle_minibatches: bool = True  # every PPO epoch cuts a fresh permutation of the rollout batch into mini-batches, seeded by (seed, step, epoch) (no effect with one mini-batch)
    num_cpus: float = 1.0  # Ray CPUs reserved for each policy rank actor
    num_gpus: float = 0.0  # Ray GPUs reserved for each policy rank actor (0: none; 0.5 with rollout.num_gpus 0.5 shares one GPU with the engine)
    timeout_s: float = 0.0  # a call to the policy ranks (train step, checkpoint, the first one includes loading the model) longer than this counts as a hung rank: every rank is stopped and the run ends naming the last checkpoint (0: no limit)
    num_ranks: int = 1  # policy ranks (Ray actors in one torch.distributed group: gloo on CPU, NCCL on GPU); each trains a slice of every mini-batch, gradients summed before clipping (docs/scaling.md)
    strategy: str = "replicate"  # data parallelism over trainer.num_ranks: "replicate" (every rank holds the whole model and AdamW state) or "fsdp2" (FSDP2 shards weights, gradients and AdamW state per layer across the ranks; no LoRA) (docs/scaling.md)
    gradient_checkpointing: bool = False  # recompute activations during backward (transformers' gradient checkpointing): on an H100, 0.5-3.3B models, 2-6x less peak memory for a 2.4-2.7x slower update (docs/performance.md)
    device: str = "auto"  # where the policy worker trains: "auto" (CUDA when the process sees a GPU, else CPU), "cpu", "cuda", "cuda:1"
    accuracy_reward: str = ""  # the reward (name as in reward/<name>/mean) whose score is "accuracy" in mode/<m>/accuracy and evaluations ("": the first reward listed)
    eval_every: int = 0  # held-out evaluation (greedy, each of eval_modes) before the first step, every N steps and after the last (0: off)
    eval_modes: list = dataclasses.field(default_factory=lambda: ["fast", "deep"])  # modes answered in held-out evaluations (trainer.eval_every, `rlkit eval`)


@dataclasses.dataclass
class RewardConfig:
    name: str = ""  # a registered reward (rewards registry), or
    path: str = ""  # a callable by path: "my_rewards.py:score" or "package.module:score"
    weight: float = 1.0  # weight in the summed reward used for advantages
    kwargs: dict = dataclasses.field(default_factory=dict)  # keyword arguments bound to the reward
    completion_format: str = "text"  # what the reward receives: "text" (plain strings) or "messages" (TRL's conversational form)


@dataclasses.dataclass
class LoggingConfig:
    progress: bool = True  # show a progress bar (steps, reward, time left)
    tensorboard: bool = False  # also write TensorBoard events under output_dir/tensorboard
    save_every: int = 0  # write a checkpoint every N steps (0: only at the end)
    keep_checkpoints: int = 2  # newest checkpoints kept on disk (0: keep all)
    log_samples: bool = True  # write samples.jsonl (one object per scored completion)
    verbose: bool = False  # also show third-party INFO/WARNING output (vLLM, Ray, transformers, torch) on the console (`--verbose`); it always goes to output_dir/logs/


@dataclasses.dataclass
class RayConfig:
    address: str = ""  # "" starts a local Ray on this machine (see ray.loopback); "auto" or host:port joins a cluster started with `ray start` (docs/scaling.md)
    num_cpus: int = 0  # CPUs for a local Ray (0: all of this machine's)
    loopback: bool = True  # a local Ray listens on 127.0.0.1 only (false: on the machine's address, reachable from other hosts)
    placement: str = "none"  # "none": Ray places each actor where it fits; "colocate": rollout worker i and policy rank i share one placement-group bundle (same device/node); "separate": one placement group per pool (docs/scaling.md)
    placement_strategy: str = "PACK"  # Ray placement-group strategy of the bundles: PACK, SPREAD, STRICT_PACK, STRICT_SPREAD
    placement_timeout_s: float = 120.0  # wait at most this long for Ray to reserve the bundles, or (ray.address) for the cluster to grow to what the actors ask; then stop, naming them (a local Ray too small fails at once)


@dataclasses.dataclass
class ColdStartSection:
    steps: int = 0  # supervised steps on the training rows before RL, from model.path (0: none). The checkpoint is output_dir/cold_start, part of the run: reused by --resume when every cold_start, model and data setting matches (rlkit/drivers/cold_start.py). 300 steps of the tiny text model: ~35 s on 2 CPU cores
    lr: float = 1e-3  # AdamW learning rate of the cold start
    batch_size: int = 32  # rows per supervised step
    warmup_steps: int = 10  # linear learning-rate warm-up steps
    modes: list = dataclasses.field(default_factory=lambda: ["fast", "deep"])  # formats taught: each training row once per mode (fast: answer; deep: <think> steps </think> answer)
    reasoning_column: str = "reasoning"  # column with the worked steps written inside the think block of deep rows
    source: str = ""  # data for the cold start, like data.source (empty: data.source); rows need prompt, answer and, for deep rows, the reasoning column
    split: str = ""  # split of cold_start.source (empty: data.split)
    limit: int = 0  # rows used for the cold start (0: all)


@dataclasses.dataclass
class GRPOConfig:
    output_dir: str = "runs/grpo"  # run directory: config.yaml, metrics.jsonl, samples.jsonl, checkpoints/
    seed: int = 0  # seed for data order, mode draws and sampling
    max_steps: int = 10  # GRPO steps to run
    reward_timeout_s: float = 10.0  # time limit of each reward call
    reward_retries: int = 1  # a reward call that hung (over reward_timeout_s) or whose worker process died is retried on those samples at most this many times (a reward that raises is not)
    strict_rewards: bool = False  # the first step in which a reward fails on any sample (raises, times out, returns a wrong length or type, NaN or inf) stops the run (default: None for that sample, counted; see reward_fail_steps)
    reward_fail_steps: int = 2  # stop the run when a reward fails on at least reward_fail_frac of a step's samples for this many consecutive steps, naming the reward and the last checkpoint (0: never)
    reward_fail_frac: float = 1.0  # share of a step's samples a reward must fail on for the step to count toward reward_fail_steps (1.0: every sample)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    modes: ModesConfig = dataclasses.field(default_factory=ModesConfig)
    rollout: RolloutConfig = dataclasses.field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = dataclasses.field(default_factory=AlgorithmConfig)
    trainer: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)
    rewards: list = dataclasses.field(default_factory=lambda: [RewardConfig(name="exact_match")])  # list of RewardConfig
    logging: LoggingConfig = dataclasses.field(default_factory=LoggingConfig)
    ray: RayConfig = dataclasses.field(default_factory=RayConfig)
    cold_start: ColdStartSection = dataclasses.field(default_factory=ColdStartSection)
    labeler: dict = dataclasses.field(default_factory=dict)  # labeler of the rlaifv reward: keys of rlkit.run.labeler.LabelerConfig (path: policy = the initial policy, frozen)


# Fields whose items are sections themselves.
LIST_ITEM_TYPES = {("GRPOConfig", "rewards"): RewardConfig}

CHOICES = {
    "model.dtype": ("float32", "bfloat16", "float16"),
    "model.tokenizer": ("small", "qwen"),
    "data.on_bad_row": ("error", "skip"),
    "modes.per": ("prompt", "sample"),
    "algorithm.mode_groups": ("prompt", "mode"),
    "rollout.engine": ("vllm", "hf"),
    "rewards.completion_format": ("text", "messages"),
}


# ----------------------------------------------------------------------------------------------- loading
def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Check (and gently convert) one leaf value against its declared type."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None:
            return None
        return _coerce(key, value, args[0])
    if typ is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if typ is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if typ is int and isinstance(value, bool):
        raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
    if typ in (int, str, bool, list, dict) and isinstance(value, typ):
        return value
    if typ is int and isinstance(value, float) and value.is_integer():
        return int(value)
    name = getattr(typ, "__name__", str(typ))
    raise ConfigError(f"config key '{key}': expected {name}, got {type(value).__name__} {value!r}")


def _build(cls, data: Any, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"config key '{prefix or '<root>'}': expected a mapping, got {type(data).__name__}")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config key '{full}'{hint}; valid keys here: {', '.join(fields)}")
        typ = hints[key]
        if dataclasses.is_dataclass(typ):
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"config key '{full}': expected a mapping, got {type(value).__name__} {value!r}")
            kwargs[key] = _build(typ, value if value is not None else {}, f"{full}.")
        elif (cls.__name__, key) in LIST_ITEM_TYPES:
            item_cls = LIST_ITEM_TYPES[(cls.__name__, key)]
            if not isinstance(value, list):
                raise ConfigError(f"config key '{full}': expected a list, got {type(value).__name__}")
            kwargs[key] = [_build(item_cls, v, f"{full}[{i}].") for i, v in enumerate(value)]
        else:
            kwargs[key] = _coerce(full, value, typ)
        choices = CHOICES.get(re.sub(r"\[\d+\]", "", full))
        if choices and kwargs[key] not in choices:
            raise ConfigError(f"config key '{full}': {kwargs[key]!r} is not one of {', '.join(choices)}")
    built = cls(**kwargs)
    check_ranges(built, prefix, recursive=False)  # numeric ranges (rlkit/config_ranges.py), defaults included
    return built


def check_ranges(section, prefix: str = "", recursive: bool = True) -> None:
    """ConfigError naming the first key of `section` outside its allowed range (rlkit/config_ranges.py)."""
    from rlkit.config_ranges import range_errors

    errors = range_errors(section, prefix, recursive)
    if errors:
        raise ConfigError(errors[0])


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{dotted}': '{p}' is not a section")
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> dict:
    """`["trainer.lr=3e-4", "rewards=[{name: exact_match}]"]` -> nested dict; values are parsed as YAML."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override '{key}': cannot parse value {raw!r}: {yaml_problem(e)}") from None
        _set_dotted(tree, key.strip(), value)
    return tree


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def yaml_problem(e: Exception) -> str:
    """A YAML error in one line: where (line, column) and what, without PyYAML's multi-line excerpt."""
    mark, problem = getattr(e, "problem_mark", None), getattr(e, "problem", None)
    if mark is None or not problem:
        return " ".join(str(e).split())
    context = getattr(e, "context", None)
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" + (f" ({context})" if context else "")


def load_tree(path: str | pathlib.Path | None = None, overrides: list[str] | None = None) -> dict:
    """The raw config tree: a YAML file (optional) with dotted overrides merged in; ConfigError on a bad file."""
    tree: dict = {}
    if path is not None:
        p = pathlib.Path(path)
        if not p.exists():
            raise ConfigError(f"config file not found: {p}")
        try:
            tree = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {yaml_problem(e)}") from None
    return _merge(tree, parse_overrides(overrides or []))


def load_config(cls, path: str | pathlib.Path | None = None, overrides: list[str] | None = None):
    """Load `cls` from a YAML file (optional) plus dotted overrides; raise ConfigError naming the bad key."""
    return _build(cls, load_tree(path, overrides), "")


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def dump_config(cfg, path: str | pathlib.Path) -> None:
    pathlib.Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def check_grpo_fields(cfg: GRPOConfig) -> None:
    """Cross-field checks that types alone cannot express (and the ranges, for a config built in code). Checks of
    registered names (losses, filters, modes, strategies, placements, LoRA) need the code that registers them:
    `rlkit.run.checks.check_grpo` runs these and those, before Ray starts."""
    check_ranges(cfg)
    bad = set(cfg.model.freeze) - {"vision", "projector", "language"}
    if bad:
        raise ConfigError(f"config key 'model.freeze': unknown parts {sorted(bad)}; use vision, projector, language")
    if not cfg.rewards:
        raise ConfigError("config key 'rewards': at least one reward is needed")
    for i, r in enumerate(cfg.rewards):
        if bool(r.name) == bool(r.path):
            raise ConfigError(f"config key 'rewards[{i}]': give exactly one of 'name' or 'path'")
    strategies = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
    if cfg.ray.placement_strategy not in strategies:
        raise ConfigError(f"config key 'ray.placement_strategy': {cfg.ray.placement_strategy!r}; use one of "
                          f"{', '.join(strategies)}")
    if cfg.algorithm.kl_in_reward and cfg.algorithm.kl_coef <= 0:
        raise ConfigError("config key 'algorithm.kl_in_reward': needs algorithm.kl_coef > 0")


def check_async(cfg: GRPOConfig) -> None:
    """rollout.max_staleness > 0 (rlkit/step/ahead.py): the engines generate while the policy trains."""
    k = cfg.rollout.max_staleness
    for key, bad, why in (("rollout.stream_chunks", cfg.rollout.stream_chunks != 1, "1 (streamed steps are on-policy)"),
                          ("rollout.sleep", cfg.rollout.sleep, "false (the engines generate while the policy trains)")):
        if k and bad:
            raise ConfigError(f"config key 'rollout.max_staleness': {k} needs {key} {why}")


def check_streaming(cfg: GRPOConfig, batch_level: bool = False) -> None:
    """rollout.stream_chunks > 1 (rlkit/policy/streaming.py) needs an update that can start before the batch is whole;
    `batch_level`: the advantage estimator normalises over the whole batch (known to rlkit.run.checks)."""
    k = cfg.rollout.stream_chunks
    if k == 1:
        return
    clashes = [(key, why) for key, bad, why in (
        ("trainer.mini_batch_size", cfg.trainer.mini_batch_size != 0, "0 (one optimizer step over the whole batch)"),
        ("trainer.ppo_epochs", cfg.trainer.ppo_epochs != 1, "1"),
        ("rollout.sleep", cfg.rollout.sleep, "false (the engines generate while the policy trains)"),
        ("algorithm.advantage", batch_level, "a per-group estimator (this one normalises over the whole batch)"),
    ) if bad]
    if clashes:
        raise ConfigError(f"config key 'rollout.stream_chunks': {k} needs " + "; ".join(
            f"{key} {why}" for key, why in clashes))
