"""The divide-and-conquer scorer: rule splitting, questions, verdicts from yes/no probabilities, scores, audit,
batching, the LM option, the registered reward, and the transformers labeler against a direct forward pass."""
import json

import pytest
import torch

import rewards.rlaifv  # noqa: F401  (registers "rlaifv")
from rewards import RewardScorer, RewardSpec
from rewards.rlaifv import (ANSWER_TEMPLATE, QUESTION_PROMPT, SPLIT_PROMPT, STATEMENT_TEMPLATE, parse_list,
                            rlaifv_scores, split_claims)


class StubLabeler:
    """Accepts a question when it mentions `true_words`; records every call. p = (0.6, 0.3) or (0.2, 0.7)."""

    def __init__(self, true_words=("red", "circle"), tie_words=()):
        self.true_words, self.tie_words, self.calls = true_words, tie_words, []

    def yes_no_probs(self, questions, images):
        self.calls.append((list(questions), [list(i) for i in images]))
        out = []
        for q in questions:
            if any(w in q for w in self.tie_words):
                out.append((0.4, 0.4))
            elif any(w in q for w in self.true_words):
                out.append((0.6, 0.3))
            else:
                out.append((0.2, 0.7))
        return out


def test_rule_splitter():
    assert split_claims("The shape is red. It is a circle!") == (["The shape is red", "It is a circle"], 0)
    # clauses split only when both sides have >= 3 words; "red and blue" stays one claim
    assert split_claims("The shape is red, and it is a large circle.")[0] == ["The shape is red",
                                                                              "it is a large circle"]
    assert split_claims("It is red, and blue.")[0] == ["It is red, and blue"]
    # questions dropped, duplicates (case-insensitive) dropped, abbreviations and decimals kept whole
    assert split_claims("Is it red? It is red. it is red. About 2.5 cm, e.g. small.")[0] == [
        "It is red", "About 2.5 cm, e.g. small"]
    assert split_claims("1. red\n2) a circle\n- on white")[0] == ["red", "a circle", "on white"]
    assert split_claims("  ... ?! ") == ([], 0)
    assert split_claims("A one. B two. C three.", max_claims=2) == (["A one", "B two"], 1)


def test_score_is_minus_rejected_claims_with_full_audit(tmp_path):
    lab = StubLabeler()
    res = rlaifv_scores(["what is it?"], ["The shape is red. The shape is a circle. The shape is blue."],
                        labeler=lab, images=[["img.png"]])[0]
    assert res.status == "scored" and res.score == -1.0 and res.rejected == 1
    assert [c.claim for c in res.claims] == ["The shape is red", "The shape is a circle", "The shape is blue"]
    assert res.claims[2].question == STATEMENT_TEMPLATE.format(claim="The shape is blue")
    assert [(c.p_yes, c.p_no, c.accepted) for c in res.claims] == [(0.6, 0.3, True), (0.6, 0.3, True),
                                                                   (0.2, 0.7, False)]
    d = res.to_dict()
    assert set(d) >= {"prompt", "response", "claims", "score", "rejected", "status"}
    assert json.loads(json.dumps(d))["claims"][2]["accepted"] is False


def test_verdict_is_strict_and_short_claims_quote_the_prompt():
    lab = StubLabeler(tie_words=("green",))
    res = rlaifv_scores(["what color is the shape?"], ["green"], labeler=lab)[0]
    c = res.claims[0]
    assert c.kind == "answer"
    assert c.question == ANSWER_TEMPLATE.format(prompt="what color is the shape?", claim="green")
    assert (c.p_yes, c.p_no, c.accepted, res.score) == (0.4, 0.4, False, -1.0)  # a tie is not accepted
    # a stricter labeler: odds 0.6 / 0.3 = 2 pass accept_odds 1.9, fail 2.1
    assert rlaifv_scores(["q"], ["It is red."], labeler=lab, accept_odds=1.9)[0].score == 0.0
    assert rlaifv_scores(["q"], ["It is red."], labeler=lab, accept_odds=2.1)[0].score == -1.0


