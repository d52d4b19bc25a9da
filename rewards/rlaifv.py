"""RLAIF-V's divide-and-conquer score: split a response into claims, ask a labeler a yes/no question per claim.

RLAIF-V ("Open-Source AI Feedback Leads to Super GPT-4V Trustworthiness", arXiv 2405.17220) scores a
response to an image question by how many of its atomic claims an open labeler model rejects:

    claims     = split(response)                            rule-based (default) or a language model
    questions  = [to_yes_no(c) for c in claims]             "... Please answer yes or no."
    p_yes, p_no = labeler(question, image)                  P(yes) + P(Yes), P(no) + P(No) at the answer position
    accepted   = p_yes > accept_odds * p_no                 (accept_odds = 1: the paper's strict rule)
    score      = accepted - all = -(rejected claims)

Decisions:
- The offline default is deterministic: sentences (and ", and"/", but" clauses of at least
  `clause_min_words` words on both sides) are claims; questions (ending in "?") and duplicates are dropped;
  at most `max_claims` per response. A claim of at most `short_answer_words` words ("red", "a circle") is
  not a statement on its own, so its question quotes the prompt (`answer_template`); longer claims use
  `statement_template`. `splitter="lm"` / `questioner="lm"` ask a language model instead, with the prompts
  in `SPLIT_PROMPT` / `QUESTION_PROMPT` or a file (`split_prompt_file`, `question_prompt_file`;
  examples/rlaifv/prompts/ holds copies); an LM reply whose question count does not match its claims falls
  back to the templates for that response (audited as `question_source: "rule"`).
- Verdicts come from probabilities, never from parsing generated text: a `Labeler` returns
  (P(yes variants), P(no variants)) per question from one forward pass (rlkit.run.labeler.TransformersLabeler).
- A response with no claims, or whose think block never closed, gets `empty_score` (default None: not
  scored, never paired, as in the reference code, where such a response has no score at all), so an empty
  answer cannot win by claiming nothing. Only the answer part (after `</think>`) is split.
- `normalize="claims"` divides by the number of claims: the reward becomes minus the rejected fraction.
- `accept_odds` > 1 makes the labeler stricter (a claim needs P(yes) > accept_odds * P(no)); 1 is the paper.
- Batched: all questions of a call go to the labeler in one call, identical (question, image) pairs once.
- Audit: every intermediate (claims, questions, probabilities, verdicts, score) is in the returned
  `RLAIFVScore`s; `audit_path` appends them as JSON lines.

A leaf module: imports no rlkit driver, model or Ray; model access arrives as objects (`resources`).
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from typing import Protocol, Sequence, runtime_checkable

from rewards.registry import register_reward
from rewards.text import THINK_CLOSE, THINK_OPEN, answer_part, clean_text, completion_text

STATEMENT_TEMPLATE = 'Is the following statement about the image true? "{claim}" Please answer yes or no.'
ANSWER_TEMPLATE = "Question: {prompt}\nAnswer: {claim}\nIs this answer correct for the image? Please answer yes or no."
YES_NO_SUFFIX = " Please answer yes or no."
SPLIT_PROMPT = (
    "You extract facts from an answer about an image. Rewrite every fact the answer states about the image as "
    "a short, self-contained sentence: replace \"it\" or \"they\" with what they refer to, and use the question "
    "for context. Leave out opinions, hedges and anything that is not about the image.\n\n"
    "Write one fact per line, each starting with \"- \". Write nothing else.\n\n"
    "Question: {question}\nAnswer: {answer}\nFacts:"
)
QUESTION_PROMPT = (
    "Turn each statement below into a yes/no question asking whether the statement is true of the image. Keep "
    "the meaning, the tense and any negation (\"not\", \"no\") of each statement, and add nothing.\n\n"
    "Write one question per line, in the same order, each starting with \"- \". Write nothing else.\n\n"
    "Statements:\n{claims}\nQuestions:"
)
SPLITTERS = ("rule", "lm")
NORMALIZE = ("none", "claims")

_ABBREV = ("e.g.", "i.e.", "etc.", "vs.", "mr.", "mrs.", "ms.", "dr.", "fig.", "approx.")
_BOUNDARY = re.compile(r"(?<=[.!?])\s+|;\s+")
_CLAUSE = re.compile(r",\s+(?:and|but|while|whereas)\s+", re.IGNORECASE)
_BULLET = re.compile(r"^(?:[-*\u2022]|\d{1,3}[.)])\s+")
_ALNUM = re.compile(r"\w")


# ----------------------------------------------------------------------------------------------- model access
@runtime_checkable
class Labeler(Protocol):
    """The labeler: for each question (with its images), P(yes variants) and P(no variants) at the answer position."""

    def yes_no_probs(self, questions: list[str], images: list[list]) -> list[tuple[float, float]]: ...


@runtime_checkable
class TextLM(Protocol):
    """A language model for LM splitting/questioning: user messages in, greedy replies out."""

    def complete(self, prompts: list[str]) -> list[str]: ...


# ----------------------------------------------------------------------------------------------- records
@dataclasses.dataclass
class ClaimVerdict:
    claim: str
    kind: str  # "statement" or "answer" (a short claim, asked together with the prompt)
    question: str = ""
    p_yes: float | None = None
    p_no: float | None = None
    accepted: bool | None = None


@dataclasses.dataclass
class RLAIFVScore:
    """One response's result; `to_dict()` is its audit line."""

    prompt: str
    response: str
    status: str  # "scored" | "no_claims" | "unfinished"
    score: float | None = None  # -(rejected claims); normalised when asked; empty_score without claims
    claims: list = dataclasses.field(default_factory=list)  # ClaimVerdict, in order
    rejected: int = 0
    truncated: int = 0  # claims beyond max_claims, not checked
    question_source: str = "rule"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------- splitting
