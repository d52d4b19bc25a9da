"""The RLPR miniature's held-out judge (examples/rlpr/grade.py) and split (examples/rlpr/make_data.py), on
hand-derived cases."""
import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(f"rlpr_{name}", ROOT / "examples/rlpr" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


grade = _load("grade")
make_data = _load("make_data")

DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONDAY = {"accepted": ["Monday", "Mon"], "distractors": [d for d in DAYS if d != "Monday"]}


@pytest.mark.parametrize("text,right", [
    ("Monday", True), ("monday", True), ("It is Monday.", True), ("The answer is MONDAY!", True), ("Mon", True),
    ("Tuesday", False), ("It is Tuesday.", False), ("", False),
    ("not Monday", False), ("It is not Monday.", False), ("isn't Monday", False),  # negated: the substring trap
    ("Mondays", False), ("Mondayish", False), ("Monument", False),  # not a whole word ("mon" inside "monument")
    ("Monday or Tuesday", False), ("Tuesday, Monday", False),  # hedges name a distractor
])
def test_days(text, right):
    assert grade.judge_answer(text, MONDAY["accepted"], MONDAY["distractors"]) is right


def test_number_words_and_hours():
    d42 = make_data.in_words
    spec = {"accepted": ["forty-two", "forty two"], "distractors": [d42(x) for x in range(100) if x != 42]}
    for text, right in [("forty-two", True), ("Forty two.", True), ("It is forty-two", True),
                        ("forty-three", False), ("forty", False), ("two", False), ("forty-two or forty-three", False)]:
        assert grade.judge_answer(text, spec["accepted"], spec["distractors"]) is right, text
    two = {"accepted": ["forty-two", "forty two"], "distractors": [d42(x) for x in range(100) if x != 2]}
    assert grade.judge_answer("two", ["two"], two["distractors"]) is True
    assert grade.judge_answer("forty-two", ["two"], two["distractors"]) is False  # 42 is not 2: "forty" is left
    hours = ["two o'clock", "2 o'clock", "2:00", "two", "2"]
    others = [f"{w} o'clock" for w in ("one", "three", "eleven")]
    for text, right in [("two o'clock", True), ("It is 2 o'clock.", True), ("2:00", True), ("two", True),
                        ("twelve o'clock", False), ("three o'clock", False), ("two or three o'clock", False)]:
        assert grade.judge_answer(text, hours, others) is right, text


def test_judge_reads_the_final_answer_only():
    gold = {"accepted": ["Saturday"], "distractors": ["Friday", "Sunday"]}
    texts = ["<think>Friday, then Saturday.</think>\n\nIt is Saturday.",  # distractor in the reasoning only: right
             "<think>Friday, then Saturday.</think>\n\nFriday",  # the reasoning's right answer does not count
             "<think>Friday, then Saturday.",  # unclosed think block
             "Saturday"]
    assert grade.judge(["q"] * 4, texts, answer=[gold] * 4) == [1.0, 0.0, 0.0, 1.0]
    assert grade.judge(["q", "q"], ["late", "early"], answer=[["late"], None]) == [1.0, None]
    # exact match (a training reward) refuses the right paraphrase the judge accepts
    from rewards.basic import exact_match

    assert exact_match(["q"], ["It is Saturday."], answer=["Saturday"]) == [0.0]
    assert grade.judge(["q"], ["It is Saturday."], answer=["Saturday"]) == [1.0]


def test_generator_rows_are_judged_right_by_their_own_reference():
    for r in make_data.make(700, 0, columns=None):
        assert grade.judge_answer(r["answer"], r["accepted"], r["distractors"]), r
        assert r["answer"] in r["accepted"]
        assert not any(grade.judge_answer(d, r["accepted"], r["distractors"]) for d in r["distractors"]), r


def test_split_is_by_prompt_and_disjoint():
    rows = make_data.make(2000, 0, columns=None)
    assert len({r["prompt"] for r in rows}) < len(rows)  # the generator repeats prompts
    train, held = make_data.split_rows(rows)
    assert {r["prompt"] for r in train}.isdisjoint(r["prompt"] for r in held)
    assert len(held) == len({r["prompt"] for r in held})  # each held-out prompt once
    assert len(train) + sum(1 for r in rows if make_data.is_held_out(r["prompt"])) == len(rows)
    assert 0.2 < len(held) / len({r["prompt"] for r in rows}) < 0.4  # about 30 % of the distinct prompts


def test_phrases_file_is_unchanged_by_the_new_columns():
    text = "".join(__import__("json").dumps(r) + "\n" for r in make_data.make(1000, 0))
    assert text == (ROOT / "examples/rlpr/phrases.jsonl").read_text()
