"""Held-out VQA accuracy: normalised exact match, overall and per question type.

The engine stays outside: `evaluate_vqa` takes a `generate_fn(items) -> list[str]` where each item is a
dict `{"prompt": question, "image": path-or-PIL-or-None}` and the answer is greedy. The GRPO driver passes
one backed by vLLM; `make_hf_generate_fn` gives one backed by transformers `generate` (the reference, used
by tests and the research scripts).

Grading (`exact_match`) is the `exact_match` training reward's: the answer part after a closed think block,
case, surrounding whitespace and punctuation ignored ("Red." == "red", "<think>..</think> yes" == "yes").
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Sequence


# Multimodal placeholder tokens: a sampled one inside a completion would be taken for an image slot when the
# sequence is fed back (teacher-forced logprobs fail with "Image features and image tokens do not match").
PLACEHOLDER_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>")


def placeholder_ids(tokenizer) -> list[int]:
    """Ids of the multimodal placeholder tokens the tokenizer has: never to be sampled in a completion."""
    ids = tokenizer.convert_tokens_to_ids(list(PLACEHOLDER_TOKENS))
    return [i for i in ids if i is not None and i != tokenizer.unk_token_id]


def exact_match(prediction: str, answer: str) -> bool:
    """Graded exactly as the `exact_match` training reward grades (rewards.basic): held-out accuracy and
    training reward never disagree about what a right answer is."""
    from rewards import exact_match as reward

    return reward([""], [prediction], answer=[answer]) == [1.0]


def evaluate_vqa(
    generate_fn: Callable[[list[dict[str, Any]]], list[str]],
    dataset,
    *,
    batch_size: int = 256,
    prompt_column: str = "prompt",
    image_column: str = "image",
    answer_column: str = "answer",
    type_column: str | None = "type",
    return_predictions: bool = False,
) -> dict[str, Any]:
    """Accuracy of `generate_fn` on `dataset` (a datasets.Dataset or a list of dicts).

    Returns {"accuracy": float, "n": int, "by_type": {type: {"accuracy": float, "n": int}}} and, with
    `return_predictions`, "predictions": the raw generated strings in dataset order.
    """
    rows = dataset if isinstance(dataset, list) else [dict(r) for r in dataset]
    if rows and answer_column not in rows[0]:
        raise ValueError(f"evaluate_vqa: rows lack the answer column {answer_column!r}; columns: {sorted(rows[0])}")
    predictions: list[str] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        items = [{"prompt": r[prompt_column], "image": r.get(image_column)} for r in chunk]
        out = list(generate_fn(items))
        if len(out) != len(items):
            raise ValueError(f"generate_fn returned {len(out)} answers for {len(items)} prompts")
        predictions.extend(out)
    hits: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    correct = 0
    for r, pred in zip(rows, predictions):
        ok = exact_match(pred, r[answer_column])
        correct += ok
        if type_column and type_column in r:
            h = hits[r[type_column]]
            h[0] += ok
            h[1] += 1
    n = len(rows)
    result: dict[str, Any] = {
        "accuracy": correct / n if n else 0.0,
        "n": n,
        "by_type": {t: {"accuracy": c / m, "n": m} for t, (c, m) in sorted(hits.items())},
    }
    if return_predictions:
        result["predictions"] = predictions
    return result


def make_hf_generate_fn(
    model,
    processor,
    *,
    max_new_tokens: int = 8,
    enable_thinking: bool = False,
    batch_size: int = 256,
    do_sample: bool = False,
    temperature: float = 1.0,
) -> Callable[[list[dict[str, Any]]], list[str]]:
    """A transformers-backed `generate_fn` for a (tiny) vision-language model: greedy by default.

    Prompts are rendered with the processor's chat template (fast mode unless `enable_thinking`), left
    padded, images expanded by the processor. Returns the decoded new tokens, special tokens removed.
    """
    import torch

    from rlkit.drivers.sft import load_image, render_prompt

    tok = processor.tokenizer

    def generate(items: Sequence[dict[str, Any]]) -> list[str]:
        out: list[str] = []
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            has_image = [it.get("image") is not None for it in chunk]
            if any(has_image) and not all(has_image):
                # mixed batches: one call per kind keeps the processor's image/placeholder bookkeeping simple
                by_kind = {True: [], False: []}
                for i, h in enumerate(has_image):
                    by_kind[h].append(i)
                answers = [""] * len(chunk)
                for idxs in by_kind.values():
                    for i, a in zip(idxs, generate([chunk[i] for i in idxs])):
                        answers[i] = a
                out.extend(answers)
                continue
            texts = [render_prompt(processor, it["prompt"], has_image[0], enable_thinking) for it in chunk]
            kw: dict[str, Any] = {}
            if has_image[0]:
                kw["images"] = [load_image(it["image"]) for it in chunk]
            side = tok.padding_side
            tok.padding_side = "left"
            try:
                enc = processor(text=texts, padding=True, return_tensors="pt", **kw)
            finally:
                tok.padding_side = side
            gen_kw: dict[str, Any] = dict(
                max_new_tokens=max_new_tokens, do_sample=do_sample, suppress_tokens=placeholder_ids(tok)
            )
            if do_sample:
                gen_kw.update(temperature=temperature, top_k=0, top_p=1.0)
            was_training = model.training
            model.eval()
            with torch.no_grad():
                seqs = model.generate(**enc, **gen_kw)
            if was_training:
                model.train()
            new = seqs[:, enc["input_ids"].shape[1] :]
            out.extend(tok.batch_decode(new, skip_special_tokens=True))
        return out

    return generate