def split_claims(text: str, *, max_claims: int = 16, clause_min_words: int = 3) -> tuple[list[str], int]:
    """Rule-based atomic claims of `text` and how many were cut by `max_claims`.

    >>> split_claims("The shape is red, and it is a large circle. Is it blue? It is red!")
    (['The shape is red', 'it is a large circle', 'It is red'], 0)
    >>> split_claims("- red\\n- e.g. a circle; 3.5 cm wide")
    (['red', 'e.g. a circle', '3.5 cm wide'], 0)
    """
    sentences: list[str] = []
    for line in clean_text(text).splitlines():  # lines first, so list markers ("1. ", "- ") are not sentences
        merged: list[str] = []
        for part in _BOUNDARY.split(_BULLET.sub("", line.strip())):
            if merged and merged[-1].lower().endswith(_ABBREV):
                merged[-1] += " " + part
            else:
                merged.append(part)
        sentences += merged
    claims, seen = [], set()
    for sentence in sentences:
        sentence = sentence.strip()
        if not sentence or sentence.endswith("?"):
            continue
        parts = _CLAUSE.split(sentence)
        if len(parts) > 1 and min(len(p.split()) for p in parts) < clause_min_words:
            parts = [sentence]
        for p in parts:
            p = p.strip().rstrip(" .,;:!").strip()
            if _ALNUM.search(p) and p.casefold() not in seen:
                seen.add(p.casefold())
                claims.append(p)
    return claims[:max_claims], max(0, len(claims) - max_claims)


def parse_list(reply: str) -> list[str]:
    """Items of an LM reply written one per line ("- item", "1. item"); headers and blank lines are skipped."""
    out = []
    for line in clean_text(reply).splitlines():
        line = line.strip()
        if not line or line.startswith("#") or line.endswith(":"):
            continue
        line = _BULLET.sub("", line).strip()
        if line:
            out.append(line)
    return out


def _template(text: str | None, file: str | None, default: str) -> str:
    if text and file:
        raise ValueError("give a prompt as text or as a file, not both")
    if file:
        p = pathlib.Path(file)
        if not p.is_file():
            raise FileNotFoundError(f"RLAIF-V prompt file not found: {file}")
        return p.read_text()
    return text or default


