"""Mode assignment and per-mode rendering (Qwen3 `enable_thinking` convention)."""
import random

import pytest

from rlkit.models.tokenizers import train_small_tokenizer
from rlkit.modes import ModeError, assign_modes, render_prompt
from rlkit.records import PromptRow


def rows(k, pinned=None):
    return [PromptRow(i, f"q{i}", [], "a", {}, mode=pinned if i == 0 else None) for i in range(k)]


def test_ratio_extremes_and_pinning():
    rng = random.Random(0)
    assert all(m == "fast" for ms in assign_modes(rows(20), 4, 0.0, "sample", rng) for m in ms)
    assert all(m == "deep" for ms in assign_modes(rows(20), 4, 1.0, "sample", rng) for m in ms)
    out = assign_modes(rows(5, pinned="deep"), 3, 0.0, "prompt", rng)
    assert out[0] == ["deep"] * 3 and out[1] == ["fast"] * 3


def test_ratio_per_prompt_and_per_sample():
    rng = random.Random(1)
    per_prompt = assign_modes(rows(2000), 4, 0.3, "prompt", rng)
    assert all(len(set(ms)) == 1 for ms in per_prompt)
    share = sum(ms[0] == "deep" for ms in per_prompt) / 2000
    assert abs(share - 0.3) < 0.04  # binomial sd ~0.01
    per_sample = assign_modes(rows(500), 8, 0.5, "sample", rng)
    assert any(len(set(ms)) == 2 for ms in per_sample)


def test_rendering_per_mode():
    tok = train_small_tokenizer(["what color is the shape?"], 300)
    row = PromptRow(0, "what color?", ["img.png"], "red", {})
    fast = render_prompt(tok, row, "fast")
    deep = render_prompt(tok, row, "deep", system_prompt="Be brief.")
    assert fast == ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>what color?<|im_end|>\n"
                    "<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert deep == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"
                    "<|vision_start|><|image_pad|><|vision_end|>what color?<|im_end|>\n<|im_start|>assistant\n")


def test_deep_mode_needs_the_switch():
    tok = train_small_tokenizer(["x"], 300)
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(ModeError, match="enable_thinking"):
        render_prompt(tok, PromptRow(0, "q", [], None, {}), "deep")
