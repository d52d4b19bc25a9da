"""Tiny, deterministic policies built from configs: the models every test and CPU demo trains.

Two architectures, the ones real rlkit users train:
- text: Qwen3 (`Qwen3ForCausalLM`), 2 layers, hidden 128 by default;
- vision-language: Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration`): a 2-layer vision tower, the patch
  merger (projector) and a 2-layer language model.
Weights come from `torch.manual_seed(seed)`, so the same seed and sizes give identical weights. The
directory written by `save_tiny` holds a normal transformers checkpoint plus tokenizer/processor; vLLM and
`from_pretrained` load it like any hub model.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib

import torch
from transformers import PreTrainedTokenizerFast


@dataclasses.dataclass
class TinySpec:
    """Sizes of a tiny policy. Defaults: ~0.6M parameters with a 512-token vocabulary."""

    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 256
    vision_depth: int = 2
    vision_hidden_size: int = 64
    vision_heads: int = 4
    image_size: int = 84  # pixels per side after resizing; 84 = 3 x 28 gives a 6x6 patch grid, 9 image tokens
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = True
    # std of the vision tower's weight matrices (None: transformers' default, 0.02). With 0.02 the merged image
    # tokens of a random tiny tower barely differ between images; 0.2 made easy-VQA colours learnable in
    # a hundred supervised steps (examples/easy_vqa/research/NOTES.md).
    vision_init_std: float | None = None


def _ids(tok: PreTrainedTokenizerFast, *names: str) -> list[int]:
    ids = tok.convert_tokens_to_ids(list(names))
    missing = [n for n, i in zip(names, ids) if i is None or i == tok.unk_token_id]
    if missing:
        raise ValueError(f"tokenizer lacks special tokens {missing}")
    return ids


def _decoder_fields(tok: PreTrainedTokenizerFast, spec: TinySpec, pad: int, eos: int) -> dict:
    """The decoder's shape and special ids: the text model's config and the VLM's text_config alike."""
    return dict(vocab_size=len(tok), hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
                num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
                num_key_value_heads=spec.num_kv_heads, max_position_embeddings=spec.max_position_embeddings,
                tie_word_embeddings=spec.tie_word_embeddings, bos_token_id=pad, eos_token_id=eos, pad_token_id=pad)


def build_text_model(tok: PreTrainedTokenizerFast, spec: TinySpec = TinySpec(), seed: int = 0):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    pad, eos = _ids(tok, "<|endoftext|>", "<|im_end|>")
    cfg = Qwen3Config(**_decoder_fields(tok, spec, pad, eos), head_dim=spec.hidden_size // spec.num_heads)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(cfg)
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = pad
    return model


def build_vlm_model(tok: PreTrainedTokenizerFast, spec: TinySpec = TinySpec(), seed: int = 0):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    pad, eos, image, video, vstart, vend = _ids(
        tok, "<|endoftext|>", "<|im_end|>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"
    )
    head_dim = spec.hidden_size // spec.num_heads
    half = head_dim // 2  # mrope splits the rotary half-dimension into (temporal, height, width) sections
    t = half // 4
    h = (half - t) // 2
    cfg = Qwen2_5_VLConfig(
        text_config=dict(
            **_decoder_fields(tok, spec, pad, eos),
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [t, h, half - t - h]},
        ),
        vision_config=dict(
            depth=spec.vision_depth,
            hidden_size=spec.vision_hidden_size,
            intermediate_size=spec.vision_hidden_size * 2,
            num_heads=spec.vision_heads,
            out_hidden_size=spec.hidden_size,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=112,
            fullatt_block_indexes=[spec.vision_depth - 1],
        ),
        image_token_id=image,
        video_token_id=video,
        vision_start_token_id=vstart,
        vision_end_token_id=vend,
        tie_word_embeddings=spec.tie_word_embeddings,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(cfg)
    if spec.vision_init_std:
        reinit_vision(model, spec.vision_init_std, seed)
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = pad
    return model


def reinit_vision(model, std: float, seed: int = 0) -> None:
    """Redraw the vision tower's weight matrices (patch embedding, blocks, merger) from N(0, std^2), seeded;
    norms and biases keep their defaults."""
    g = torch.Generator().manual_seed(seed + 12345)
    with torch.no_grad():
        for _, p in model.model.visual.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def make_vlm_processor(tok: PreTrainedTokenizerFast, image_size: int = 84):
    """A Qwen2.5-VL processor whose image processor resizes every image to `image_size` x `image_size`."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    pixels = image_size * image_size
    improc = Qwen2VLImageProcessor(min_pixels=pixels, max_pixels=pixels, patch_size=14, merge_size=2, temporal_patch_size=2)
    vidproc = Qwen2VLVideoProcessor(min_pixels=pixels, max_pixels=pixels, patch_size=14, merge_size=2, temporal_patch_size=2)
    return Qwen2_5_VLProcessor(image_processor=improc, tokenizer=tok, video_processor=vidproc, chat_template=tok.chat_template)


def save_tiny(
    out_dir: str | os.PathLike,
    kind: str,
    tokenizer: PreTrainedTokenizerFast,
    spec: TinySpec = TinySpec(),
    seed: int = 0,
) -> pathlib.Path:
    """Build a tiny `kind` ('text' or 'vlm') policy and save model + tokenizer (+ processor) to `out_dir`."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if kind == "text":
        model = build_text_model(tokenizer, spec, seed)
        tokenizer.save_pretrained(out)
    elif kind == "vlm":
        model = build_vlm_model(tokenizer, spec, seed)
        make_vlm_processor(tokenizer, spec.image_size).save_pretrained(out)
    else:
        raise ValueError(f"tiny model kind must be 'text' or 'vlm', got {kind!r}")
    model.save_pretrained(out)
    return out