def rule_question(claim: ClaimVerdict, prompt: str, statement_template: str = STATEMENT_TEMPLATE,
                  answer_template: str = ANSWER_TEMPLATE) -> str:
    """The yes/no question for one claim from the templates ({claim}, {prompt})."""
    template = answer_template if claim.kind == "answer" else statement_template
    return template.format(claim=claim.claim, prompt=prompt.strip())


def _key(images: Sequence) -> tuple:
    return tuple(im if isinstance(im, str) else id(im) for im in images)


# ----------------------------------------------------------------------------------------------- scoring
def rlaifv_scores(prompts, completions, *, labeler: Labeler, images=None, splitter: str = "rule",
                  questioner: str = "rule", lm: TextLM | None = None, split_prompt: str | None = None,
                  split_prompt_file: str | None = None, question_prompt: str | None = None,
                  question_prompt_file: str | None = None, statement_template: str = STATEMENT_TEMPLATE,
                  answer_template: str = ANSWER_TEMPLATE, short_answer_words: int = 3, clause_min_words: int = 3,
                  max_claims: int = 16, normalize: str = "none", empty_score: float | None = None,
                  accept_odds: float = 1.0, think_open: str = THINK_OPEN,
                  think_close: str = THINK_CLOSE) -> list[RLAIFVScore]:
    """Per-response RLAIF-V results with every intermediate (see the module docstring)."""
    if not accept_odds > 0:
        raise ValueError(f"accept_odds must be > 0, got {accept_odds}")
    if splitter not in SPLITTERS or questioner not in SPLITTERS:
        raise ValueError(f"splitter and questioner must be one of {', '.join(SPLITTERS)}, got {splitter!r}, "
                         f"{questioner!r}")
    if normalize not in NORMALIZE:
        raise ValueError(f"normalize must be one of {', '.join(NORMALIZE)}, got {normalize!r}")
    if "lm" in (splitter, questioner) and lm is None:
        raise ValueError("splitter/questioner 'lm' needs a language model (resources.claim_lm, or lm=...)")
    split_t = _template(split_prompt, split_prompt_file, SPLIT_PROMPT)
    question_t = _template(question_prompt, question_prompt_file, QUESTION_PROMPT)
    n = len(completions)
    images = images if images is not None else [[] for _ in range(n)]
    results = []
    for i in range(n):
        prompt = completion_text(prompts[i]) if not isinstance(prompts[i], str) else prompts[i]
        text = completion_text(completions[i])
        answer = answer_part(text, think_open, think_close)
        results.append(RLAIFVScore(prompt, text, "unfinished" if answer is None else "scored"))
    todo = [i for i, r in enumerate(results) if r.status == "scored"]

    # ---- 1. claims
    if splitter == "lm":
        replies = lm.complete([split_t.format(question=results[i].prompt, answer=answer_part(results[i].response,
                              think_open, think_close).strip()) for i in todo]) if todo else []
        found = {i: parse_list(rep) for i, rep in zip(todo, replies)}
    else:
        found = {i: split_claims(answer_part(results[i].response, think_open, think_close),
                                 max_claims=10**9, clause_min_words=clause_min_words)[0] for i in todo}
    for i in todo:
        claims = found[i]
        results[i].truncated = max(0, len(claims) - max_claims)
        results[i].claims = [ClaimVerdict(c, "answer" if len(c.split()) <= short_answer_words else "statement")
                             for c in claims[:max_claims]]
        if not results[i].claims:
            results[i].status = "no_claims"
    todo = [i for i in todo if results[i].claims]

    # ---- 2. questions
    for i in todo:
        for c in results[i].claims:
            c.question = rule_question(c, results[i].prompt, statement_template, answer_template)
    if questioner == "lm" and todo:
        replies = lm.complete([question_t.format(claims="\n".join(f"- {c.claim}" for c in results[i].claims))
                               for i in todo])
        for i, rep in zip(todo, replies):
            qs = parse_list(rep)
            if len(qs) == len(results[i].claims):
                for c, q in zip(results[i].claims, qs):
                    c.question = q if "yes or no" in q.lower() else q + YES_NO_SUFFIX
                results[i].question_source = "lm"

    # ---- 3. one batched labeler call over the distinct (question, images)
    index: dict[tuple, int] = {}
    asked_q, asked_im = [], []
    for i in todo:
        for c in results[i].claims:
            key = (c.question, _key(images[i] or []))
            if key not in index:
                index[key] = len(asked_q)
                asked_q.append(c.question)
                asked_im.append(list(images[i] or []))
    probs = labeler.yes_no_probs(asked_q, asked_im) if asked_q else []
    if len(probs) != len(asked_q):
        raise RuntimeError(f"the labeler returned {len(probs)} results for {len(asked_q)} questions")

    # ---- 4. verdicts and scores
    for i, r in enumerate(results):
        if r.status != "scored":
            r.score = empty_score
            continue
        for c in r.claims:
            p_yes, p_no = probs[index[(c.question, _key(images[i] or []))]]
            c.p_yes, c.p_no, c.accepted = float(p_yes), float(p_no), bool(p_yes > accept_odds * p_no)
        r.rejected = sum(not c.accepted for c in r.claims)
        r.score = 0.0 - r.rejected / (len(r.claims) if normalize == "claims" else 1.0)  # 0.0, never -0.0
    return results


