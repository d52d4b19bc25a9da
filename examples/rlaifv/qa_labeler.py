"""The labeler of the RLAIF-V miniature: a tiny VLM that checks a claim by answering the attribute's question itself.

Why not the paper's yes/no answer: the first run of the miniature (docs/rlaifv.md, "run 1") trained tiny VLMs on
yes/no claim questions in the labeler's template and measured them on the dev split: both the 400-step labeler
and the policy stayed at chance (accuracy 0.500, "no" to every claim; training loss at ln 2 per answer), so every
claim was rejected. A tiny VLM does learn to *name* the colour in CPU minutes (docs/demo.md), so this labeler turns
each claim into the open question about the attribute it names, as RLAIF-V's divide-and-conquer turns claims
into questions, and reads its verdict from the model's own answer distribution:

- the claim (the whole question text the scorer sends; its template words name no colour or shape) is parsed
  for colour and shape words (`hallucination.mentions`: the word lists, not the truth);
- for each named attribute the model is asked COLOR_Q / SHAPE_Q with the image; P(value) = the model's
  probability of answering exactly that value (answer tokens + end of turn, as trained), normalised over the
  attribute's values;
- P(yes) = product over the claim's named values of P(value) (1 - P(value) for a negated one), P(no) = 1 - P(yes);
  the scorer's rule (accept when P(yes) > P(no)) then accepts a claim whose values the model believes more
  likely than not. A claim naming no colour or shape cannot be checked: P(yes) = 0, rejected.
`LabelerResources(QALabeler(...))` plugs it into `rlkit.drivers.rlaifv.run_round` unchanged (the `Labeler` protocol).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

import hallucination as H

COLOR_Q = "what color is the shape?"
SHAPE_Q = "what shape is in the image?"
QUESTIONS = {"color": COLOR_Q, "shape": SHAPE_Q}


def claim_probs(question: str, dist: dict[str, dict[str, float]]) -> tuple[float, float]:
    """(P(yes), P(no)) of the claim in `question` given the labeler's answer distributions dist[attribute][value].

    >>> claim_probs('Is ... true? "The color is red" ...', {"color": {"red": 0.7, "blue": 0.3}})
    (0.7, 0.30000000000000004)
    """
    found = H.mentions(question)
    if not found:
        return 0.0, 1.0
    p = 1.0
    for attr, value, negated in found:
        pv = dist[attr][value]
        p *= (1.0 - pv) if negated else pv
    return p, 1.0 - p


def normalise(logps: dict[str, float]) -> dict[str, float]:
    """Softmax of per-value sequence log-probabilities."""
    m = max(logps.values())
    z = sum(math.exp(v - m) for v in logps.values())
    return {k: math.exp(v - m) / z for k, v in logps.items()}


@torch.no_grad()
def answer_logprobs(model, processor, questions: Sequence[str], images: Sequence, answers: Sequence[str],
                    batch_size: int = 64) -> list[float]:
    """log P(answer + end of turn | question, image) per row, laid out exactly as the cold start trains
    (`rlkit.drivers.sft.build_sft_batch`: fast-mode prompt, answer-only labels)."""
    from rlkit.drivers.sft import build_sft_batch

    was = model.training
    model.eval()
    out: list[float] = []
    try:
        for s in range(0, len(questions), batch_size):
            b = build_sft_batch(processor, list(questions[s:s + batch_size]), list(images[s:s + batch_size]),
                                list(answers[s:s + batch_size]))
            labels = b.pop("labels")
            logits = model(**b, use_cache=False).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            tgt = labels[:, 1:]
            mask = tgt != -100
            lp = logp.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
            out += lp.sum(-1).tolist()
    finally:
        model.train(was)
    return out


class QALabeler:
    """`rewards.rlaifv.Labeler` over a VLM that answers COLOR_Q / SHAPE_Q (a folder, or a model and processor)."""

    def __init__(self, model_or_path, processor=None, batch_size: int = 64):
        if isinstance(model_or_path, str):
            from rlkit.models.loading import load_policy

            model_or_path, processor, _ = load_policy(model_or_path, "float32")
        self.model, self.processor, self.batch_size = model_or_path, processor, batch_size

    def distributions(self, images: Sequence) -> list[dict[str, dict[str, float]]]:
        """For each image, the model's normalised answer distribution over each attribute's values."""
        rows = [(i, attr, v) for i in range(len(images)) for attr, vals in H.ATTRIBUTES.items() for v in vals]
        lps = answer_logprobs(self.model, self.processor, [QUESTIONS[a] for _, a, _ in rows],
                              [images[i] for i, _, _ in rows], [v for _, _, v in rows], self.batch_size)
        out: list[dict] = [{a: {} for a in H.ATTRIBUTES} for _ in images]
        for (i, attr, v), lp in zip(rows, lps):
            out[i][attr][v] = lp
        return [{a: normalise(d[a]) for a in d} for d in out]

    def yes_no_probs(self, questions: list[str], images: list[list]) -> list[tuple[float, float]]:
        from rlkit.data import open_image

        keys, uniq = [], {}
        for ims in images:
            if len(ims) != 1:
                raise ValueError(f"QALabeler: every question needs exactly one image, got {len(ims)}")
            key = ims[0] if isinstance(ims[0], str) else id(ims[0])
            keys.append(uniq.setdefault(key, (len(uniq), ims[0]))[0])
        opened = [open_image(im) for _, im in sorted(uniq.values())]
        dists = self.distributions(opened)
        return [claim_probs(q, dists[k]) for q, k in zip(questions, keys)]

    def close(self) -> None:
        pass