def test_empty_unfinished_and_normalised():
    lab = StubLabeler()
    res = rlaifv_scores(["q"] * 4, ["", "<think>still going", "<think>ok</think> It is red. It is blue. Tiny.",
                                    "<think>x</think>?"], labeler=lab)
    assert [r.status for r in res] == ["no_claims", "unfinished", "scored", "no_claims"]
    assert [r.score for r in res] == [None, None, -2.0, None]  # "Tiny" (answer template, no "red") is rejected
    res = rlaifv_scores(["q"] * 2, ["", "It is red. It is blue. It is green."], labeler=lab, normalize="claims",
                        empty_score=0.0)
    assert res[0].score == 0.0 and res[1].score == pytest.approx(-2 / 3)
    with pytest.raises(ValueError, match="normalize"):
        rlaifv_scores(["q"], ["a"], labeler=lab, normalize="tokens")


def test_one_batched_labeler_call_with_distinct_questions():
    lab = StubLabeler()
    img_a, img_b = object(), object()  # the n samples of a prompt share their image objects
    rlaifv_scores(["q", "q", "q"], ["It is red. It is blue.", "It is red.", "It is red."], labeler=lab,
                  images=[[img_a], [img_a], [img_b]])
    assert len(lab.calls) == 1
    questions, images = lab.calls[0]
    # "It is red" with img_a is asked once; with img_b again (another image)
    assert len(questions) == 3 and [i[0] is img_b for i in images] == [False, False, True]
    lab.calls.clear()
    rlaifv_scores(["q"], [""], labeler=lab)
    assert lab.calls == []  # nothing to ask


class StubLM:
    def __init__(self, replies):
        self.replies, self.prompts = list(replies), []

    def complete(self, prompts):
        self.prompts += prompts
        return [self.replies.pop(0) for _ in prompts]


def test_lm_splitter_and_questioner_with_fallback(tmp_path):
    lm = StubLM(["### Facts:\n- The shape is red.\n- The shape is small.", "- The shape is blue.",
                 "Questions:\n- Is the shape red?\n- Is the shape small?", "- one\n- too many"])
    res = rlaifv_scores(["what is it?", "what is it?"], ["A small red thing.", "Blue."], labeler=StubLabeler(),
                        splitter="lm", questioner="lm", lm=lm)
    assert lm.prompts[0] == SPLIT_PROMPT.format(question="what is it?", answer="A small red thing.")
    assert lm.prompts[2] == QUESTION_PROMPT.format(claims="- The shape is red.\n- The shape is small.")
    assert [c.question for c in res[0].claims] == ["Is the shape red? Please answer yes or no.",
                                                   "Is the shape small? Please answer yes or no."]
    assert res[0].question_source == "lm" and res[0].score == -1.0  # "small" is rejected by the stub
    assert res[1].question_source == "rule"  # two questions for one claim: the template is used
    assert res[1].claims[0].question == STATEMENT_TEMPLATE.format(claim="The shape is blue.")
    assert parse_list("Facts:\n\n* a\n3. b\n# note") == ["a", "b"]
    with pytest.raises(ValueError, match="needs a language model"):
        rlaifv_scores(["q"], ["a"], labeler=StubLabeler(), splitter="lm")
    f = tmp_path / "split.txt"
    f.write_text("Q={question} A={answer}")
    lm = StubLM(["- x"])
    rlaifv_scores(["q"], ["a b"], labeler=StubLabeler(), splitter="lm", lm=lm, split_prompt_file=str(f))
    assert lm.prompts == ["Q=q A=a b"]
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        rlaifv_scores(["q"], ["a"], labeler=StubLabeler(), splitter="lm", lm=lm, split_prompt_file="nope.txt")


def test_prompt_files_in_examples_match_the_built_ins():
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1] / "examples" / "rlaifv" / "prompts"
    assert (root / "split_claims.txt").read_text() == SPLIT_PROMPT
    assert (root / "yes_no_questions.txt").read_text() == QUESTION_PROMPT