def write_audit(results: Sequence[RLAIFVScore], path: str | pathlib.Path,
                extra: dict | Sequence[dict] | None = None) -> None:
    """Append one JSON line per response (its claims, questions, probabilities, verdicts, score) to `path`.

    `extra`: fields added to every line (a dict) or to each line (one dict per result).
    """
    extras = [extra or {}] * len(results) if not isinstance(extra, (list, tuple)) else list(extra)
    p = pathlib.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "a", encoding="utf-8") as f:
        for r, e in zip(results, extras):
            f.write(json.dumps({**e, **r.to_dict()}, ensure_ascii=False) + "\n")


@register_reward("rlaifv", needs=("labeler",), batched=True)
def rlaifv(prompts, completions, *, resources, images=None, splitter: str = "rule", questioner: str = "rule",
           split_prompt: str | None = None, split_prompt_file: str | None = None, question_prompt: str | None = None,
           question_prompt_file: str | None = None, statement_template: str = STATEMENT_TEMPLATE,
           answer_template: str = ANSWER_TEMPLATE, short_answer_words: int = 3, clause_min_words: int = 3,
           max_claims: int = 16, normalize: str = "none", empty_score: float | None = None,
           accept_odds: float = 1.0, think_open: str = THINK_OPEN, think_close: str = THINK_CLOSE,
           audit_path: str | None = None) -> list[float | None]:
    """RLAIF-V reward: minus the number of claims the labeler rejects (None for responses without claims).

    Needs `resources.labeler` (a `Labeler`), and `resources.claim_lm` (a `TextLM`) for `splitter="lm"` or
    `questioner="lm"`. Options: see `rlaifv_scores` and docs/rlaifv.md; `audit_path` appends every
    intermediate as JSON lines.
    """
    results = rlaifv_scores(
        prompts, completions, labeler=resources.labeler, images=images, splitter=splitter, questioner=questioner,
        lm=getattr(resources, "claim_lm", None), split_prompt=split_prompt, split_prompt_file=split_prompt_file,
        question_prompt=question_prompt, question_prompt_file=question_prompt_file,
        statement_template=statement_template, answer_template=answer_template,
        short_answer_words=short_answer_words, clause_min_words=clause_min_words, max_claims=max_claims,
        normalize=normalize, empty_score=empty_score, accept_odds=accept_odds, think_open=think_open,
        think_close=think_close)
    if audit_path:
        write_audit(results, audit_path)
    return [r.score for r in results]
