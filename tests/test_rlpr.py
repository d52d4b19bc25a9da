"""RLPR (rewards/rlpr.py): the reward equals an independent token-by-token computation with transformers
(one forward pass per answer-token prefix, no batching, no padding) for the tiny text and vision-language
policies; the debias clip, every aggregation, fast mode, unfinished reasoning, the baseline cache and its
state round trip, the boundary-merge check, and the scorer path (needs=("policy",), batched)."""
import json
import math
import pickle
import types

import pytest
import torch

from rewards import RewardScorer, RewardSpec, get_reward
from rewards.rlpr import RLPRState, WorkerPolicyAccess, aggregate_logprobs, rlpr, rlpr_scores
from rlkit.data import open_image
from rlkit.data.easy_vqa import load_easy_vqa
from rlkit.step.modes import render_prompt
from rlkit.records import PromptRow
from rlkit.policy.worker import PolicyWorker

EMPTY = "<think>\n\n</think>"


# ------------------------------------------------------------------------------------- independent reference
def enc(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def direct_logprobs(worker, prompt_text, images, completion_ids, k):
    """log p of the last k completion tokens: a separate, unpadded forward pass for every prefix."""
    m = worker.model.eval()
    extra = {}
    if images:
        e = worker.processor(text=[prompt_text], images=images, return_tensors="pt")
        prompt = e["input_ids"][0].tolist()
        extra = {"pixel_values": e["pixel_values"], "image_grid_thw": e["image_grid_thw"]}
    else:
        prompt = enc(worker.tokenizer, prompt_text)
    full = prompt + list(completion_ids)
    out = []
    with torch.no_grad():
        for t in range(len(full) - k, len(full)):
            logits = m(input_ids=torch.tensor([full[:t]]), **extra).logits[0, -1].double()
            out.append(float(torch.log_softmax(logits, -1)[full[t]]))
    return out


def expected_reward(worker, prompt_text, images, reasoning_text, answer, slot="\n\n", w_prob=0.9, w_format=0.1, fmt=1.0):
    tok = worker.tokenizer
    a = enc(tok, answer)
    own = enc(tok, reasoning_text) + enc(tok, slot) + a
    base = enc(tok, EMPTY) + enc(tok, slot) + a
    assert tok.decode(own) == reasoning_text + slot + answer  # o' is the reasoning with y* in the answer slot
    lp_own = direct_logprobs(worker, prompt_text, images, own, len(a))
    lp_base = direct_logprobs(worker, prompt_text, images, base, len(a))
    r = sum(math.exp(x) for x in lp_own) / len(a)
    r_base = sum(math.exp(x) for x in lp_base) / len(a)
    return lp_own, lp_base, r, r_base, w_prob * min(1.0, max(0.0, r - r_base)) + w_format * fmt


@pytest.fixture(scope="module")
def text_worker(tiny_text_path):
    return PolicyWorker(tiny_text_path, micro_batch_size=3)


@pytest.fixture(scope="module")
def vlm_worker(tiny_vlm_path):
    return PolicyWorker(tiny_vlm_path, micro_batch_size=4)


def test_text_reward_matches_direct_computation(text_worker):
    w, tok = text_worker, text_worker.tokenizer
    qa = [("What is 3 + 9? Answer with a number.", "12"), ("What is 7 * 8? Answer with a number.", "56"),
          ("What is 2 - 9? Answer with a number.", "-7")]
    reasonings = ["<think>\n3 plus 9 is 12\n</think>", "<think>\nLet me think step by step.\n</think>",
                  "<think>\n2 - 9 = -7\n</think>"]
    prompts, comps, ids, ptexts, answers, modes = [], [], [], [], [], []
    for (q, a), z in zip(qa, reasonings):
        for tail in ("\n\nThe answer is " + a, "\n\n5"):  # two samples per prompt: the baseline is shared
            prompts.append(q)
            comps.append(z + tail)
            ids.append(enc(tok, z + tail))
            ptexts.append(render_prompt(tok, PromptRow(0, q, [], a, {}), "deep"))
            answers.append(a)
            modes.append("deep")
    state = RLPRState()
    spy = Spy(WorkerPolicyAccess(w))
    got = rlpr_scores(prompts, comps, policy=spy, answer=answers, prompt_text=ptexts, mode=modes,
                      completion_ids=ids, state=state)
    # one batched call: 3 o' (the two samples of a prompt share their reasoning, so their o' is one sequence)
    # and 3 baselines
    assert spy.calls == [3 + 3]
    for i, res in enumerate(got):
        lp_own, lp_base, r, r_base, reward = expected_reward(w, ptexts[i], [], reasonings[i // 2], answers[i])
        assert res.status == "scored" and len(res.answer_ids) >= 1
        assert res.answer_logprobs == pytest.approx(lp_own, abs=1e-5)
        assert res.base_logprobs == pytest.approx(lp_base, abs=1e-5)
        assert res.r == pytest.approx(r, abs=1e-5) and res.r_base == pytest.approx(r_base, abs=1e-5)
        assert res.reward == pytest.approx(reward, abs=1e-5)
    assert len(got[4].answer_ids) == 2  # "-7": a multi-token answer
    # the completion's own answer does not matter, only its reasoning
    assert got[0].reward == pytest.approx(got[1].reward, abs=1e-6)


@pytest.mark.parametrize("tags", [False, True])
def test_vlm_reward_matches_direct_computation(vlm_worker, tags):
    w, tok = vlm_worker, vlm_worker.tokenizer
    ds = load_easy_vqa("train", limit=2, seed=3)
    slot = "\n\n<answer>" if tags else "\n\n"
    kw = {"answer_open": "<answer>", "answer_close": "</answer>"} if tags else {}
    z = "<think>\nthe shape is round\n</think>"
    prompts, comps, ptexts, imgs, answers = [], [], [], [], []
    for i in range(2):
        row = PromptRow(i, ds[i]["prompt"], [open_image(ds[i]["image"])], ds[i]["answer"], {})
        text = render_prompt(w.processor, row, "deep")
        answer_text = f"<answer>{row.answer}</answer>" if tags else row.answer
        for _ in range(2):
            prompts.append(row.prompt)
            comps.append(f"{z}\n\n{answer_text}")
            ptexts.append(text)
            imgs.append(row.images)
            answers.append(row.answer)
    got = rlpr(prompts, comps, resources=types.SimpleNamespace(policy=WorkerPolicyAccess(w)), answer=answers,
               prompt_text=ptexts, mode=["deep"] * 4, images=imgs, completion_ids=[enc(tok, c) for c in comps],
               state=RLPRState(), **kw)
    for i in range(4):
        *_, reward = expected_reward(w, ptexts[i], imgs[i], z, answers[i], slot=slot)
        assert got[i] == pytest.approx(reward, abs=1e-5)


# ------------------------------------------------------------------------------------- fake policy
class Spy:
    """Wraps a PolicyAccess and records the number of sequences per call."""

    def __init__(self, inner):
        self.inner, self.tokenizer, self.calls = inner, inner.tokenizer, []

    def completion_logprobs(self, prompt_texts, images, completion_ids):
        self.calls.append(len(completion_ids))
        return self.inner.completion_logprobs(prompt_texts, images, completion_ids)


class Fake:
    """Answer-token logprobs chosen by the test: `own` for o', `base` for baselines (lists, aligned to the end)."""

    def __init__(self, tok, own, base):
        self.tokenizer, self.own, self.base, self.calls = tok, own, base, []
        self.empty = enc(tok, EMPTY)

    def completion_logprobs(self, prompt_texts, images, completion_ids):
        self.calls.append(len(completion_ids))
        out = []
        for ids in completion_ids:
            tail = self.base if ids[:len(self.empty)] == self.empty else self.own
            out.append([0.0] * (len(ids) - len(tail)) + list(tail))
        return out


@pytest.fixture(scope="module")
def tok(tiny_text_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_text_path)


def call(tok, fake, comps, modes=None, answers=None, ptexts=None, **kw):
    n = len(comps)
    ptexts = ptexts or ["<|im_start|>user\nWhat is 3 * 4?<|im_end|>\n<|im_start|>assistant\n"] * n
    return rlpr_scores(["q"] * n, comps, policy=fake, answer=answers or ["12"] * n, prompt_text=ptexts,
                       mode=modes or ["deep"] * n, completion_ids=[enc(tok, c) for c in comps], **kw)


GOOD = "<think>\nreasoning\n</think>\n\n12"
L = math.log


@pytest.mark.parametrize("aggregation, r, r_base", [
    ("mean_prob", 0.375, 0.15),
    ("seq_prob", 0.125, 0.02),
    ("geo_mean", 0.125 ** 0.5, 0.02 ** 0.5),
    ("mean_logprob", (L(0.5) + L(0.25)) / 2, (L(0.2) + L(0.1)) / 2),
])
def test_aggregations(tok, aggregation, r, r_base):
    fake = Fake(tok, own=[L(0.5), L(0.25)], base=[L(0.2), L(0.1)])  # "12" is two tokens
    (res,) = call(tok, fake, [GOOD], aggregation=aggregation, state=RLPRState())
    assert res.r == pytest.approx(r) and res.r_base == pytest.approx(r_base)
    assert res.r_hat == pytest.approx(min(1.0, r - r_base))
    assert res.reward == pytest.approx(0.9 * res.r_hat + 0.1 * 1.0)
    assert aggregate_logprobs([L(0.5), L(0.25)], aggregation) == pytest.approx(r)


def test_debias_clip(tok):
    low = Fake(tok, own=[L(0.2), L(0.1)], base=[L(0.5), L(0.25)])  # r < r': clipped to 0
    (res,) = call(tok, low, [GOOD], state=RLPRState())
    assert res.r - res.r_base == pytest.approx(0.15 - 0.375) and res.r_hat == 0.0
    assert res.reward == pytest.approx(0.1)  # format only
    high = Fake(tok, own=[L(0.9), L(0.9)], base=[L(1e-3), L(1e-3)])  # mean logprob gain 6.7: clipped to 1
    (res,) = call(tok, high, [GOOD], aggregation="mean_logprob", state=RLPRState())
    assert res.r - res.r_base > 1 and res.r_hat == 1.0
    (res,) = call(tok, high, [GOOD], state=RLPRState(), w_prob=0.5, w_format=0.0)
    assert res.reward == pytest.approx(0.5 * (0.9 - 1e-3))
    (res,) = call(tok, high, [GOOD], baseline="none", state=RLPRState())
    assert res.r_base == 0.0 and res.r_hat == pytest.approx(0.9) and high.calls[-1] == 1
    # an empty reasoning is the baseline itself: r == r'
    real = Fake(tok, own=[L(0.3), L(0.3)], base=[L(0.3), L(0.3)])
    (res,) = call(tok, real, [EMPTY + "\n\n12"], state=RLPRState())
    assert res.r_hat == 0.0


def test_fast_mode_unfinished_and_missing_answers(tok):
    fake = Fake(tok, own=[L(0.5), L(0.5)], base=[L(0.1), L(0.1)])
    comps = ["12", GOOD, "<think>\nstill reasoning", GOOD]
    res = call(tok, fake, comps, modes=["fast", "deep", "deep", "deep"], answers=["12", "12", "12", None],
               state=RLPRState())
    assert [r.status for r in res] == ["fast", "scored", "unfinished", "no_answer"]
    assert res[0].reward is None and res[3].reward is None  # not applicable
    assert res[2].reward == 0.0 and res[2].r_hat == 0.0  # no answer slot: nothing to score, format 0
    assert fake.calls == [2]  # one o' and one baseline; nothing sent for the others
    only_fast = Fake(tok, own=[0.0], base=[0.0])
    assert [r.reward for r in call(tok, only_fast, ["12", "7"], modes=["fast", "fast"], state=RLPRState())] == [None, None]
    assert only_fast.calls == []  # no policy call at all
    # unfinished="close": the whole text is the reasoning, closed (trailing EOS dropped)
    closed = Fake(tok, own=[L(0.5), L(0.5)], base=[L(0.1), L(0.1)])
    ids = [enc(tok, "<think>\nstill reasoning") + [tok.eos_token_id]]
    got = rlpr_scores(["q"], ["<think>\nstill reasoning"], policy=Spy(closed), answer=["12"], prompt_text=["p"],
                      mode=["deep"], completion_ids=ids, unfinished="close", state=RLPRState())
    assert got[0].status == "scored" and got[0].r_hat == pytest.approx(0.4) and got[0].format == 0.0


def test_baseline_cache_recompute_and_state_round_trip(tok):
    fake = Fake(tok, own=[L(0.5), L(0.5)], base=[L(0.2), L(0.2)])
    pa = "<|im_start|>user\nA<|im_end|>\n<|im_start|>assistant\n"
    pb = "<|im_start|>user\nB<|im_end|>\n<|im_start|>assistant\n"
    state = RLPRState()
    kw = dict(ptexts=[pa, pa, pb, pb], answers=["12", "12", "12", "7"], state=state)
    call(tok, fake, [GOOD] * 4, **kw)
    assert fake.calls == [3 + 3]  # (A, 12), (B, 12), (B, 7): three o' and three baselines, each once
    assert state.metrics()["rlpr/baselines_computed"] == 3 and len(state.baselines) == 3
    fake.base = [L(0.4), L(0.4)]  # the policy changed; the cached baseline keeps the first value
    res = call(tok, fake, [GOOD] * 4, **kw)
    assert fake.calls[-1] == 3 and res[0].r_base == pytest.approx(0.2)
    # checkpoint: JSON and pickle round trips keep the cache
    restored = RLPRState()
    restored.load_state_dict(json.loads(json.dumps(state.state_dict())))
    kw["state"] = restored
    res = call(tok, fake, [GOOD] * 4, **kw)
    assert fake.calls[-1] == 3 and res[0].r_base == pytest.approx(0.2)
    assert pickle.loads(pickle.dumps(state)).baselines == state.baselines
    # recompute: baselines every call, with the current policy, deduplicated within the call
    res = call(tok, fake, [GOOD] * 4, baseline="recompute", **kw)
    assert fake.calls[-1] == 6 and res[0].r_base == pytest.approx(0.4)
    with pytest.raises(ValueError, match="version"):
        RLPRState().load_state_dict({"version": 99, "baselines": {}})


def test_metrics_accumulate_over_calls_until_read(tok):
    fake = Fake(tok, own=[L(0.5), L(0.25)], base=[L(0.2), L(0.1)])
    state = RLPRState()
    call(tok, fake, [GOOD, GOOD], state=state)  # e.g. a step's first round ...
    call(tok, fake, [GOOD, "12"], modes=["deep", "fast"], state=state)  # ... and a refill round
    m = state.metrics()
    assert m["rlpr/scored"] == 3 and m["rlpr/fast"] == 1 and m["rlpr/sequences"] == 1 + 1 + 1  # identical o': once
    assert m["rlpr/baselines_computed"] == 1 and m["rlpr/baseline_cache_size"] == 1
    assert m["rlpr/r_mean"] == pytest.approx(0.375) and m["rlpr/r_hat_mean"] == pytest.approx(0.225)
    assert m["rlpr/clipped_frac"] == 0.0
    after = state.metrics()  # read: starts afresh (the cache stays)
    assert after["rlpr/scored"] == 0 and math.isnan(after["rlpr/r_mean"]) and after["rlpr/baseline_cache_size"] == 1


def test_baseline_key_includes_images(tok):
    from PIL import Image

    fake = Fake(tok, own=[L(0.5), L(0.5)], base=[L(0.2), L(0.2)])
    red, blue = Image.new("RGB", (8, 8), "red"), Image.new("RGB", (8, 8), "blue")
    red2 = Image.new("RGB", (8, 8), "red")  # same content, another object
    n = 4
    rlpr_scores(["q"] * n, [GOOD] * n, policy=fake, answer=["12"] * n, prompt_text=["p"] * n, mode=["deep"] * n,
                images=[[red], [red2], [blue], ["/data/img.png"]], completion_ids=[enc(tok, GOOD)] * n,
                state=RLPRState())
    assert fake.calls == [4 + 3]  # baselines: red (twice, one key: same content), blue, the path


def test_text_path_equals_token_path(tok):
    """Without completion_ids the reasoning is cut from the text: same o' as from the sampled ids here."""
    fake = Spy(Fake(tok, own=[L(0.5), L(0.25)], base=[L(0.2), L(0.1)]))
    seen = []
    fake.inner.completion_logprobs = (lambda f=fake.inner.completion_logprobs:
                                      lambda p, i, c: (seen.append(c), f(p, i, c))[1])()
    call(tok, fake, [GOOD], state=RLPRState())
    by_text = rlpr_scores(["q"], [GOOD], policy=fake, answer=["12"], prompt_text=["p"], mode=["deep"],
                          completion_ids=None, state=RLPRState())
    assert seen[0] == seen[1] and by_text[0].r_hat == pytest.approx(0.375 - 0.15)


def test_boundary_merge_check(tok):
    fake = Fake(tok, own=[0.0], base=[0.0])
    call(tok, fake, [GOOD], answers=["number"], state=(s := RLPRState()))
    assert s.metrics()["rlpr/boundary_merge_frac"] == 0.0  # "\n\n" then "number": no merge
    call(tok, fake, [GOOD], answers=["number"], separator=" ", state=s)
    assert enc(tok, " number") != enc(tok, " ") + enc(tok, "number")  # "Ġnumber" is one token
    assert s.metrics()["rlpr/boundary_merge_frac"] == 1.0


def test_errors_name_the_problem(tok):
    fake = Fake(tok, own=[0.0], base=[0.0])
    with pytest.raises(ValueError, match="prompt_text"):
        rlpr_scores(["q"], [GOOD], policy=fake, answer=["12"], prompt_text=None)
    with pytest.raises(ValueError, match="mean_logprob"):
        call(tok, fake, [GOOD], aggregation="mean_logprob", baseline="none")
    with pytest.raises(ValueError, match="unknown RLPR aggregation"):
        call(tok, fake, [GOOD], aggregation="median")
    bad = Fake(tok, own=[0.0], base=[0.0])
    bad.completion_logprobs = lambda p, i, c: [[0.0]] * len(c)
    with pytest.raises(RuntimeError, match="logprobs for a sequence"):
        call(tok, bad, [GOOD], state=RLPRState())


def test_registered_and_scored_through_the_scorer(tok):
    assert rlpr.needs == ("policy",) and rlpr.batched is True
    bound = get_reward("rlpr", aggregation="geo_mean")
    assert bound.needs == ("policy",) and bound.batched and bound.state is rlpr.state
    fake = Fake(tok, own=[L(0.5), L(0.25)], base=[L(0.2), L(0.1)])
    with pytest.raises(ValueError, match="needs resources"):
        RewardScorer([RewardSpec(name="rlpr")])
    state = RLPRState()
    with RewardScorer([RewardSpec(name="rlpr", kwargs={"state": state})],
                      resources=types.SimpleNamespace(policy=fake)) as scorer:
        comps = [GOOD, "12"]
        result = scorer(["q", "q"], comps, {"answer": ["12", "12"], "mode": ["deep", "fast"],
                                           "prompt_text": ["p", "p"], "images": [[], []],
                                           "completion_ids": [enc(tok, c) for c in comps]})
        assert result.per_reward["rlpr"] == pytest.approx([0.9 * 0.225 + 0.1, None]) and not result.failures
        missing = scorer(["q"], [GOOD], {"answer": ["12"], "mode": ["deep"]})  # no prompt_text column
        assert missing.per_reward["rlpr"] == [None] and "prompt_text" in missing.failures[0].error


def test_doctests():
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module("rewards.rlpr"))
    assert result.attempted > 0 and result.failed == 0
