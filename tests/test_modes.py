"""Mode assignment and per-mode rendering (Qwen3 `enable_thinking` convention)."""
import random

import pytest

from rlkit.models.tokenizers import train_small_tokenizer
from rlkit.step.modes import ModeError, assign_modes, render_prompt
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


def test_schedule_interpolates_between_points_and_holds_outside():
    from rlkit.step.modes import deep_ratio_at

    sched = [[2, 0.0], [6, 1.0], [10, 0.5]]
    # before the first point: its ratio; then linear: step 3 = 1/4 of the way from 0 to 1; step 8 = 1 - 0.5/2
    got = [deep_ratio_at(s, 0.9, sched) for s in (0, 2, 3, 4, 6, 8, 10, 50)]
    assert got == [0.0, 0.0, 0.25, 0.5, 1.0, 0.75, 0.5, 0.5]
    assert deep_ratio_at(7, 0.3, []) == 0.3  # no schedule: the constant deep_ratio
    assert deep_ratio_at(1, 0.3, [[5, 0.8]]) == deep_ratio_at(99, 0.3, [[5, 0.8]]) == 0.8  # one point: constant


@pytest.mark.parametrize("schedule, fragment", [
    ("[[0, 0.2], [0, 0.4]]", "point 1: steps must increase strictly"),
    ("[[5, 0.2], [3, 0.4]]", "point 1: steps must increase strictly"),
    ("[[0, 1.5]]", "point 0: deep_ratio must be within [0, 1]"),
    ("[[-1, 0.5]]", "point 0: step must be >= 0"),
    ("[[0, 0.5, 1]]", "point 0: expected [step, deep_ratio]"),
    ("[[0, half]]", "point 0: deep_ratio must be a finite number"),
    ("[0.5]", "point 0: expected [step, deep_ratio]"),
])
def test_schedule_validation_names_the_key_and_point(schedule, fragment):
    from rlkit.config import ConfigError, GRPOConfig, load_config
    from rlkit.run.checks import check_grpo

    with pytest.raises(ConfigError) as e:
        check_grpo(load_config(GRPOConfig, None, [f"modes.schedule={schedule}"]))
    assert "config key 'modes.schedule'" in str(e.value) and fragment in str(e.value)
    with pytest.raises(ConfigError, match="config key 'modes.schedule': expected list"):
        load_config(GRPOConfig, None, ["modes.schedule={0: 0.5}"])


def test_scheduled_ratio_drives_the_mode_draw():
    """What `collect._requests` does each step: deep_ratio_at(step) -> assign_modes. Step 1 ratio 0 (all fast),
    step 3 ratio 1 (all deep), step 2 halfway."""
    from rlkit.config import GRPOConfig, load_config
    from rlkit.step.modes import deep_ratio_at

    cfg = load_config(GRPOConfig, None, ["modes.schedule=[[1, 0.0], [3, 1.0]]", "modes.per=sample"])
    rng = random.Random(0)
    for step, expect in ((1, {"fast"}), (3, {"deep"})):
        ratio = deep_ratio_at(step, cfg.modes.deep_ratio, cfg.modes.schedule)
        assert {m for ms in assign_modes(rows(10), 4, ratio, cfg.modes.per, rng) for m in ms} == expect
    share = [m for ms in assign_modes(rows(1000), 4, deep_ratio_at(2, 0.0, cfg.modes.schedule), "sample", rng)
             for m in ms].count("deep") / 4000
    assert abs(share - 0.5) < 0.03  # step 2: halfway; binomial sd ~0.008
