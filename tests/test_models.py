"""Tiny models and tokenizers: deterministic, both tokenizer choices, real Qwen ids, the loading errors."""
import subprocess
import sys

import pytest
import torch

from rlkit.models.loading import ModelLoadError, build_tiny, check_model_path, load_policy, part_of
from rlkit.models.tokenizers import qwen_tokenizer, train_small_tokenizer


def test_small_tokenizer_is_deterministic_and_lossless():
    texts = ["what color is the shape?", "is there a red circle?", "yes", "no"]
    a, b = train_small_tokenizer(texts, 400), train_small_tokenizer(list(reversed(texts)), 400)
    assert a.get_vocab() == b.get_vocab()
    weird = "Ünïcødé 🙂 <think>x</think> 12345"
    assert a.decode(a(weird)["input_ids"]) == weird  # byte-level: any text round-trips
    assert len(a("what color is the shape?")["input_ids"]) <= 6  # task words are few tokens


def test_qwen_tokenizer_matches_qwen_ids():
    tok = qwen_tokenizer()
    # ids of Qwen2.5's tokenizer for this string (its vocabulary is the one the package ships)
    assert tok("Hello world, 12345")["input_ids"] == [9707, 1879, 11, 220, 16, 17, 18, 19, 20]
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                                      "<|image_pad|>", "<think>", "</think>"]) == [
        151643, 151644, 151645, 151652, 151655, 151667, 151668]
    assert len(tok) == 151669


def test_tiny_models_are_deterministic(tmp_path):
    a = build_tiny("vlm", tmp_path / "a", texts=["what color?"], seed=3)
    b = build_tiny("vlm", tmp_path / "b", texts=["what color?"], seed=3)
    c = build_tiny("vlm", tmp_path / "c", texts=["what color?"], seed=4)
    ma, _, vlm = load_policy(str(a))
    mb, _, _ = load_policy(str(b))
    mc, _, _ = load_policy(str(c))
    assert vlm
    sa, sb, sc = ma.state_dict(), mb.state_dict(), mc.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    parts = {part_of(k) for k in sa}
    assert parts == {"vision", "projector", "language"}


def test_tiny_text_model_with_real_qwen_tokenizer(tmp_path):
    path = build_tiny("text", tmp_path / "q", tokenizer="qwen", hidden_size=64, num_layers=1)
    model, tok, vlm = load_policy(str(path))
    assert not vlm and model.config.vocab_size == len(tok) == 151669
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                  enable_thinking=False, return_tensors="pt", return_dict=True)["input_ids"]
    out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 3 or out[0, -1].item() == tok.eos_token_id


def test_model_path_errors(tmp_path, monkeypatch):
    with pytest.raises(ModelLoadError, match="model path not found: .*nope"):
        check_model_path(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="has no config.json"):
        check_model_path(str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="hub is offline"):
        check_model_path("Qwen/Qwen2.5-VL-3B-Instruct")


def test_build_tiny_command(tmp_path):
    r = subprocess.run([sys.executable, "-m", "rlkit.cli", "build-tiny", "--kind", "text", "--out", str(tmp_path / "m"),
                        "--data", "arithmetic"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "m" / "config.json").exists() and (tmp_path / "m" / "tokenizer.json").exists()


@pytest.mark.parametrize("make", [lambda: train_small_tokenizer(["what color is it?"], 400), qwen_tokenizer])
def test_think_tags_survive_decoding_but_specials_do_not(make, tmp_path):
    """As in Qwen3: <think>/</think> are added tokens but not special, so completion text keeps them."""
    from transformers import AutoTokenizer

    for tok in (make(), None):
        if tok is None:
            make().save_pretrained(tmp_path / "t")
            tok = AutoTokenizer.from_pretrained(tmp_path / "t")
        ids = tok("<think>hm</think> red<|im_end|>")["input_ids"]
        assert tok.convert_ids_to_tokens(ids)[0] == "<think>"  # one token
        assert tok.decode(ids, skip_special_tokens=True) == "<think>hm</think> red"


def test_vision_init_std_redraws_only_the_vision_tower(tmp_path):
    a = build_tiny("vlm", tmp_path / "a", texts=["what color?"], seed=3)
    b = build_tiny("vlm", tmp_path / "b", texts=["what color?"], seed=3, vision_init_std=0.2)
    sa, sb = load_policy(str(a))[0].state_dict(), load_policy(str(b))[0].state_dict()
    qkv = sb["model.visual.blocks.0.attn.qkv.weight"]
    assert abs(float(qkv.std()) - 0.2) < 0.02  # 192 x 64 draws: sd of the estimate ~0.001
    assert torch.equal(sa["model.visual.blocks.0.norm1.weight"], sb["model.visual.blocks.0.norm1.weight"])
    assert all(torch.equal(sa[k], sb[k]) for k in sa if "visual" not in k)  # language model untouched
