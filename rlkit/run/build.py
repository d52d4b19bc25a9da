"""What turns a config into objects: one function for each thing, used by every command.

- `engine_options(rollout, seed, kind)`: the keyword arguments of `rollout.make_engine(kind, model_path=...)`
  besides the path, for every engine of every command (GRPO's actors, `rlkit eval`, `rlkit rlaifv`'s sampler,
  the ablation's evaluator, a vLLM claim LM); `rollout.engine_kwargs` reach every vLLM engine.
  `local_engine(rollout, seed, model_path)`: such an engine in this process.
- `resolve_model(model, out, texts)`: a local folder for `model.path`; `tiny:text` / `tiny:vlm` are built
  once into `out/base_model` (every `model.*` key of a tiny model, `vision_init_std` included).
- `reward_specs(cfg)`, `reward_scorer(cfg, strict, resources)`: the run's `rewards.RewardScorer`
  (ConfigError naming `rewards` when a reward cannot be built); `RewardResources`: what rewards declaring
  `needs` receive; `PolicyLogprobs`: the policy actor as `rewards.rlpr.PolicyAccess`.
- `load_prompt_data(cfg)`: the training rows with canonical columns.

The labeler (`labeler:`) is built by `rlkit.run.labeler.labeler_resources`.
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Callable, Iterable

from rlkit.config import ConfigError, ModelConfig, RolloutConfig
from rlkit.models.cache import build_tiny_cached
from rlkit.models.loading import check_model_path
from rlkit.policy.settings import WorkerSettings, settings_with
from rlkit.records import TrainItem

TINY = ("tiny:text", "tiny:vlm")


# ----------------------------------------------------------------------------------------------- engines
def engine_options(rollout: RolloutConfig, seed: int, kind: str | None = None) -> dict:
    """Keyword arguments of `rollout.make_engine(kind, model_path=...)` besides the path (`kind`: the engine,
    default `rollout.engine`). vLLM: the rollout section's memory and length settings and `rollout.engine_kwargs`;
    hf: the GPU when the rollout asks for one."""
    r = rollout
    if (kind or r.engine) == "vllm":
        return dict(max_model_len=r.max_model_len, seed=seed, kv_cache_gib=r.kv_cache_gib,
                    gpu_memory_utilization=r.gpu_memory_utilization, sleep_mode=r.sleep, **dict(r.engine_kwargs))
    return {"device": "cuda"} if r.num_gpus > 0 else {}  # hf: on the GPU Ray (or this process) has


def local_engine(rollout: RolloutConfig, seed: int, model_path: str, kind: str | None = None):
    """A rollout engine in this process (no Ray): `rlkit eval`, `rlkit rlaifv`, the ablation's evaluator."""
    from rollout import make_engine

    kind = kind or rollout.engine
    check_kv_cache(rollout, 1, kind)
    return make_engine(kind, model_path=model_path, **engine_options(rollout, seed, kind))


def check_kv_cache(rollout: RolloutConfig, engines: int, kind: str | None = None) -> None:
    """`engines` CPU engines of `rollout` on this machine: ResourceError when their KV caches cannot fit
    (rlkit/distributed/resources.py `kv_cache_problem`), before any starts."""
    from rlkit.distributed.resources import ResourceError, available_memory, kv_cache_problem

    problem = kv_cache_problem(kind or rollout.engine, rollout.num_gpus, rollout.kv_cache_gib, engines,
                               available_memory())
    if problem:
        raise ResourceError(problem)


# ----------------------------------------------------------------------------------------------- models
def resolve_model(model: ModelConfig, out: pathlib.Path, texts: Callable[[], Iterable[str]]) -> str:
    """A local folder for `model.path`; `tiny:*` is built (once) into `out/base_model` with a vocabulary
    trained on `texts()` (called only when a tiny model is built). Other paths are checked to exist."""
    path = model.path
    if not path.startswith("tiny:"):
        check_model_path(path)
        return path
    if path not in TINY:
        raise ConfigError(f"config key 'model.path': {path!r}: use tiny:text or tiny:vlm")
    kind = path.split(":", 1)[1]
    target = pathlib.Path(out) / "base_model"
    if not (target / "config.json").exists():
        build_tiny_cached(kind, target, texts=list(texts()), **tiny_options(model))  # built once, copied
    return str(target)


def tiny_options(model: ModelConfig) -> dict:
    """`build_tiny`'s keywords from the `model:` section (vision keys for tiny:vlm only)."""
    m = model
    extra = {"image_size": m.image_size, "vision_depth": m.vision_depth,
             "vision_init_std": m.vision_init_std or None} if m.path == "tiny:vlm" else {}
    return dict(tokenizer=m.tokenizer, vocab_size=m.vocab_size, seed=m.seed, hidden_size=m.hidden_size,
                num_layers=m.num_layers, **extra)


