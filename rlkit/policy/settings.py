"""`WorkerSettings`: everything a policy worker is configured with besides its model path, in one object.

The drivers build it from the config in one function (`rlkit.run.build.worker_settings`: GRPO and DPO) and
pass it driver -> `spawn` -> `PolicyRank` -> `PolicyWorker` unchanged; tests build it directly or give fields
as keywords (`PolicyWorker(path, lr=1e-3)` is `PolicyWorker(path, WorkerSettings(lr=1e-3))`). A field named
like a key of the config's `trainer:` or `algorithm:` section is copied from it by name, so a new optimizer
option is one field here (and its key in rlkit/config.py).
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class WorkerSettings:
    # model
    dtype: str = "float32"  # policy dtype (model.dtype)
    freeze: tuple = ()  # parts kept frozen: vision, projector, language (model.freeze)
    lora: dict | None = None  # peft LoRA settings (model.lora; None: full fine-tuning)
    reference_path: str | None = None  # the KL reference model (None: the starting model)
    # optimizer (trainer.*)
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.999)
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0
    # batching (trainer.*)
    micro_batch_size: int = 64
    mini_batch_size: int = 0  # sequences per optimizer step (0: the whole rollout batch)
    ppo_epochs: int = 1
    shuffle_minibatches: bool = True
    # loss (algorithm.*)
    policy_loss: str = "ppo_clip"
    loss_opts: dict = dataclasses.field(default_factory=dict)
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    kl_in_reward: bool = False
    temperature: float = 1.0  # the rollout's sampling temperature (logits are divided by it)
    # process
    seed: int = 0
    num_threads: int = 1
    device: str = "auto"
    gradient_checkpointing: bool = False
    strategy: str = "replicate"  # trainer.strategy: replicate | fsdp2


def settings_with(settings: WorkerSettings | None, **overrides) -> WorkerSettings:
    """`settings` (default: `WorkerSettings()`) with `overrides`; an unknown name raises TypeError naming it."""
    base = settings if settings is not None else WorkerSettings()
    names = {f.name for f in dataclasses.fields(WorkerSettings)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(f"unknown worker setting(s) {', '.join(unknown)} (see rlkit/policy/settings.py)")
    return dataclasses.replace(base, **overrides)
