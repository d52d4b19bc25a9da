"""HFEngine (transformers generate): shapes, logprob semantics and weight updates on tiny models."""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from PIL import Image

from rollout import Completion, RolloutRequest, SamplingConfig, make_engine
from rollout.hf_engine import HFEngine
from rollout.testing import chat_prompt, perturb_, reference_logprobs

torch.set_num_threads(1)
KINDS = ["text", "vlm"]


@pytest.fixture(scope="module")
def tiny(tiny_text_path, tiny_vlm_path):  # session fixtures of conftest.py
    return {"text": tiny_text_path, "vlm": tiny_vlm_path}


@pytest.fixture(scope="module", params=KINDS)
def engine(request, tiny):
    return HFEngine(tiny[request.param])


def _requests(engine, n_override=3):
    img = engine.is_multimodal
    colors = [(255, 0, 0), (0, 0, 255)]
    return [
        RolloutRequest(chat_prompt(engine.tokenizer, "What color is the shape?", img),
                       [Image.new("RGB", (64, 64), colors[0])] if img else [], request_id="a"),
        RolloutRequest(chat_prompt(engine.tokenizer, "Is there a red circle?", img),
                       [Image.new("RGB", (40, 56), colors[1])] if img else [], n=n_override, request_id="b"),
    ]


def _check_against_reference(engine, req, comp: Completion, atol=1e-4):
    prompt_ids, ref = reference_logprobs(engine.model, engine.processor, req.prompt, req.images, comp.token_ids)
    assert comp.prompt_token_ids == prompt_ids
    assert len(ref) == len(comp.logprobs) == len(comp.token_ids)
    assert max(abs(a - b) for a, b in zip(ref, comp.logprobs)) < atol


def test_generate_n_logprobs_and_text(engine):
    reqs = _requests(engine)
    sampling = SamplingConfig(temperature=0.7, top_p=0.9, max_tokens=8, n=2, seed=3)
    out = engine.generate(reqs, sampling)
    assert [len(g) for g in out] == [2, 3]
    eos = set(engine.eos_ids)
    for req, group in zip(reqs, out):
        for c in group:
            assert 1 <= len(c.token_ids) <= 8 and len(c.logprobs) == len(c.token_ids)
            assert all(lp <= 0 for lp in c.logprobs)
            assert not set(engine.placeholder_ids) & set(c.token_ids)  # input-only ids are never sampled
            assert c.text == engine.tokenizer.decode(c.token_ids, skip_special_tokens=True)
            if c.finish_reason == "stop":
                assert c.token_ids[-1] in eos and not eos & set(c.token_ids[:-1])
            else:
                assert c.finish_reason == "length" and len(c.token_ids) == 8 and not eos & set(c.token_ids)
            # Raw logprobs: equal to an untempered forward pass even though sampling used T=0.7, top-p 0.9.
            _check_against_reference(engine, req, c)
    if engine.is_multimodal:  # the 64x64 image is resized to 84x84: 9 image tokens
        pad = engine.tokenizer.convert_tokens_to_ids("<|image_pad|>")
        assert pad in engine.placeholder_ids and len(engine.placeholder_ids) == 4
        assert out[0][0].prompt_token_ids.count(pad) == 9
    # Same seed, same samples; sampling does not disturb the global RNG.
    state = torch.random.get_rng_state()
    again = engine.generate(reqs, sampling)
    assert torch.equal(state, torch.random.get_rng_state())
    assert [[c.token_ids for c in g] for g in again] == [[c.token_ids for c in g] for g in out]


def test_mixed_text_and_image_batch(tiny):
    eng = HFEngine(tiny["vlm"], max_batch_size=3)  # 2 + 2 rows: also exercises batch splitting
    reqs = [
        RolloutRequest(chat_prompt(eng.tokenizer, "What shape is in the image?", True), [Image.new("RGB", (64, 64))]),
        RolloutRequest(chat_prompt(eng.tokenizer, "The answer is", False)),
    ]
    out = eng.generate(reqs, SamplingConfig(temperature=1.0, max_tokens=5, n=2, seed=0))
    for req, group in zip(reqs, out):
        for c in group:
            _check_against_reference(eng, req, c)


def test_greedy_stop_token_ids(engine):
    req = _requests(engine)[:1]
    first = engine.generate(req, SamplingConfig(temperature=0.0, max_tokens=6))[0][0]
    if first.finish_reason == "stop" and len(first.token_ids) < 3:
        pytest.skip("tiny model stops too early for this check")
    stop = first.token_ids[2]
    cut = first.token_ids.index(stop) + 1
    c = engine.generate(req, SamplingConfig(temperature=0.0, max_tokens=6, stop_token_ids=[stop]))[0][0]
    assert c.token_ids == first.token_ids[:cut] and c.finish_reason == "stop"
    assert c.logprobs == pytest.approx(first.logprobs[:cut], abs=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_update_weights(tiny, kind):
    eng = make_engine("hf", model_path=tiny[kind])
    trainer = HFEngine(tiny[kind]).model  # an independent copy standing in for the trainer's policy
    req = _requests(eng)[:1]
    greedy = SamplingConfig(temperature=0.0, max_tokens=8)
    before = eng.generate(req, greedy)[0][0]
    names = perturb_(trainer, scale=0.05, seed=1)
    assert any("embed_tokens" in n for n in names)
    if kind == "vlm":
        assert any(n.startswith("model.visual.") for n in names)
    with pytest.raises(ValueError):
        eng.update_weights({"not.a.weight": torch.zeros(1)})
    eng.update_weights(trainer.state_dict())
    after = eng.generate(req, greedy)[0][0]
    _, ref_new = reference_logprobs(trainer, eng.processor, req[0].prompt, req[0].images, after.token_ids)
    assert max(abs(a - b) for a, b in zip(ref_new, after.logprobs)) < 1e-4
    # The update really changed the policy: old-weights logprobs of the same tokens differ.
    _, ref_old = reference_logprobs(HFEngine(tiny[kind]).model, eng.processor, req[0].prompt, req[0].images,
                                    after.token_ids)
    assert max(abs(a - b) for a, b in zip(ref_old, after.logprobs)) > 1e-2
    assert before.token_ids != after.token_ids or before.logprobs != pytest.approx(after.logprobs, abs=1e-3)


def test_make_engine_rejects_unknown_kind():
    with pytest.raises(ValueError):
        make_engine("sglang")