def test_registered_reward_in_the_scorer(tmp_path):
    class Resources:
        labeler = StubLabeler()

    audit = tmp_path / "audit.jsonl"
    with RewardScorer([RewardSpec(name="rlaifv", kwargs={"audit_path": str(audit)})], resources=Resources()) as sc:
        result = sc(["q", "q"], ["It is red. It is blue.", ""], {"images": [[], []], "answer": ["x", "y"],
                                                                   "mode": ["fast", "fast"]})
    assert result.per_reward["rlaifv"] == [-1.0, None] and not result.failures
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [len(x["claims"]) for x in lines] == [2, 0]
    with pytest.raises(ValueError, match="needs resources"):
        RewardScorer([RewardSpec(name="rlaifv")])
    with pytest.raises(ValueError, match="takes no keyword"):
        RewardScorer([RewardSpec(name="rlaifv", kwargs={"max_claim": 3})], resources=Resources())


# ------------------------------------------------------------------------------------------------ labeler
def test_transformers_labeler_matches_a_direct_forward(tiny_vlm_path):
    from rlkit.data import open_image
    from rlkit.data.easy_vqa import load_easy_vqa
    from rlkit.drivers.rlaifv import TransformersLabeler

    lab = TransformersLabeler(tiny_vlm_path, batch_size=4)
    assert "Yes" in lab.skipped and "No" in lab.skipped  # two tokens in the tiny vocabulary
    ds = load_easy_vqa("train", limit=3, seed=0)
    imgs = [[open_image(ds[i]["image"])] for i in range(3)]
    qs = ["Is the shape red? Please answer yes or no.", "Is it a circle? Please answer yes or no.",
          "Is the following statement about the image true? \"blue\" Please answer yes or no."]
    got = lab.yes_no_probs(qs, imgs)
    for q, im, (p_yes, p_no) in zip(qs, imgs, got):  # one unpadded sequence at a time
        text = lab.render(q, 1)
        enc = lab.processor(text=[text], images=im, return_tensors="pt")
        with torch.no_grad():
            probs = torch.softmax(lab.model(**enc).logits[0, -1].float(), -1)
        yes = lab.tokenizer("yes", add_special_tokens=False)["input_ids"]
        no = lab.tokenizer("no", add_special_tokens=False)["input_ids"]
        assert p_yes == pytest.approx(float(probs[yes].sum()), abs=1e-5)
        assert p_no == pytest.approx(float(probs[no].sum()), abs=1e-5)
    one_by_one = TransformersLabeler(lab.model, lab.processor, batch_size=1).yes_no_probs(qs, imgs)
    assert torch.allclose(torch.tensor(one_by_one), torch.tensor(got), atol=1e-6)  # left padding changes nothing
    with pytest.raises(ValueError, match="single token"):
        TransformersLabeler(lab.model, lab.processor, yes=("Yes",))


def test_labeler_resources_from_a_config_section(tiny_vlm_path):
    from rlkit.config import ConfigError
    from rlkit.drivers.rlaifv import labeler_resources

    with pytest.raises(ConfigError, match="did you mean 'labeler.batch_size'"):
        labeler_resources({"batch_sise": 2}, tiny_vlm_path)
    with pytest.raises(ConfigError, match="labeler.splitter"):
        labeler_resources({"splitter": "gpt"}, tiny_vlm_path)
    # "policy" labels with the given policy; "lm" splitting runs through a rollout engine (greedy, thinking off)
    res = labeler_resources({"splitter": "lm", "lm_engine": "hf", "lm_max_tokens": 8}, tiny_vlm_path)
    try:
        out = rlaifv_scores(["what color is the shape?"] * 2, ["It is red.", "A blue circle."], labeler=res.labeler,
                            splitter="lm", lm=res.claim_lm)
        assert [r.status for r in out] == [("scored" if r.claims else "no_claims") for r in out]
        assert isinstance(res.claim_lm.complete(["Say yes."])[0], str)
    finally:
        res.close()
    assert res.claim_lm is None


def test_docstring_examples():
    import doctest

    import importlib

    result = doctest.testmod(importlib.import_module("rewards.rlaifv"))
    assert result.attempted >= 2 and result.failed == 0
