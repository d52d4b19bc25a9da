"""easy-VQA, the built-in offline source: real PNG images and questions shipped by the `easy-vqa` package.

`load_easy_vqa(split)` returns a `datasets.Dataset` with the columns every rlkit driver reads:

- `prompt`: the question, e.g. ``"what color is the shape?"``;
- `image`: the absolute path of the 64x64 PNG the question is about;
- `answer`: one of 13 words (8 colours, 3 shapes, ``yes``/``no``);
- `type`: ``color``, ``shape`` or ``yesno``, derived from the question and checked against the answer;
- `image_id`: the package's image id (questions about the same picture share it).

Order and subsampling are deterministic: the rows are filtered by `types`, permuted with `seed`
(`seed=None` keeps the package's order), then cut to `limit`. The same arguments give the same rows on
every machine. The train split has 38,575 questions on 4,000 images, the test split 9,673 on 1,000
(about 74% yes/no, 13% colour, 13% shape).
"""
from __future__ import annotations

import random
from typing import Iterable

SPLITS = ("train", "test")
TYPES = ("color", "shape", "yesno")
COLORS = ("red", "green", "blue", "black", "gray", "teal", "brown", "yellow")
SHAPES = ("circle", "rectangle", "triangle")
YESNO = ("yes", "no")
ANSWERS_BY_TYPE = {"color": COLORS, "shape": SHAPES, "yesno": YESNO}


def question_type(question: str, answer: str | None = None) -> str:
    """The type of an easy-VQA question: ``color``, ``shape`` or ``yesno``.

    easy-VQA's open questions start with "what" ("what color is the shape?", "what shape is in the image?",
    "what is the red shape?"); every other question is a yes/no question. When `answer` is given it must
    belong to the type's vocabulary, or a ValueError names the question.
    """
    q = question.strip().lower()
    if q.startswith("what"):
        kind = "color" if "color" in q or "colour" in q else "shape"
    else:
        kind = "yesno"
    if answer is not None and answer not in ANSWERS_BY_TYPE[kind]:
        raise ValueError(f"easy-VQA question {question!r} looks like a {kind} question but its answer is {answer!r}")
    return kind


def _rows(split: str) -> dict[str, list]:
    try:
        import easy_vqa
    except ImportError as e:  # pragma: no cover - a dependency of rlkit
        raise RuntimeError("the `easy-vqa` package is not installed (pip install easy-vqa)") from e
    if split == "train":
        texts, answers, image_ids = easy_vqa.get_train_questions()
        paths = easy_vqa.get_train_image_paths()
    elif split == "test":
        texts, answers, image_ids = easy_vqa.get_test_questions()
        paths = easy_vqa.get_test_image_paths()
    else:
        raise ValueError(f"easy-VQA split must be one of {SPLITS}, got {split!r}")
    missing = sorted({i for i in image_ids if i not in paths})
    if missing:
        raise FileNotFoundError(f"easy-VQA {split}: no image file for image ids {missing[:5]}")
    return {
        "prompt": list(texts),
        "image": [paths[i] for i in image_ids],
        "answer": list(answers),
        "type": [question_type(t, a) for t, a in zip(texts, answers)],
        "image_id": [int(i) for i in image_ids],
    }


def load_easy_vqa(
    split: str = "train",
    *,
    limit: int | None = None,
    seed: int | None = 0,
    types: Iterable[str] | str | None = None,
    counts: dict[str, int | None] | None = None,
):
    """easy-VQA `split` ("train" or "test") as a `datasets.Dataset` (columns: prompt, image, answer, type, image_id).

    types:  keep only these question types (a name or a list of names from TYPES); None keeps all.
    seed:   permutation of the rows (after the type filter); None keeps the package's order.
    counts: the question mix: at most `counts[type]` rows of each type (None: all of it), the first ones of
            that permutation, order kept; a type missing from `counts` is left out (None: no caps).
            E.g. {color: null, shape: null, yesno: 3000} for GRPO prompts that are mostly about the image.
    limit:  keep the first `limit` rows of that order (None: all).
    """
    from datasets import Dataset

    cols = _rows(split)
    n = len(cols["prompt"])
    idx = list(range(n))
    if types is not None:
        wanted = {types} if isinstance(types, str) else set(types)
        bad = sorted(wanted - set(TYPES))
        if bad:
            raise ValueError(f"unknown easy-VQA question types {bad}; known: {list(TYPES)}")
        idx = [i for i in idx if cols["type"][i] in wanted]
    if seed is not None:
        random.Random(seed).shuffle(idx)
    if counts is not None:
        bad = sorted(set(counts) - set(TYPES))
        if bad:
            raise ValueError(f"easy-VQA counts: unknown question types {bad}; known: {list(TYPES)}")
        taken = {t: 0 for t in counts}
        kept = []
        for i in idx:
            t = cols["type"][i]
            if t in counts and (counts[t] is None or taken[t] < counts[t]):
                taken[t] += 1
                kept.append(i)
        idx = kept
    if limit is not None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        idx = idx[:limit]
    return Dataset.from_dict({k: [v[i] for i in idx] for k, v in cols.items()})


# The cold-start split of the CPU demo (examples/easy_vqa/research/NOTES.md has the measurements behind it).
DEMO_COLD_START_COUNTS = {"color": 1400, "shape": 2000, "yesno": 2000}
DEMO_RANDOM_LABEL_TYPES = ("yesno",)


def load_easy_vqa_cold_start(
    *,
    seed: int = 0,
    counts: dict[str, int | None] | None = None,
    random_label_types: Iterable[str] = DEMO_RANDOM_LABEL_TYPES,
):
    """The supervised cold-start set of the easy-VQA demo: real labels for some question types, and for the
    types in `random_label_types` labels drawn uniformly (seeded) from that type's answers.

    The random-label rows teach only the answer format and vocabulary of their type: after the cold start
    the policy answers them at chance, so what it learns about them later comes from the reward alone.
    `counts[type]` caps the rows taken of each type from the seeded train permutation (None: all; a type
    missing from `counts` is left out). Columns: those of `load_easy_vqa` plus `true_answer` (the real label)
    and `label` (``"true"`` or ``"random"``). Rows are shuffled with `seed`.
    """
    from datasets import Dataset

    counts = dict(DEMO_COLD_START_COUNTS if counts is None else counts)
    rand_types = {random_label_types} if isinstance(random_label_types, str) else set(random_label_types)
    bad = sorted((set(counts) | rand_types) - set(TYPES))
    if bad:
        raise ValueError(f"unknown easy-VQA question types {bad}; known: {list(TYPES)}")
    cols = load_easy_vqa("train", seed=seed).to_dict()
    rows: list[dict] = []
    taken = {t: 0 for t in counts}
    rng = random.Random(f"easy-vqa-cold-start-{seed}")
    for i, t in enumerate(cols["type"]):
        if t not in counts or (counts[t] is not None and taken[t] >= counts[t]):
            continue
        taken[t] += 1
        r = {k: v[i] for k, v in cols.items()}
        random_label = t in rand_types
        answer = rng.choice(ANSWERS_BY_TYPE[t]) if random_label else r["answer"]
        rows.append({**r, "answer": answer, "true_answer": r["answer"], "label": "random" if random_label else "true"})
    random.Random(seed + 1).shuffle(rows)
    return Dataset.from_list(rows)