def row_texts(ds) -> list[str]:
    """A prompt data set's text for a tiny model's vocabulary: every prompt, then every answer as a string (as
    `list(ds["prompt"]) + [str(a) for a in ds["answer"]]`, read column-wise from Arrow: ~10x faster)."""
    table = ds.select_columns([c for c in ("prompt", "answer") if c in ds.column_names]).with_format("arrow")[:]
    texts = table.column("prompt").to_pylist()
    if "answer" in ds.column_names:
        texts += [str(a) for a in table.column("answer").to_pylist()]
    return texts


# ----------------------------------------------------------------------------------------------- policy
def worker_settings(cfg, **overrides) -> WorkerSettings:
    """The policy worker's settings from a GRPO or DPO config, in this one place: every `WorkerSettings` field
    named like a key of `trainer:` or `algorithm:` (when the config has one) is copied by name; the model's
    dtype, frozen parts and LoRA, the run's seed, the rollout's temperature and one thread per trainer CPU
    are added; `overrides` last (e.g. `reference_path`)."""
    sections = [s for s in (getattr(cfg, "trainer", None), getattr(cfg, "algorithm", None)) if s is not None]
    values = {f.name: getattr(sec, f.name) for f in dataclasses.fields(WorkerSettings) for sec in sections
              if hasattr(sec, f.name)}
    rollout = getattr(cfg, "rollout", None)
    values.update(dtype=cfg.model.dtype, freeze=tuple(cfg.model.freeze), lora=dict(cfg.model.lora) or None,
                  seed=cfg.seed, num_threads=max(1, int(cfg.trainer.num_cpus)), betas=tuple(values["betas"]),
                  loss_opts=dict(values.get("loss_opts", {})))
    if rollout is not None:
        values["temperature"] = rollout.temperature
    return settings_with(WorkerSettings(**values), **overrides)


# ----------------------------------------------------------------------------------------------- rewards
class PolicyLogprobs:
    """`rewards.rlpr.PolicyAccess` over the policy ranks (`pool.PolicyGroup`): completion logprobs from the
    weights that sampled this step (rewards are scored after the rollout and before the update), batched in the
    worker; no second copy."""

    def __init__(self, policy, tokenizer):
        self.policy, self.tokenizer = policy, tokenizer

    def completion_logprobs(self, prompt_texts, images, completion_ids):
        items = [TrainItem(p, list(im or []), list(ids), 0.0, [])
                 for p, im, ids in zip(prompt_texts, images, completion_ids)]
        return self.policy.compute_logprobs(items)


@dataclasses.dataclass
class RewardResources:
    """What rewards declaring `needs` receive as `resources`; `policy` is set once the policy actor exists,
    `labeler` (and `claim_lm` for LM claim splitting) when a reward needs a labeler (rlaifv)."""

    policy: PolicyLogprobs | None = None
    labeler: object = None  # rewards.rlaifv.Labeler
    claim_lm: object = None  # rewards.rlaifv.TextLM over a rollout engine (closed by `close`)

    def close(self) -> None:
        """Free what the resources hold (the claim LM's engine); safe to call twice."""
        if self.claim_lm is not None:
            self.claim_lm.close()
            self.claim_lm = None


def reward_specs(cfg) -> list:
    from rewards import RewardSpec

    return [RewardSpec(name=r.name or None, path=r.path or None, weight=r.weight, kwargs=dict(r.kwargs),
                       completion_format=r.completion_format) for r in cfg.rewards]


def reward_scorer(cfg, *, strict: bool, resources: RewardResources | None = None):
    """The `rewards.RewardScorer` of `cfg.rewards` (time limit, retries); ConfigError naming `rewards`."""
    from rewards import RewardScorer

    try:
        return RewardScorer(reward_specs(cfg), timeout_s=cfg.reward_timeout_s, strict=strict,
                            retries=cfg.reward_retries, resources=resources if resources is not None else RewardResources())
    except (ValueError, ImportError, FileNotFoundError) as e:
        raise ConfigError(f"config key 'rewards': {e}") from e


# ----------------------------------------------------------------------------------------------- data
def load_prompt_data(cfg):
    """The training rows of `cfg.data` with canonical columns; DataError when there is no answer column."""
    from rlkit.data import DataError, load_source, map_columns

    ds = load_source(cfg.data.source, cfg.data.split, limit=cfg.data.limit, seed=cfg.seed, **cfg.data.source_kwargs)
    ds = map_columns(ds, dict(cfg.data.columns))
    if "answer" not in ds.column_names:
        raise DataError(f"the data set has no 'answer' column (has {', '.join(ds.column_names)}); "
                        "map one with data.columns.answer")
    return ds
