"""The hallucination grader of the RLAIF-V miniature (examples/rlaifv/miniature.py), fixed before any run.

easy-VQA gives every image its ground truth: one shape (circle, rectangle, triangle) of one colour (8 colours).
A description is graded the way CHAIR grades object mentions (Object HalBench), at the level of its claims:

- claims: the same rule splitter the labeler's pipeline uses (`rewards.rlaifv.split_claims`: sentences, then
  ", and" clauses), so the grader and the labeler see the same claims;
- a claim is *checkable* when it names at least one colour or shape word (after normalisation: case folded,
  punctuation dropped, "grey" = "gray", a plural "circles" = "circle"); a claim naming none ("This is an
  image") is *unchecked*: it neither hallucinates nor counts in the denominator;
- a checkable claim *hallucinates* when one of its named values contradicts the truth: a colour other than
  the image's colour, a shape other than its shape, or a negated value that is the truth ("not red" for a
  red shape). A negation is "not" / "no" / "isn't" / "never" directly before the value or before an article
  and the value ("not a circle").

Per held-out set (`aggregate`):
- `chair_i`: hallucinated claims / checkable claims (the share of claims that contradict the ground truth),
  with a standard error that treats each description as a cluster (claims of one description are not
  independent): se = sqrt(sum_d (h_d - r c_d)^2) / sum_d c_d (the ratio estimator's linearised s.e.);
- `chair_s`: descriptions with at least one hallucinated claim / all descriptions (binomial s.e.);
- no collapse: `says_anything` (descriptions with at least one checkable claim), `words` (mean length),
  `colour_named` / `shape_named` (descriptions naming each attribute), `colour_wrong` / `shape_wrong` (among
  descriptions naming it, the share naming a wrong value).

Also here: the labeler's accuracy on yes/no claim questions with known truth (`verdict_accuracy`), the dev
claims it is measured on (`dev_claims`), the description target (`description`), and how
many of a round's preference pairs are right by the ground truth (`pair_agreement`).
"""
from __future__ import annotations

import math
import random
import re
from typing import Sequence

from rewards.rlaifv import STATEMENT_TEMPLATE, split_claims
from rlkit.data.easy_vqa import COLORS, SHAPES

ATTRIBUTES = {"color": COLORS, "shape": SHAPES}
_VALUE = {**{c: ("color", c) for c in COLORS}, **{s: ("shape", s) for s in SHAPES}, "grey": ("color", "gray")}
_VALUE.update({v + "s": a for v, a in list(_VALUE.items())})  # plurals: circles, reds (harmless)
NEGATIONS = {"not", "no", "never", "isnt", "nt", "neither", "nor"}
ARTICLES = {"a", "an", "the"}
_APOS = re.compile(r"['\u2019`]")
_NON_WORD = re.compile(r"[^0-9a-z]+")
DESCRIBE_PROMPT = "Describe the image."


def words(text: str) -> list[str]:
    """Normalised words: case folded, apostrophes dropped ("isn't" -> "isnt"), other punctuation a space."""
    return _NON_WORD.sub(" ", _APOS.sub("", text.casefold())).split()


def mentions(claim: str) -> list[tuple[str, str, bool]]:
    """(attribute, value, negated) for every colour/shape word of `claim`, in order.

    >>> mentions("The shape is not a red circle")
    [('color', 'red', True), ('shape', 'circle', False)]
    """
    ws = words(claim)
    out = []
    for i, w in enumerate(ws):
        if w not in _VALUE:
            continue
        j = i - 1
        while j >= 0 and ws[j] in ARTICLES:
            j -= 1
        out.append((*_VALUE[w], j >= 0 and ws[j] in NEGATIONS))
    return out


def claim_verdict(claim: str, color: str, shape: str) -> str:
    """"unchecked" (names no colour or shape), "hallucinated" (a named value contradicts the truth) or "correct"."""
    truth = {"color": color, "shape": shape}
    found = mentions(claim)
    if not found:
        return "unchecked"
    wrong = any((value == truth[attr]) == negated for attr, value, negated in found)
    return "hallucinated" if wrong else "correct"


def grade_description(text: str, color: str, shape: str) -> dict:
    """Counts for one description of an image whose truth is (color, shape)."""
    claims, _ = split_claims(text, max_claims=10_000)
    verdicts = [claim_verdict(c, color, shape) for c in claims]
    named = {a: [v for c in claims for (attr, v, neg) in mentions(c) if attr == a and not neg] for a in ATTRIBUTES}
    truth = {"color": color, "shape": shape}
    return {"claims": len(claims), "checkable": sum(v != "unchecked" for v in verdicts),
            "hallucinated": sum(v == "hallucinated" for v in verdicts), "words": len(text.split()),
            **{f"{a}_named": bool(named[a]) for a in ATTRIBUTES},
            **{f"{a}_wrong": any(v != truth[a] for v in named[a]) for a in ATTRIBUTES}}


