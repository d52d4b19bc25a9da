"""Pair construction on hand-made scores: threshold, ties, None, k per prompt, length balance; the TRL-column
data set round-trips through save_to_disk and encodes to the token ids the DPO worker trains on."""
import math

import pytest

from preference import (Candidate, Pair, PreferenceDataError, PromptInfo, build_pairs, candidate_pairs, encode_rows,
                        length_balance, length_stats, load_preference_dataset, pairs_to_dataset, save_dataset)


def cands(scores, texts=None):
    texts = texts or [f"response {i} " + "w " * i for i in range(len(scores))]
    return [Candidate(t, s) for t, s in zip(texts, scores)]


def test_threshold_orders_chosen_first():
    assert candidate_pairs([0, -1, -2]) == [(0, 1), (0, 2), (1, 2)]
    assert candidate_pairs([-2, -1, 0]) == [(1, 0), (2, 0), (2, 1)]  # the higher score is chosen
    assert candidate_pairs([0, -1, -2], threshold=2) == [(0, 2)]
    assert candidate_pairs([0.0, -0.5, -1.2], threshold=1.0) == [(0, 2)]  # -0.5 is within 1 of both
    with pytest.raises(ValueError, match="threshold"):
        candidate_pairs([0, -1], threshold=0)


def test_ties_none_and_identical_texts_never_pair():
    assert candidate_pairs([-1, -1, -1]) == []
    assert candidate_pairs([0, None, -3, None]) == [(0, 2)]
    assert candidate_pairs([0, -2], texts=["The shape is red.", " The shape is red. "]) == []


def test_k_per_prompt_is_seeded_and_bounded():
    groups = [cands([0, -1, -2, -3]), cands([0, -1]), cands([-1, -1])]  # 6, 1 and 0 candidate pairs
    pairs, stats = build_pairs(groups, k=2, balance_length=False, seed=0)
    per = [sum(p.group == g for p in pairs) for g in range(3)]
    assert per == [2, 1, 0]
    assert stats["pairs/candidates"] == 7 and stats["pairs/kept"] == 3 and stats["pairs/prompts_with_pairs"] == 2
    again, _ = build_pairs(groups, k=2, balance_length=False, seed=0)
    assert again == pairs
    every, _ = build_pairs(groups, k=0, balance_length=False)
    assert len(every) == 7
    assert all(p.chosen_score - p.rejected_score >= 1 for p in every)
    with pytest.raises(ValueError, match="k must be"):
        build_pairs(groups, k=-1)


def P(c, r):
    return Pair(0, 0, 1, 0.0, -1.0, c, r)


def test_length_balance_hand_derived():
    # (chosen, rejected) lengths; gaps (r - c) / r: A 0.5, B 0.2, C 0, D -0.2. Means 8.75 vs 10: chosen shorter,
    # relative gap 0.125. Dropping A (any ratio in [0.2, 0.5)) gives means 10 vs 10 (gap 0); dropping A and B
    # (ratio < 0.2) gives 11 vs 10 (0.1). The largest ratio with gap 0 is 0.48.
    A, B, C, D = P(5, 10), P(8, 10), P(10, 10), P(12, 10)
    assert length_stats([A, B, C, D])["rel_gap"] == pytest.approx(0.125)
    kept, ratio = length_balance([A, B, C, D])
    assert kept == [B, C, D] and ratio == pytest.approx(0.48)


def test_length_balance_handles_longer_chosen_and_balanced_sets():
    # chosen longer: gaps (c - r) / c: 0.5, 0, -0.25; dropping the first balances exactly (8 + 10 vs 10 + 8).
    kept, ratio = length_balance([P(20, 10), P(8, 8), P(8, 10)])
    assert kept == [P(8, 8), P(8, 10)] and ratio is not None
    balanced = [P(10, 10), P(9, 11), P(11, 9)]
    assert length_balance(balanced) == (balanced, None)
    assert length_balance([]) == ([], None)


def test_build_pairs_length_filter_and_units():
    short, long_ = "red", "the shape is a red circle on a white background"
    groups = [[Candidate(short, 0.0, [1]), Candidate(long_, -2.0, [1, 2, 3])],
              [Candidate(long_ + " too", 0.0, [1, 2]), Candidate(long_, -1.0, [1, 2])]]
    pairs, stats = build_pairs(groups, k=2, length_unit="words")
    # word lengths: pair 0 (1, 10), pair 1 (11, 10): the first is dropped, the second balances within 10%
    assert [(p.chosen_len, p.rejected_len) for p in pairs] == [(11, 10)]
    assert stats["pairs/before_length_filter"] == 2 and stats["pairs/kept"] == 1
    assert stats["pairs/score_margin_mean"] == 1.0
    toks, _ = build_pairs(groups, balance_length=False, length_unit="tokens")
    assert [(p.chosen_len, p.rejected_len) for p in toks] == [(1, 3), (2, 2)]
    with pytest.raises(ValueError, match="token_ids"):
        build_pairs([cands([0, -1])], length_unit="tokens")


