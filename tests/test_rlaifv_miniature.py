"""The RLAIF-V miniature's pieces (examples/rlaifv/) without running it: the hallucination grader on hand-written
descriptions, its aggregate and standard errors, the labeler accuracy check, dev claims and training rows, pairs
judged by the truth, the comparison rule, the splits and the two labeler settings. Values derived by hand."""
import importlib.util
import math
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("rlaifv_miniature", ROOT / "examples/rlaifv/miniature.py")
mini = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mini)
H, R, Q = mini.H, mini.R, mini.Q


@pytest.mark.parametrize("claim, color, shape, expected", [
    ("The color is red", "red", "circle", "correct"),
    ("The color is blue", "red", "circle", "hallucinated"),
    ("The shape is a circle", "red", "triangle", "hallucinated"),
    ("The shape is not a circle", "red", "circle", "hallucinated"),  # the true value negated
    ("The shape is not a circle", "red", "triangle", "correct"),
    ("It isn't blue", "red", "circle", "correct"),
    ("It is grey", "gray", "circle", "correct"),  # synonym
    ("Two circles", "red", "circle", "correct"),  # plural
    ("Two circles", "red", "rectangle", "hallucinated"),
    ("A red triangle", "red", "triangle", "correct"),
    ("A red triangle", "blue", "triangle", "hallucinated"),  # one wrong value is enough
    ("This is a picture", "red", "circle", "unchecked"),
    ("The shape is a square", "red", "rectangle", "unchecked"),  # not an easy-VQA word
    ("It is reddish", "blue", "circle", "unchecked"),  # whole words only
])
def test_claim_verdicts(claim, color, shape, expected):
    assert H.claim_verdict(claim, color, shape) == expected


def test_grade_and_aggregate_hand_derived():
    graded = [H.grade_description("The color is red. The shape is a circle.", "red", "circle"),   # c 2, h 0
              H.grade_description("The color is blue. The shape is a circle.", "red", "circle"),  # c 2, h 1
              H.grade_description("The color is blue. The shape is a square.", "red", "triangle"),  # c 1, h 1
              H.grade_description("Hello there.", "red", "circle")]  # c 0
    assert [(g["claims"], g["checkable"], g["hallucinated"], g["words"]) for g in graded] == [
        (2, 2, 0, 9), (2, 2, 1, 9), (2, 1, 1, 9), (1, 0, 0, 2)]
    a = H.aggregate(graded)
    # r = 2/5; residuals h - r c: -0.8, 0.2, 0.6, 0 -> sqrt(0.64 + 0.04 + 0.36) / 5
    assert a["chair_i"] == pytest.approx(0.4) and a["chair_i_se"] == pytest.approx(math.sqrt(1.04) / 5)
    assert a["chair_s"] == pytest.approx(0.5) and a["chair_s_se"] == pytest.approx(math.sqrt(0.25 / 4))
    assert (a["says_anything"], a["words"], a["claims"], a["checkable_claims"]) == (0.75, 7.25, 1.75, 5)
    assert a["color_named"] == 0.75 and a["color_wrong"] == pytest.approx(2 / 3)
    assert a["shape_named"] == 0.5 and a["shape_wrong"] == 0.0
    with pytest.raises(ValueError):
        H.aggregate([])


def test_mean_over_seeds():
    assert H.mean_over_seeds([0.4, 0.3], [0.03, 0.04]) == (pytest.approx(0.35), pytest.approx(0.025))


def test_verdict_accuracy_hand_derived():
    claims = [{"truth": t, "attribute": a} for t, a in ((True, "color"), (False, "color"), (True, "shape"),
                                                        (False, "shape"))]
    probs = [(0.6, 0.4), (0.3, 0.7), (0.5, 0.5), (0.9, 0.1)]  # accept: yes, no, no (a tie rejects), yes
    acc = H.verdict_accuracy(probs, claims)
    assert (acc["accuracy"], acc["color"], acc["shape"], acc["accepted"], acc["n"]) == (0.5, 1.0, 0.0, 0.5, 4)
    assert H.verdict_accuracy(probs, claims, accept_odds=2.0)["accuracy"] == 0.25  # only the last accepted
    with pytest.raises(ValueError):
        H.verdict_accuracy(probs[:3], claims)


