"""Preference datasets in TRL's columns, saved and reloaded with `datasets`, and encoded for the DPO trainer.

Why TRL's format: a data set rlkit writes trains in TRL's `DPOTrainer` unchanged, and any data set in those
columns trains in `rlkit dpo`. The columns (TRL's conversational vision format):

    prompt    [{"role": "user", "content": question}]        (TRL's collator inserts the image entries)
    chosen    [{"role": "assistant", "content": text}]
    rejected  [{"role": "assistant", "content": text}]
    images    list of images (stored as PNG bytes: the saved folder is self-contained)

A plain string is accepted for `prompt`, `chosen` and `rejected` too (TRL's standard format), and `image`
(one image) for `images`. rlkit adds columns TRL ignores, which make DPO train on exactly what was sampled:
`prompt_text` (the prompt as the engine saw it, chat template applied), `chosen_ids`/`rejected_ids` (the
sampled token ids, EOS included; TRL uses the same names for its tokenised completions), and for audit
`chosen_score`, `rejected_score`, `row` (the source row) and `round`.

`encode_rows` turns rows into `EncodedPair` records, the DPO worker's input. Stored ids are tied to the
tokenizer that sampled them, so they (and `prompt_text`) are used only when they decode to the row's texts
with the training model's tokenizer. Otherwise the prompt is rendered with the processor's chat template
(images first in the user turn, as TRL's `prepare_multimodal_messages` places them; `enable_thinking` as
configured) and the completion text is tokenised with the tokenizer's EOS appended, as TRL does.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any, Sequence

from preference.pairs import Candidate, Pair

REQUIRED = ("prompt", "chosen", "rejected")


class PreferenceDataError(ValueError):
    """A preference data set cannot be used; the message names the row, column or folder."""


@dataclasses.dataclass
class PromptInfo:
    """What the data set needs to know about one prompt (the group its candidates answer)."""

    question: str  # the user's text
    images: list  # PIL images or paths
    prompt_text: str = ""  # rendered prompt (chat template) the candidates were sampled from
    row: int = -1  # index of the source row


@dataclasses.dataclass
class EncodedPair:
    """One pair as the DPO worker consumes it (picklable)."""

    prompt_text: str  # rendered prompt, image placeholders included
    images: list  # PIL images, in placeholder order
    chosen_ids: list  # completion token ids
    rejected_ids: list
    index: int = 0  # row in the data set (keys the reference log-prob cache)


def _open(img):
    from PIL import Image

    if isinstance(img, Image.Image):
        return img.convert("RGB")
    if isinstance(img, dict) and img.get("bytes"):
        import io

        return Image.open(io.BytesIO(img["bytes"])).convert("RGB")
    path = img["path"] if isinstance(img, dict) else img
    with Image.open(path) as im:
        return im.convert("RGB")


def pairs_to_dataset(prompts: Sequence[PromptInfo], groups: Sequence[Sequence[Candidate]], pairs: Sequence[Pair],
                     *, round_index: int = 0):
    """A `datasets.Dataset` in TRL's columns (plus rlkit's) with one row per pair."""
    import datasets

    rows: dict[str, list] = {k: [] for k in ("prompt", "chosen", "rejected", "images", "prompt_text", "chosen_ids",
                                             "rejected_ids", "chosen_score", "rejected_score", "row", "round")}
    opened: dict[int, list] = {}
    for p in pairs:
        info, cands = prompts[p.group], groups[p.group]
        if p.group not in opened:
            opened[p.group] = [_open(im) for im in info.images]
        c, r = cands[p.chosen], cands[p.rejected]
        rows["prompt"].append([{"role": "user", "content": info.question}])
        rows["chosen"].append([{"role": "assistant", "content": c.text}])
        rows["rejected"].append([{"role": "assistant", "content": r.text}])
        rows["images"].append(opened[p.group])
        rows["prompt_text"].append(info.prompt_text)
        rows["chosen_ids"].append(list(c.token_ids or []))
        rows["rejected_ids"].append(list(r.token_ids or []))
        rows["chosen_score"].append(float(p.chosen_score))
        rows["rejected_score"].append(float(p.rejected_score))
        rows["row"].append(int(info.row))
        rows["round"].append(int(round_index))
    message = [{"role": datasets.Value("string"), "content": datasets.Value("string")}]
    features = datasets.Features({
        "prompt": message, "chosen": message, "rejected": message, "images": datasets.List(datasets.Image()),
        "prompt_text": datasets.Value("string"), "chosen_ids": datasets.List(datasets.Value("int64")),
        "rejected_ids": datasets.List(datasets.Value("int64")), "chosen_score": datasets.Value("float64"),
        "rejected_score": datasets.Value("float64"), "row": datasets.Value("int64"), "round": datasets.Value("int64"),
    })
    return datasets.Dataset.from_dict(rows, features=features)


def save_dataset(ds, path: str | os.PathLike) -> pathlib.Path:
    """`ds.save_to_disk(path)`; returns the folder."""
    ds.save_to_disk(str(path))
    return pathlib.Path(path)


def load_preference_dataset(source: str | os.PathLike, split: str = "train", limit: int = 0):
    """A preference data set from a `save_to_disk` folder, a json/jsonl/parquet file, or (online) a hub name.

    Checks TRL's required columns and raises PreferenceDataError naming what is missing.
    """
    import datasets

    path = pathlib.Path(source).expanduser()
    if path.is_dir() and (path / "dataset_info.json").exists():
        ds = datasets.load_from_disk(str(path))
    elif path.is_dir() and (path / "dataset_dict.json").exists():
        dd = datasets.load_from_disk(str(path))
        if split not in dd:
            raise PreferenceDataError(f"preference data {path} has no split {split!r} (has {', '.join(dd)})")
        ds = dd[split]
    elif path.is_file():
        kind = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}.get(path.suffix)
        if kind is None:
            raise PreferenceDataError(f"cannot read preference data {path}: use a save_to_disk folder, json, jsonl "
                                      "or parquet")
        ds = datasets.load_dataset(kind, data_files=[str(path)], split="train")
    elif str(source).startswith((".", "/", "~")) or path.suffix:
        raise PreferenceDataError(f"preference data not found: {source}")
    else:
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise PreferenceDataError(f"preference data {source!r} is not a local folder or file and the hub is "
                                      "offline (HF_HUB_OFFLINE=1)")
        ds = datasets.load_dataset(str(source), split=split)
    missing = [c for c in REQUIRED if c not in ds.column_names]
    if missing:
        raise PreferenceDataError(f"preference data {source} lacks column(s) {missing} (has "
                                  f"{', '.join(ds.column_names)}); TRL's preference columns are prompt, chosen, "
                                  "rejected and optionally images")
    if len(ds) == 0:
        raise PreferenceDataError(f"preference data {source} has no rows")
    if limit:
        ds = ds.select(range(min(limit, len(ds))))
    return ds


def column_text(value: Any, row: int, column: str) -> str:
    """The text of a column: a string, or the content of the last message of a conversation."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and value and isinstance(value[-1], dict):
        content = value[-1].get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, (list, tuple)):
            return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    raise PreferenceDataError(f"row {row}: column {column!r} must be a string or a list of messages, got "
                              f"{type(value).__name__}")