# ------------------------------------------------------------------------------------------------ data set
def small_dataset():
    from rlkit.data.easy_vqa import load_easy_vqa

    rows = load_easy_vqa("train", limit=2, seed=0)
    prompts = [PromptInfo(rows[i]["prompt"], [rows[i]["image"]], prompt_text=f"<rendered {i}>", row=i)
               for i in range(2)]
    groups = [[Candidate("It is red.", 0.0, [5, 6, 2]), Candidate("It is blue.", -1.0, [5, 7, 2])],
              [Candidate("yes", -1.0, [9, 2]), Candidate("no", 0.0, [8, 2])]]
    pairs, _ = build_pairs(groups, balance_length=False)
    return rows, prompts, groups, pairs


def test_dataset_has_trl_columns_and_round_trips(tmp_path):
    rows, prompts, groups, pairs = small_dataset()
    ds = pairs_to_dataset(prompts, groups, pairs, round_index=3)
    assert ds.column_names[:4] == ["prompt", "chosen", "rejected", "images"]
    path = save_dataset(ds, tmp_path / "pairs")
    back = load_preference_dataset(path)
    assert len(back) == 2
    r0, r1 = back[0], back[1]
    assert r0["prompt"] == [{"role": "user", "content": rows[0]["prompt"]}]
    assert r0["chosen"] == [{"role": "assistant", "content": "It is red."}]
    assert r0["rejected"][0]["content"] == "It is blue."
    assert r1["chosen"][0]["content"] == "no" and r1["chosen_ids"] == [8, 2] and r1["rejected_ids"] == [9, 2]
    assert (r1["chosen_score"], r1["rejected_score"], r1["row"], r1["round"]) == (0.0, -1.0, 1, 3)
    from PIL import Image

    with Image.open(rows[0]["image"]) as im:  # images are stored as bytes: identical pixels after reload
        assert r0["images"][0].convert("RGB").tobytes() == im.convert("RGB").tobytes()


def test_encode_rows_uses_sampled_ids_or_renders_like_the_rollout(tmp_path, tiny_vlm_path):
    from rlkit.data import open_image
    from rlkit.models.loading import load_processor
    from rlkit.step.modes import render_prompt
    from rlkit.records import PromptRow

    processor = load_processor(tiny_vlm_path)
    tok = processor.tokenizer
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]  # noqa: E731
    rows, prompts, groups, pairs = small_dataset()
    for group in groups:  # ids as this tokenizer samples them (EOS included)
        for c in group:
            c.token_ids = ids(c.text)
    ds = pairs_to_dataset(prompts, groups, pairs)
    stats = {}
    enc = encode_rows(ds, processor, stats=stats)
    assert enc[0].prompt_text == "<rendered 0>" and enc[0].chosen_ids == ids("It is red.") and len(enc[0].images) == 1
    assert stats == {"retokenized": 0}
    # without prompt_text / ids (a plain TRL data set): rendered like the rollout renders fast mode, EOS appended
    plain = ds.remove_columns(["prompt_text", "chosen_ids", "rejected_ids"])
    enc = encode_rows(plain, processor)
    row = PromptRow(0, rows[0]["prompt"], [open_image(rows[0]["image"])], None, {})
    assert enc[0].prompt_text == render_prompt(processor, row, "fast")
    assert enc[0].chosen_ids == ids("It is red.")
    # ids of another tokenizer (they do not decode to the texts): ignored, with prompt_text, and counted
    foreign = pairs_to_dataset(*small_dataset()[1:])
    enc = encode_rows(foreign, processor, stats=stats)
    assert stats == {"retokenized": 2} and enc[0].prompt_text == render_prompt(processor, row, "fast")
    assert enc[1].chosen_ids == ids("no")


def test_load_errors_name_what_is_wrong(tmp_path):
    import datasets

    with pytest.raises(PreferenceDataError, match="not found"):
        load_preference_dataset(tmp_path / "nope")
    datasets.Dataset.from_dict({"prompt": ["q"], "chosen": ["a"]}).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(PreferenceDataError, match=r"lacks column\(s\) \['rejected'\]"):
        load_preference_dataset(tmp_path / "bad")
    datasets.Dataset.from_dict({"prompt": ["q"], "chosen": [""], "rejected": [7]}).save_to_disk(str(tmp_path / "b2"))
    ds = load_preference_dataset(tmp_path / "b2")

    class Tok:  # a tokenizer-only stand-in
        eos_token_id = None

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) for c in text]}

        def apply_chat_template(self, messages, **kw):
            return "p"

    with pytest.raises(PreferenceDataError, match="row 0: the chosen completion is empty"):
        encode_rows(ds, Tok())
    assert math.isnan(length_stats([])["rel_gap"])


def test_docstring_examples():
    import doctest

    import preference.pairs

    result = doctest.testmod(preference.pairs)
    assert result.attempted >= 3 and result.failed == 0