def aggregate(graded: Sequence[dict]) -> dict:
    """The held-out metrics of the module docstring over graded descriptions (`grade_description` results)."""
    n = len(graded)
    if not n:
        raise ValueError("aggregate: no descriptions")
    c = [g["checkable"] for g in graded]
    h = [g["hallucinated"] for g in graded]
    total_c = sum(c)
    r = sum(h) / total_c if total_c else float("nan")
    se_i = math.sqrt(sum((hd - r * cd) ** 2 for hd, cd in zip(h, c))) / total_c if total_c else float("nan")
    s = sum(hd > 0 for hd in h) / n
    out = {"n": n, "checkable_claims": total_c, "chair_i": r, "chair_i_se": se_i, "chair_s": s,
           "chair_s_se": math.sqrt(s * (1 - s) / n), "says_anything": sum(cd > 0 for cd in c) / n,
           "words": sum(g["words"] for g in graded) / n, "claims": sum(g["claims"] for g in graded) / n}
    for a in ATTRIBUTES:
        named = [g for g in graded if g[f"{a}_named"]]
        out[f"{a}_named"] = len(named) / n
        out[f"{a}_wrong"] = sum(g[f"{a}_wrong"] for g in named) / len(named) if named else float("nan")
    return out


def mean_over_seeds(values: Sequence[float], ses: Sequence[float]) -> tuple[float, float]:
    """(mean, s.e. of the mean) of per-seed estimates with independent s.e.s: sqrt(sum se^2) / S."""
    k = len(values)
    return sum(values) / k, math.sqrt(sum(e * e for e in ses)) / k


# ----------------------------------------------------------------------------------------------- targets
def description(color: str, shape: str) -> str:
    """The cold start's description of an image: two claims, one per attribute.

    >>> description("red", "circle")
    'The color is red. The shape is a circle.'
    """
    return f"The color is {color}. The shape is a {shape}."


def attribute_claim(attr: str, value: str) -> str:
    """The claim the description makes about one attribute (what `split_claims` cuts from `description`)."""
    return f"The color is {value}" if attr == "color" else f"The shape is a {value}"


def dev_claims(images: Sequence[tuple], seed: int = 0) -> list[dict]:
    """Four claims per (image, color, shape): each attribute once true and once with another value (seeded).
    Balanced: half true, half false, half about colour."""
    rng = random.Random(f"rlaifv-dev-{seed}")
    out = []
    for image, color, shape in images:
        for attr, true_value in (("color", color), ("shape", shape)):
            wrong = rng.choice([v for v in ATTRIBUTES[attr] if v != true_value])
            for value, truth in ((true_value, True), (wrong, False)):
                out.append({"image": image, "attribute": attr, "claim": attribute_claim(attr, value),
                            "question": STATEMENT_TEMPLATE.format(claim=attribute_claim(attr, value)), "truth": truth})
    return out


def verdict_accuracy(probs: Sequence[tuple[float, float]], claims: Sequence[dict], accept_odds: float = 1.0) -> dict:
    """Accuracy of the verdicts P(yes) > accept_odds * P(no) against `claims[i]["truth"]`: overall, per attribute,
    and the share of claims accepted (a labeler that says yes to everything scores 0.5 on balanced claims)."""
    if len(probs) != len(claims):
        raise ValueError(f"verdict_accuracy: {len(probs)} verdicts for {len(claims)} claims")
    right = [(py > accept_odds * pn) == c["truth"] for (py, pn), c in zip(probs, claims)]
    out = {"accuracy": sum(right) / len(right), "accepted": sum(py > accept_odds * pn for py, pn in probs) / len(probs),
           "n": len(right)}
    for a in ATTRIBUTES:
        sel = [r for r, c in zip(right, claims) if c["attribute"] == a]
        out[a] = sum(sel) / len(sel) if sel else float("nan")
    return out


def pair_agreement(pairs: Sequence[tuple[str, str, str, str]]) -> dict:
    """How a round's pairs look by the ground truth: for (chosen, rejected, color, shape) rows, the share where
    the chosen text has fewer hallucinated claims than the rejected one (right), more (wrong), or as many (tie)."""
    n = len(pairs)
    right = wrong = 0
    for chosen, rejected, color, shape in pairs:
        hc = grade_description(chosen, color, shape)["hallucinated"]
        hr = grade_description(rejected, color, shape)["hallucinated"]
        right += hc < hr
        wrong += hc > hr
    return {"pairs": n, "right": right / n if n else float("nan"), "wrong": wrong / n if n else float("nan"),
            "tie": (n - right - wrong) / n if n else float("nan")}
