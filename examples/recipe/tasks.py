"""The recipe's rows, held-out graders and table (examples/recipe/run.py): pure logic over easy-VQA's ground truth.

Every easy-VQA image used here has one shape of one colour, both known (`image_truth` of the RLAIF-V miniature).
Three kinds of prompt about an image:

- **rule** rows: easy-VQA's own questions ("what color is the shape?"), answered with one word; a rule verifier
  (exact match) checks them. Column `rule_answer` holds the word (the rule reward reads it), `reference` None.
- **free** rows: the same question asked for a sentence ("Say in a sentence what color the shape is."); the
  cold start answers them in paraphrases ("It is red.", "The color is red.", "I think it is red."), so exact
  match would refuse every right answer: the RLPR setting. Column `reference` holds the word (RLPR reads it),
  `rule_answer` None, and the row is pinned to deep mode (RLPR scores the answer after the reasoning; it gives
  fast samples None).
- **describe** rows ("Describe the image." -> "The color is red. The shape is a circle."): the RLAIF-V stage's
  prompts, and the held-out hallucination set (graded by examples/rlaifv/hallucination.py).

Deep-mode targets think first: `<think>\\nThe image shows a red circle.\\n</think>\\n\\n<answer>`.
Held-out (fixed before any run): per held-out test image one rule question about one attribute (colour on even
positions, shape on odd ones) and one free question about the other. Rule answers are graded by exact match,
free answers by `judge_free` (neither is a training reward's exact twin: RLPR never grades; the rule reward is
exact match on the same one-word answers).
"""
from __future__ import annotations

import math
import random
from typing import Sequence

import hallucination as H
from rewards.basic import exact_match
from rewards.text import final_answer

ATTRS = ("color", "shape")
RULE_Q = {"color": "what color is the shape?", "shape": "what shape is in the image?"}  # easy-VQA's questions
FREE_Q = {"color": "Say in a sentence what color the shape is.", "shape": "Say in a sentence what shape is in the image."}
FREE_FORMS = {"color": ("It is {v}.", "The color is {v}.", "The shape is {v}.", "I think it is {v}."),
              "shape": ("It is a {v}.", "The shape is a {v}.", "I see a {v}.", "I think it is a {v}.")}


def other(attr: str) -> str:
    return "shape" if attr == "color" else "color"


def reasoning(color: str, shape: str) -> str:
    """What a deep answer writes in its think block: the whole image, both attributes."""
    return f"The image shows a {color} {shape}."


def value(attr: str, color: str, shape: str) -> str:
    return color if attr == "color" else shape


def qa_row(kind: str, attr: str, image, color: str, shape: str, answer: str | None = None) -> dict:
    """One rule or free question about `attr`; `answer` is the target text (default: the one-word value)."""
    v = value(attr, color, shape)
    rule = kind == "rule"
    return {"prompt": (RULE_Q if rule else FREE_Q)[attr], "image": image, "answer": v if answer is None else answer,
            "rule_answer": v if rule else None, "reference": None if rule else v, "mode": None if rule else "deep",
            "kind": kind, "attribute": attr, "color": color, "shape": shape, "reasoning": reasoning(color, shape)}


def cold_rows(train: Sequence[tuple], seed: int) -> list[dict]:
    """Cold-start rows: per training image (path, colour, shape) a rule question (random attribute) and a free
    question (random attribute, answered by a paraphrase drawn per row), each once per mode (fast: the answer;
    deep: think block + answer), and one fast description."""
    from rlkit.drivers.sft import mode_rows

    rng = random.Random(f"recipe-cold-{seed}")
    qa, desc = [], []
    for path, c, s in train:
        a, b = rng.choice(ATTRS), rng.choice(ATTRS)
        qa.append(qa_row("rule", a, path, c, s))
        qa.append(qa_row("free", b, path, c, s, rng.choice(FREE_FORMS[b]).format(v=value(b, c, s))))
        desc.append({"prompt": H.DESCRIBE_PROMPT, "image": path, "answer": H.description(c, s), "mode": "fast"})
    return mode_rows(qa, modes=("fast", "deep")) + desc


def vocab_texts(cold: Sequence[dict]) -> list[str]:
    """Texts the tiny model's vocabulary is trained on, besides the RLAIF-V miniature's: every distinct prompt
    and target of the cold start (deep targets, paraphrases), repeated so their merges are learnt."""
    return sorted({r["prompt"] for r in cold} | {r["answer"] for r in cold}) * 5


REFERENCES = ("word", "sentence")


def grpo_rows(train: Sequence[tuple], seed: int, reference: str = "word") -> list[dict]:
    """GRPO prompts: per training image one rule row and one free row about the other attribute, in a seeded
    order of images (the prompt stream shuffles again by the run's seed). Columns as `qa_row`, minus reasoning.
    `reference`: the free rows' RLPR reference is the bare value ("word": "red") or the first paraphrase of
    FREE_FORMS, the way the cold start answers ("sentence": "It is red.")."""
    if reference not in REFERENCES:
        raise ValueError(f"reference must be one of {', '.join(REFERENCES)}, got {reference!r}")
    rng = random.Random(f"recipe-grpo-{seed}")
    out = []
    for path, c, s in train:
        a = rng.choice(ATTRS)
        for row in (qa_row("rule", a, path, c, s), qa_row("free", other(a), path, c, s)):
            row.pop("reasoning")
            if row["kind"] == "free" and reference == "sentence":
                row["reference"] = row["answer"] = FREE_FORMS[row["attribute"]][0].format(v=row["reference"])
            out.append(row)
    return out


