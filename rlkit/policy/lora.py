"""LoRA adapters (peft) on the policy: which linear layers get them, merged weights for the sync, checkpoints.

Config (`model.lora`, empty = off):

    model:
      lora: {r: 8, alpha: 16, dropout: 0.0, targets: [language]}   # targets: language, vision, projector

Only the adapter weights train (peft freezes the base). The rollout engines never see an adapter: the weight
sync sends MERGED weights (`W + (alpha / r) B A`) under the base model's own parameter names, so vLLM needs no
LoRA support and loads them like any full update. A checkpoint holds the merged model at its top level
(loadable by `from_pretrained`, what `--resume` and evaluation load) and the adapter in `adapter/`
(peft's format, `PeftModel.from_pretrained(base, ckpt/adapter)`), from which training resumes.

KL reference without a second model: when every trainable parameter is an adapter parameter, the policy with
its adapters switched off (`adapters_off`) computes exactly the base model it was built on, so that is the
reference and no copy is loaded (`adapters_off_is_reference`). When other parameters train too (a part fully
trained beside adapters elsewhere, set by hand), or the reference is another model than the adapters' base,
adapters-off is not the reference and the worker loads the frozen copy as before.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib

import torch

from rlkit.models.loading import part_of

ADAPTER_DIR = "adapter"
PARTS = ("language", "vision", "projector")


@dataclasses.dataclass
class LoraSettings:
    r: int = 8  # adapter rank
    alpha: float = 16.0  # scaling numerator: the update is (alpha / r) B A
    dropout: float = 0.0  # dropout on the adapter's input
    targets: list = dataclasses.field(default_factory=lambda: ["language"])  # parts whose linear layers get adapters


def lora_settings(opts: dict | None) -> LoraSettings | None:
    """`model.lora` -> settings (None when empty); a bad key or value is a ValueError naming it."""
    if not opts:
        return None
    known = {f.name for f in dataclasses.fields(LoraSettings)}
    bad = sorted(set(opts) - known)
    if bad:
        raise ValueError(f"config key 'model.lora': unknown keys {bad}; use {sorted(known)}")
    s = LoraSettings(**opts)
    if not isinstance(s.r, int) or s.r < 1:
        raise ValueError(f"config key 'model.lora.r': must be an integer >= 1, got {s.r!r}")
    if not 0.0 <= float(s.dropout) < 1.0:
        raise ValueError(f"config key 'model.lora.dropout': must be within [0, 1), got {s.dropout!r}")
    targets = [s.targets] if isinstance(s.targets, str) else list(s.targets)
    if not targets or any(t not in PARTS for t in targets):
        raise ValueError(f"config key 'model.lora.targets': {s.targets!r}; use a non-empty list of {list(PARTS)}")
    s.targets = targets
    return s


def target_modules(model: torch.nn.Module, targets: list[str]) -> list[str]:
    """Full names of the nn.Linear modules of the targeted parts (the output head is never adapted)."""
    names = [n for n, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) and part_of(n) in targets and not n.endswith("lm_head")]
    if not names:
        raise ValueError(f"config key 'model.lora.targets': {targets} match no linear layer of this model")
    return names


def apply_lora(model: torch.nn.Module, s: LoraSettings):
    """Wrap `model` in a peft model with fresh adapters; only adapter weights require grad."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=s.r, lora_alpha=s.alpha, lora_dropout=float(s.dropout),
                     target_modules=target_modules(model, s.targets))
    return get_peft_model(model, cfg)


def load_lora(base: torch.nn.Module, adapter_dir: str | pathlib.Path):
    """A saved adapter on `base`, trainable (resume)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=True)


def adapter_base_path(checkpoint: str | pathlib.Path) -> str | None:
    """The base model a checkpoint's adapter was trained on, or None when it holds no adapter."""
    cfg = pathlib.Path(checkpoint) / ADAPTER_DIR / "adapter_config.json"
    if not cfg.exists():
        return None
    return json.loads(cfg.read_text())["base_model_name_or_path"]


@torch.no_grad()
def merged_state_dict(peft_model) -> dict[str, torch.Tensor]:
    """Detached CPU weights of base + adapters, under the base model's parameter names (no adapter keys).

    Computed without touching the live weights (no merge/unmerge round trip)."""
    from peft.tuners.lora import LoraLayer

    base = peft_model.get_base_model()
    out = {}
    for k, v in base.state_dict().items():
        if "lora_" in k:
            continue
        out[k.replace(".base_layer.", ".")] = v.detach().cpu()
    for name, mod in base.named_modules():
        if isinstance(mod, LoraLayer) and not getattr(mod, "disable_adapters", False):
            w = mod.get_base_layer().weight.detach()
            for adapter in mod.active_adapters:
                if adapter in mod.lora_A:
                    w = w + mod.get_delta_weight(adapter).to(w.dtype)
            out[f"{name}.weight"] = w.cpu()
    return out


def save_lora(peft_model, processor, directory: str | pathlib.Path) -> None:
    """The adapter in `directory/adapter` and the merged model + processor in `directory` (from_pretrained)."""
    d = pathlib.Path(directory)
    peft_model.save_pretrained(d / ADAPTER_DIR)
    merged = merged_state_dict(peft_model)
    base = peft_model.get_base_model()
    fresh = type(base)(base.config)  # plain (adapter-free) module tree with the base's names
    fresh.load_state_dict(merged, strict=False)
    missing = set(fresh.state_dict()) - set(merged)
    tied = {k for k in missing if k.endswith("lm_head.weight")}
    if missing - tied:
        raise RuntimeError(f"merged export is missing weights: {sorted(missing - tied)[:5]}")
    fresh.to(next(base.parameters()).dtype).save_pretrained(d)
    processor.save_pretrained(d)


def only_adapters_train(model: torch.nn.Module) -> bool:
    """True when at least one parameter trains and every one that does is a LoRA adapter weight."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    return bool(names) and all("lora_" in n for n in names)


def _same_model(a: str, b: str) -> bool:
    """Two model references name the same weights: equal local folders (after resolving) or equal hub ids."""
    if os.path.isdir(a) and os.path.isdir(b):
        return os.path.realpath(a) == os.path.realpath(b)
    return a == b


def adapters_off_is_reference(model: torch.nn.Module, reference: str, base: str) -> bool:
    """Whether the policy with its adapters off IS the reference model: `model` is a peft model, only its
    adapters train (so the weights under them never move), and `reference` names the `base` they sit on."""
    return hasattr(model, "disable_adapter") and only_adapters_train(model) and _same_model(reference, base)


@contextlib.contextmanager
def adapters_off(peft_model):
    """Within the block, `peft_model` computes its base model (no adapter term), without grad."""
    with torch.no_grad(), peft_model.disable_adapter():
        yield


def trainable_counts(model: torch.nn.Module) -> dict[str, int]:
    counts = {p: 0 for p in PARTS}
    for name, p in model.named_parameters():
        if p.requires_grad:
            counts[part_of(name)] += p.numel()
    return counts