def _messages(prompt: Any, n_images: int, row: int) -> list[dict]:
    """The prompt as chat messages with `n_images` image entries at the start of the first user turn."""
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if not isinstance(prompt, (list, tuple)) or not all(isinstance(m, dict) for m in prompt):
        raise PreferenceDataError(f"row {row}: column 'prompt' must be a string or a list of messages")
    out, placed = [], False
    for m in prompt:
        content = m.get("content")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])
        if not placed and m.get("role") == "user":
            has = sum(isinstance(p, dict) and p.get("type") == "image" for p in parts)
            parts = [{"type": "image"}] * (n_images - has) + parts
            placed = True
        out.append({"role": m.get("role"), "content": parts})
    return out


def _stored_ids_fit(row: dict, tok, i: int) -> bool:
    """True when the row's stored token ids decode to its completion texts under `tok` (the same tokenizer)."""
    for side in ("chosen", "rejected"):
        given = row.get(f"{side}_ids")
        if not given:
            return False
        if max(given) >= len(tok):
            return False
        decoded = tok.decode([int(t) for t in given], skip_special_tokens=True)
        if " ".join(decoded.split()) != " ".join(column_text(row[side], i, side).split()):
            return False
    return True


def encode_rows(ds, processor, *, enable_thinking: bool = False, stats: dict | None = None) -> list[EncodedPair]:
    """Rows of a preference data set -> `EncodedPair`s (see the module docstring). Errors name the row.

    Stored `prompt_text` and token ids are used only when the ids decode to the row's texts with this
    processor's tokenizer (pairs sampled by another model's tokenizer are re-rendered and re-tokenised);
    `stats["retokenized"]` counts the rows that had ids which did not fit.
    """
    tok = getattr(processor, "tokenizer", processor)
    eos = tok.eos_token_id
    multimodal = hasattr(processor, "image_processor")
    out, retokenized = [], 0
    for i in range(len(ds)):
        row = ds[i]
        imgs = row.get("images")
        if imgs is None:
            imgs = [] if row.get("image") is None else [row["image"]]
        try:
            images = [_open(im) for im in imgs]
        except Exception as e:  # noqa: BLE001 - re-raised naming the row
            raise PreferenceDataError(f"row {i}: an image cannot be decoded: {e}") from e
        if images and not multimodal:
            raise PreferenceDataError(f"row {i} has images but the model is text-only")
        stored = _stored_ids_fit(row, tok, i)
        retokenized += bool(row.get("chosen_ids")) and not stored
        prompt_text = (row.get("prompt_text") or "") if stored else ""
        if not prompt_text:
            prompt_text = processor.apply_chat_template(_messages(row["prompt"], len(images), i), tokenize=False,
                                                        add_generation_prompt=True, enable_thinking=enable_thinking)
        ids = {}
        for side in ("chosen", "rejected"):
            if stored:
                ids[side] = [int(t) for t in row[f"{side}_ids"]]
            else:
                text = column_text(row[side], i, side)
                ids[side] = list(tok(text, add_special_tokens=False)["input_ids"]) + ([eos] if eos is not None else [])
            if not ids[side]:
                raise PreferenceDataError(f"row {i}: the {side} completion is empty")
        out.append(EncodedPair(prompt_text, images, ids["chosen"], ids["rejected"], i))
    if stats is not None:
        stats["retokenized"] = retokenized
    return out
