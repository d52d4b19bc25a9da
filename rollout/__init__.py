"""rollout: sample completions (with per-token logprobs) from the policy, and keep its weights in sync.

Two interchangeable engines behind one `Engine` protocol (see `rollout.base`):
- `VLLMEngine` (`rollout.vllm_engine`): `vllm.LLM` in-process, in-place weight sync; the fast path.
- `HFEngine` (`rollout.hf_engine`): transformers `generate`; reference and fallback.
Engines are imported lazily so `import rollout` works where vLLM (or even transformers) is not installed.

    from rollout import make_engine, RolloutRequest, SamplingConfig
    engine = make_engine("vllm", model_path="ckpt/", max_model_len=1024)
    groups = engine.generate([RolloutRequest(prompt, [image])], SamplingConfig(n=8, max_tokens=64))
    engine.update_weights(policy.state_dict())
"""
from __future__ import annotations

from typing import Any

from rollout.base import Completion, Engine, RolloutRequest, SamplingConfig

# HFEngine and VLLMEngine are exported lazily (`__getattr__` below), so `import rollout` needs neither engine
__all__ = ["Completion", "Engine", "HFEngine", "RolloutRequest", "SamplingConfig", "VLLMEngine", "make_engine"]  # noqa: F822


def make_engine(kind: str, **kwargs: Any) -> Engine:
    """Build an engine: kind 'vllm' -> `VLLMEngine(**kwargs)`, 'hf' -> `HFEngine(**kwargs)`.

    `model_path` is accepted by both (for 'hf' it is passed as `model_or_path`).
    """
    if kind == "vllm":
        from rollout.vllm_engine import VLLMEngine

        return VLLMEngine(**kwargs)
    if kind == "hf":
        from rollout.hf_engine import HFEngine

        if "model_path" in kwargs:
            kwargs["model_or_path"] = kwargs.pop("model_path")
        return HFEngine(**kwargs)
    raise ValueError(f"engine kind must be 'vllm' or 'hf', got {kind!r}")


def __getattr__(name: str) -> Any:  # lazy `from rollout import VLLMEngine / HFEngine`
    if name == "VLLMEngine":
        from rollout.vllm_engine import VLLMEngine

        return VLLMEngine
    if name == "HFEngine":
        from rollout.hf_engine import HFEngine

        return HFEngine
    raise AttributeError(f"module 'rollout' has no attribute {name!r}")