def test_dev_claims_balanced_and_true_where_said():
    claims = H.dev_claims([("a.png", "red", "circle"), ("b.png", "teal", "triangle")], seed=0)
    assert len(claims) == 8 and [c["truth"] for c in claims] == [True, False] * 4
    assert [c["attribute"] for c in claims[:4]] == ["color", "color", "shape", "shape"]
    assert claims[0]["claim"] == "The color is red" and claims[2]["claim"] == "The shape is a circle"
    for c, (img, col, shp) in zip(claims, [("a.png", "red", "circle")] * 4 + [("b.png", "teal", "triangle")] * 4):
        assert c["image"] == img and (H.claim_verdict(c["claim"], col, shp) == "correct") == c["truth"]
        assert c["question"] == H.STATEMENT_TEMPLATE.format(claim=c["claim"])


def test_training_rows_answer_the_truth():
    train = [("a.png", "red", "circle"), ("b.png", "teal", "triangle")] * 100
    cold = mini.cold_rows(train, 0)
    assert [r["image"] for r in cold] == [p for p, _, _ in train]
    truth = {"a.png": ("red", "circle"), "b.png": ("teal", "triangle")}
    kinds = {"describe": 0, "color": 0, "shape": 0}
    for r in cold:
        color, shape = truth[r["image"]]
        if r["prompt"] == H.DESCRIBE_PROMPT:
            kinds["describe"] += 1
            assert r["answer"] == H.description(color, shape)
        else:
            attr = "color" if r["prompt"] == Q.COLOR_Q else "shape"
            kinds[attr] += 1
            assert r["prompt"] == Q.QUESTIONS[attr] and r["answer"] == (color if attr == "color" else shape)
    assert 70 < kinds["describe"] < 130 and kinds["color"] > 30 and kinds["shape"] > 30  # 200 fair coins: s.d. 7
    lab = mini.labeler_rows(train[:2], 0)
    assert [(r["prompt"], r["answer"]) for r in lab] == [(Q.COLOR_Q, "red"), (Q.SHAPE_Q, "circle"),
                                                         (Q.COLOR_Q, "teal"), (Q.SHAPE_Q, "triangle")]


def test_description_is_two_claims_the_grader_checks():
    from rewards.rlaifv import split_claims

    text = H.description("brown", "triangle")
    assert split_claims(text)[0] == [H.attribute_claim("color", "brown"), H.attribute_claim("shape", "triangle")]
    assert H.grade_description(text, "brown", "triangle")["hallucinated"] == 0
    assert H.grade_description(text, "brown", "circle")["hallucinated"] == 1


def test_pair_agreement_hand_derived():
    rows = [("The color is red. The shape is a circle.", "The color is blue. The shape is a circle.", "red", "circle"),
            ("The color is blue.", "The color is red.", "red", "circle"),
            ("The shape is a circle.", "The color is red.", "red", "circle")]
    assert H.pair_agreement(rows) == {"pairs": 3, "right": pytest.approx(1 / 3), "wrong": pytest.approx(1 / 3),
                                      "tie": pytest.approx(1 / 3)}
    assert math.isnan(H.pair_agreement([])["right"])


def _res(seed, rnd, ci, says=1.0, words=9.0, arm="strong"):
    return {"seed": seed, "arm": "cold_start" if rnd == 0 else arm, "round": rnd, "chair_i": ci, "chair_i_se": 0.02,
            "chair_s": ci, "chair_s_se": 0.02, "says_anything": says, "words": words}


