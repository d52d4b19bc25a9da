"""Load a policy (model + processor) from a transformers id, a local folder, or `tiny:text` / `tiny:vlm`.

One code path for every model: the tiny ones are written to a normal checkpoint folder first, so the policy
worker, vLLM and `from_pretrained` all load the same files a hub model would give them. A hub id is only
resolved when the user names one (defaults are offline).
"""
from __future__ import annotations

import os
import pathlib

import torch

# float64 is for the policy worker alone (vLLM serves float32 or lower): tests that compare two computations of
# the same update (sharded vs replicate, streamed vs whole) run in it, so that summation-order rounding stays
# ~1e-16 relative and cannot be amplified past their bounds by Adam (tests/test_fsdp.py).
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}

# Parameter-name fragments that identify the parts of a vision-language model (Qwen2-VL/2.5-VL, LLaVA, MiniCPM-V).
PROJECTOR_KEYS = ("visual.merger", "multi_modal_projector", "mm_projector", "resampler")
VISION_KEYS = ("visual.", "vision_tower", "vision_model", "vpm.")


class ModelLoadError(ValueError):
    pass


def part_of(param_name: str) -> str:
    """'projector', 'vision' or 'language' for a parameter name."""
    if any(k in param_name for k in PROJECTOR_KEYS):
        return "projector"
    if any(k in param_name for k in VISION_KEYS):
        return "vision"
    return "language"


def build_tiny(kind: str, out_dir: str | os.PathLike, *, texts: list[str] | None = None, tokenizer: str = "small",
               vocab_size: int = 512, seed: int = 0, **spec_kwargs) -> pathlib.Path:
    """Write a tiny `kind` ('text' | 'vlm') policy to `out_dir` and return the folder.

    tokenizer="small" trains a BPE on `texts` (the task's prompts and answers); "qwen" uses Qwen's real one.
    """
    from rlkit.models.tiny import TinySpec, save_tiny
    from rlkit.models.tokenizers import qwen_tokenizer, train_small_tokenizer

    if tokenizer == "qwen":
        tok = qwen_tokenizer()
    else:
        tok = train_small_tokenizer(list(texts or []) + _BASE_TEXTS, vocab_size)
    spec = TinySpec(**spec_kwargs)
    return save_tiny(out_dir, kind, tok, spec, seed)


# Always in the small vocabulary, so think blocks and digits are cheap whatever the task text.
_BASE_TEXTS = ["<think>\nLet me think step by step.\n</think>\n\nThe answer is 0 1 2 3 4 5 6 7 8 9."]


def is_vision_language(path: str) -> bool:
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(path)
    return getattr(cfg, "vision_config", None) is not None


def check_model_path(path: str) -> None:
    """Fail early, naming the path, when a local model folder does not exist or the hub is offline."""
    local_like = path.startswith((".", "/", "~")) or os.sep in path and not _looks_like_hub_id(path)
    p = pathlib.Path(path).expanduser()
    if p.exists():
        if not (p / "config.json").exists():
            raise ModelLoadError(f"model path {path} exists but has no config.json (not a transformers checkpoint)")
        return
    if local_like:
        raise ModelLoadError(f"model path not found: {path}")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ModelLoadError(
            f"model {path!r} is not a local folder and the hub is offline (HF_HUB_OFFLINE=1); "
            "use a local path or tiny:vlm / tiny:text"
        )


def _looks_like_hub_id(path: str) -> bool:
    parts = path.split("/")
    return len(parts) == 2 and all(parts) and not path.startswith((".", "/", "~"))


def load_processor(path: str):
    from transformers import AutoProcessor, AutoTokenizer

    if is_vision_language(path):
        return AutoProcessor.from_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


def tokenizer_of(processor):
    return getattr(processor, "tokenizer", processor)


def load_policy(path: str, dtype: str = "float32"):
    """(model, processor, is_vlm) for a checkpoint folder or hub id."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    check_model_path(path)
    vlm = is_vision_language(path)
    cls = AutoModelForImageTextToText if vlm else AutoModelForCausalLM
    model = cls.from_pretrained(path, dtype=DTYPES[dtype])
    processor = load_processor(path)
    tok = tokenizer_of(processor)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, processor, vlm


def apply_freeze(model, freeze: list[str]) -> dict[str, int]:
    """Freeze the named parts; return trainable parameter counts per part (for the log)."""
    counts = {"vision": 0, "projector": 0, "language": 0}
    for name, p in model.named_parameters():
        part = part_of(name)
        p.requires_grad_(part not in freeze)
        if p.requires_grad:
            counts[part] += p.numel()
    return counts


def resolve_device(device: str) -> torch.device:
    """`auto`: the first CUDA device when one is visible (under Ray: when the actor was given a GPU), else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    d = torch.device(device)
    if d.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"config key 'trainer.device': {device!r} but no CUDA device is visible to this process "
                         "(under Ray, give the policy actor a GPU with trainer.num_gpus)")
    return d
