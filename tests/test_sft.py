"""The supervised cold start: answer-only labels (checked by hand on a rendered example), and a few steps
on a tiny real VLM lower the loss; the checkpoint reloads with from_pretrained; the HF generate helper runs."""
import pytest
import torch

from rlkit.models.tiny import TinySpec, build_vlm_model, make_vlm_processor
from rlkit.models.tokenizers import train_small_tokenizer
from rlkit.drivers.sft import IGNORE_INDEX, SFTConfig, answer_loss, build_sft_batch, render_prompt, sft

QUESTIONS = ["what color is the shape?", "is there a red shape?", "what shape is present?", "is no circle present?"]
ANSWERS = ["red", "no", "circle", "yes"]


@pytest.fixture(scope="module")
def tiny():
    from rlkit.data.easy_vqa import load_easy_vqa

    torch.set_num_threads(1)
    rows = [dict(r) for r in load_easy_vqa("train", limit=16, seed=0)]
    tok = train_small_tokenizer([r["prompt"] for r in rows] + QUESTIONS + ANSWERS, 400)
    spec = TinySpec(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64,
                    vision_depth=1, vision_hidden_size=32, vision_heads=2)
    return tok, make_vlm_processor(tok, 84), build_vlm_model(tok, spec, seed=0), rows


def test_answer_only_labels_by_hand(tiny):
    tok, proc, _, rows = tiny
    batch = build_sft_batch(proc, [QUESTIONS[0], QUESTIONS[1]], [rows[0]["image"], rows[1]["image"]], ["red", "no"])
    prompt = render_prompt(proc, QUESTIONS[0], has_image=True)
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")  # fast mode
    ids, labels, mask = batch["input_ids"][0], batch["labels"][0], batch["attention_mask"][0]
    n = int(mask.sum())
    # the rendered prompt (9 image tokens for an 84x84 image) then the answer and <|im_end|>
    prompt_ids = tok(prompt.replace("<|image_pad|>", "<|image_pad|>" * 9), add_special_tokens=False)["input_ids"]
    answer_ids = tok("red", add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]
    assert ids[:n].tolist() == prompt_ids + answer_ids
    assert labels[: len(prompt_ids)].tolist() == [IGNORE_INDEX] * len(prompt_ids)
    assert labels[len(prompt_ids) : n].tolist() == answer_ids
    assert (labels[n:] == IGNORE_INDEX).all()
    assert tok.decode(labels[labels != IGNORE_INDEX]) == "red<|im_end|>"
    # padding (right side) never carries a label
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    assert int((batch["mm_token_type_ids"][0] == 1).sum()) == 9


def test_few_steps_lower_the_loss_and_save(tiny, tmp_path):
    tok, proc, model, rows = tiny
    rows = rows[:8]
    batch = build_sft_batch(proc, [r["prompt"] for r in rows], [r["image"] for r in rows], [r["answer"] for r in rows])
    with torch.no_grad():
        before = float(answer_loss(model, batch))
    res = sft(model, proc, rows, SFTConfig(lr=3e-3, batch_size=8, max_steps=15, seed=0), output_dir=tmp_path / "ckpt")
    with torch.no_grad():
        after = float(answer_loss(model, batch))
    assert res.steps == 15 and len(res.losses) == 15
    assert after < before - 0.5, (before, after)
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    again = Qwen2_5_VLForConditionalGeneration.from_pretrained(res.output_dir)
    AutoProcessor.from_pretrained(res.output_dir)
    with torch.no_grad():
        assert float(answer_loss(again, batch)) == pytest.approx(after, abs=1e-4)


def test_sft_rejects_missing_column(tiny):
    _, proc, model, _ = tiny
    with pytest.raises(ValueError, match="answer"):
        sft(model, proc, [{"prompt": "q", "image": None}], SFTConfig(max_steps=1))


def test_hf_generate_fn_with_evaluate(tiny):
    from rlkit.drivers.vqa_eval import evaluate_vqa, make_hf_generate_fn

    _, proc, model, rows = tiny
    gen = make_hf_generate_fn(model, proc, max_new_tokens=3, batch_size=3)
    res = evaluate_vqa(gen, rows[:5], return_predictions=True)
    assert res["n"] == 5 and len(res["predictions"]) == 5
    assert all(isinstance(p, str) for p in res["predictions"])
    assert 0.0 <= res["accuracy"] <= 1.0