def test_comparison_rule_hand_derived():
    base = [_res(0, 0, 0.40), _res(1, 0, 0.30)]
    arms = R.by_arm(base + [_res(0, 3, 0.30), _res(1, 3, 0.25), _res(0, 1, 0.5)])
    assert list(arms["strong"]) == [0, 1, 3] and [r["seed"] for r in arms["strong"][0]] == [0, 1]
    v = R.verdict(arms["strong"])
    # means 0.35 and 0.275, each s.e. sqrt(2 * 0.02^2) / 2; the drop's s.e. sqrt(2) times that = 0.02
    assert v["round"] == 3 and v["drop"] == pytest.approx(0.075) and v["se"] == pytest.approx(0.02)
    assert v["per_seed_drop"] == [pytest.approx(0.10), pytest.approx(0.05)] and v["falls"]
    worse_seed = R.verdict(R.by_arm(base + [_res(0, 3, 0.20), _res(1, 3, 0.31)])["strong"])  # 0.35 -> 0.255
    assert worse_seed["drop"] == pytest.approx(0.095) and worse_seed["drop"] > 2 * worse_seed["se"]
    assert not worse_seed["falls"]  # one seed went up
    collapsed = R.verdict(R.by_arm(base + [_res(0, 3, 0.1, says=0.9), _res(1, 3, 0.1)])["strong"])
    assert collapsed["collapse"] == [True, False] and not collapsed["falls"]
    short = R.verdict(R.by_arm(base + [_res(0, 3, 0.1), _res(1, 3, 0.1, words=4.4)])["strong"])
    assert short["collapse"] == [False, True] and not short["falls"]
    small = R.verdict(R.by_arm(base + [_res(0, 3, 0.37), _res(1, 3, 0.27)])["strong"])
    assert small["drop"] == pytest.approx(0.03) and not small["falls"]  # under 2 s.e. (0.04)


def test_splits_and_prompt_file(tmp_path):
    data = mini.build_data(tmp_path)
    train, dev, held = data["train"], data["dev"], data["held"]
    assert (len(train), len(dev), len(held)) == (2435 - mini.DEV_IMAGES, mini.DEV_IMAGES, mini.HELD)
    paths = [set(p for p, _, _ in x) for x in (train, dev, held)]
    assert not (paths[0] & paths[1]) and not (paths[0] & paths[2]) and not (paths[1] & paths[2])
    test_dir = {str(pathlib.Path(p).parent) for p in paths[2]}
    assert len(test_dir) == 1 and test_dir.isdisjoint({str(pathlib.Path(p).parent) for p in paths[0]})
    lines = pathlib.Path(data["prompts"]).read_text().splitlines()
    assert len(lines) == len(train)
    assert mini.build_data(tmp_path)["held"] == held  # fixed: the same on every call


def test_arms_differ_only_in_the_labeler(tmp_path):
    from rlkit.config import to_dict

    cfgs = {arm: to_dict(mini.rounds_config(tmp_path, 1, arm, "/cold", "/labeler", "p.jsonl", 3)) for arm in mini.ARMS}
    assert cfgs["strong"]["labeler"]["path"] == "/labeler" and cfgs["self"]["labeler"]["path"] == "policy"
    for c in cfgs.values():
        assert c["labeler"]["accept_odds"] == 1.0 and c["labeler"]["calibrate"] is False  # the paper's rule
        assert (c["rounds"], c["seed"], c["model"]["path"], c["rollout"]["temperature"]) == (3, 1, "/cold", 0.7)
    strip = lambda c: {k: v for k, v in c.items() if k not in ("labeler", "output_dir")}  # noqa: E731
    assert strip(cfgs["strong"]) == strip(cfgs["self"])
    assert {k: v for k, v in cfgs["strong"]["labeler"].items() if k != "path"} == \
        {k: v for k, v in cfgs["self"]["labeler"].items() if k != "path"}