def held_rows(held: Sequence[tuple]) -> list[dict]:
    """The held-out questions: per image i, a rule question about ATTRS[i % 2] and a free one about the other."""
    out = []
    for i, (path, c, s) in enumerate(held):
        a = ATTRS[i % 2]
        out += [qa_row("rule", a, path, c, s), qa_row("free", other(a), path, c, s)]
    return out


# ------------------------------------------------------------------------------------------------ graders
def judge_free(text: str, attr: str, color: str, shape: str) -> float:
    """1.0 when the final answer (after the think block; an unclosed one is wrong) names the true value of
    `attr`, not negated, and no colour or shape it names contradicts the image (hallucination.mentions)."""
    ans = final_answer(text)
    if ans is None:
        return 0.0
    truth = {"color": color, "shape": shape}
    found = H.mentions(ans)
    named = any(a == attr and v == truth[attr] and not neg for a, v, neg in found)
    wrong = any((v == truth[a]) == neg for a, v, neg in found)
    return float(named and not wrong)


def score(rows: Sequence[dict], texts: Sequence[str]) -> list[float]:
    """Held-out score of each answer: exact match for rule rows, `judge_free` for free rows."""
    out = []
    for r, t in zip(rows, texts):
        if r["kind"] == "rule":
            out.append(exact_match([r["prompt"]], [t], answer=[r["rule_answer"]])[0])
        else:
            out.append(judge_free(t, r["attribute"], r["color"], r["shape"]))
    return out


def breakdown(rows: Sequence[dict], scores: Sequence[float]) -> dict:
    """Accuracy overall and per kind (rule, free) and per attribute (color, shape), with n."""
    groups: dict[str, list[float]] = {"all": list(scores)}
    for r, s in zip(rows, scores):
        groups.setdefault(r["kind"], []).append(s)
        groups.setdefault(r["attribute"], []).append(s)
    return {k: {"accuracy": sum(v) / len(v), "n": len(v)} for k, v in groups.items() if v}


# ------------------------------------------------------------------------------------------------ report
STAGES = ("cold_start", "grpo", "rlaifv")
COLUMNS = (("fast", "held-out fast"), ("deep", "held-out deep"), ("chair_i", "hallucinated claims (CHAIRi)"),
           ("chair_s", "descriptions with one (CHAIRs)"), ("words", "description words"))


def stages_to_run(done: set[str], force: set[str]) -> list[str]:
    """The stages a run (re)does: from the first one that is not done or is forced, every later one too (each
    starts from the previous stage's checkpoint, so a redone stage makes the later results stale)."""
    for i, stage in enumerate(STAGES):
        if stage not in done or stage in force:
            return list(STAGES[i:])
    return []


def stage_row(result: dict) -> dict:
    """The table's numbers of one stage result (run.py's per-stage JSON)."""
    vqa, hall = result["vqa"], result["hallucination"]
    out = {"fast": vqa["fast"]["all"]["accuracy"], "deep": vqa["deep"]["all"]["accuracy"],
           "chair_i": hall["chair_i"], "chair_s": hall["chair_s"], "words": hall["words"],
           "says_anything": hall["says_anything"]}
    for mode in ("fast", "deep"):
        for k in ("rule", "free", "color", "shape"):
            out[f"{mode}_{k}"] = vqa[mode].get(k, {}).get("accuracy", float("nan"))
    return out


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """(mean, standard error over seeds = sample sd / sqrt(S)); the s.e. is NaN for one seed."""
    k = len(values)
    m = sum(values) / k
    if k < 2:
        return m, float("nan")
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (k - 1) / k)


def _f(v: float, spec: str = ".3f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def table(results: dict[int, dict[str, dict]]) -> str:
    """Markdown: one row per (seed, stage) present, then mean ± s.e. over the seeds that have the stage.
    `results[seed][stage]` is a stage result."""
    head = "| seed | stage | " + " | ".join(name for _, name in COLUMNS) + " | fast rule / free | deep rule / free | fast colour / shape | deep colour / shape |"
    lines = [head, "|" + " --- |" * (2 + len(COLUMNS) + 4)]
    rows: dict[str, list[dict]] = {}
    for seed in sorted(results):
        for stage in STAGES:
            if stage not in results[seed]:
                continue
            r = stage_row(results[seed][stage])
            rows.setdefault(stage, []).append(r)
            cells = [_f(r[k], ".1f" if k == "words" else ".3f") for k, _ in COLUMNS]
            lines.append(f"| {seed} | {stage} | " + " | ".join(cells)
                         + f" | {_f(r['fast_rule'])} / {_f(r['fast_free'])} | {_f(r['deep_rule'])} / {_f(r['deep_free'])}"
                         + f" | {_f(r['fast_color'])} / {_f(r['fast_shape'])} | {_f(r['deep_color'])} / {_f(r['deep_shape'])} |")
    for stage in STAGES:
        rs = rows.get(stage, [])
        if len(rs) < 2:
            continue
        cells = []
        for k, _ in COLUMNS:
            m, se = mean_se([r[k] for r in rs])
            spec = ".1f" if k == "words" else ".3f"
            cells.append(f"{_f(m, spec)} ± {_f(se, spec)}")
        pair = lambda a, b: f"{_f(mean_se([r[a] for r in rs])[0])} / {_f(mean_se([r[b] for r in rs])[0])}"  # noqa: E731
        lines.append(f"| mean of {len(rs)} | {stage} | " + " | ".join(cells) + f" | {pair('fast_rule', 'fast_free')} | "
                     f"{pair('deep_rule', 'deep_free')} | {pair('fast_color', 'fast_shape')} | {pair('deep_color', 'deep_shape')} |")
    return "\n".join(lines) + "\n"