def test_claim_probs_hand_derived():
    dist = {"color": {"red": 0.7, "blue": 0.3}, "shape": {"circle": 0.4, "triangle": 0.6}}
    q = H.STATEMENT_TEMPLATE.format
    assert Q.claim_probs(q(claim="The color is red"), dist) == pytest.approx((0.7, 0.3))
    assert Q.claim_probs(q(claim="A red circle"), dist) == pytest.approx((0.28, 0.72))  # both must hold
    assert Q.claim_probs(q(claim="It is not a circle"), dist) == pytest.approx((0.6, 0.4))  # negated
    assert Q.claim_probs(q(claim="This is a picture"), dist) == (0.0, 1.0)  # nothing to check: rejected
    n = Q.normalise({"a": math.log(1.0), "b": math.log(3.0)})
    assert n == {"a": pytest.approx(0.25), "b": pytest.approx(0.75)}


def test_qa_labeler_reads_the_trained_answer_likelihood(tiny_vlm_path):
    import easy_vqa
    import torch

    from rlkit.data import open_image
    from rlkit.models.loading import load_policy
    from rlkit.drivers.sft import answer_loss, build_sft_batch

    model, processor, _ = load_policy(tiny_vlm_path, "float32")
    image = open_image(easy_vqa.get_train_image_paths()[0])
    lab = Q.QALabeler(model, processor)
    lp = Q.answer_logprobs(model, processor, [Q.COLOR_Q, Q.COLOR_Q], [image, image], ["red", "blue"])
    for answer, value in zip(["red", "blue"], lp):  # the cold start's loss on the same row, times its label count
        batch = build_sft_batch(processor, [Q.COLOR_Q], [image], [answer])
        n = int((batch["labels"][:, 1:] != -100).sum())  # answer tokens + end of turn
        with torch.no_grad():
            expected = -float(answer_loss(model, batch)) * n
        assert value == pytest.approx(expected, rel=1e-4)
    dist = lab.distributions([image])[0]
    assert sum(dist["color"].values()) == pytest.approx(1.0) and sum(dist["shape"].values()) == pytest.approx(1.0)
    questions = [H.STATEMENT_TEMPLATE.format(claim="The color is red"), H.STATEMENT_TEMPLATE.format(claim="Nothing")]
    (py, pn), nothing = lab.yes_no_probs(questions, [[image], [image]])
    assert py == pytest.approx(dist["color"]["red"], rel=1e-5) and py + pn == pytest.approx(1.0)
    assert nothing == (0.0, 1.0)


def test_follow_up_rate_gets_its_own_arm_names(tmp_path, monkeypatch):
    assert mini.arm_key("strong") == "strong"  # the design's rate
    monkeypatch.setitem(mini.ROUND, "dpo_lr", 5e-5)
    assert mini.arm_key("self") == "self@lr5e-05"
    cfg = mini.rounds_config(tmp_path, 0, "self", "/cold", "/labeler", "p.jsonl", 3)
    assert cfg.output_dir == str(tmp_path / "self@lr5e-05") and cfg.trainer.lr == 5e-5
    assert cfg.labeler.path == "policy"


@pytest.mark.slow
def test_miniature_end_to_end_small(tmp_path, monkeypatch):
    """The whole command at toy size (1 seed, 1 round, 20 held-out images, 20-step cold starts): every result file,
    the report and the plot are written, and a rerun skips every part (about 1 min on 2 cores)."""
    import json

    monkeypatch.setattr(mini, "ROUND", dict(mini.ROUND))  # main() sets the round settings from its arguments
    argv = ["--seeds", "0", "--rounds", "1", "--held", "20", "--cold-steps", "20", "--labeler-steps", "20",
            "--prompts-per-round", "8", "--out", str(tmp_path)]
    assert mini.main(argv) == 0
    names = sorted(p.name for p in (tmp_path / "results").glob("*.json"))
    assert names == ["seed0_dev.json", "seed0_round0.json", "seed0_self_round1.json", "seed0_strong_round1.json"]
    r = json.loads((tmp_path / "results" / "seed0_strong_round1.json").read_text())
    assert r["n"] == 20 and (tmp_path / "seed0" / "strong" / "round_1" / "round.json").exists()
    assert (tmp_path / "rlaifv_miniature.png").stat().st_size > 0
    stamp = {p: p.stat().st_mtime_ns for p in (tmp_path / "results").glob("*.json")}
    assert mini.main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "results").glob("*.json")} == stamp
