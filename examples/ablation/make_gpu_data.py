"""Data for the full-scale ablation (examples/ablation/ablation_gpu.yaml): math with worked solutions + document VQA.

    HF_HUB_OFFLINE=0 python examples/ablation/make_gpu_data.py --out data/ablation_gpu

Provided but not run here (this machine has no hub access). Sources, by default:
- math: `lmms-lab/multimodal-open-r1-8k-verified` (split train; an image, `problem`, a worked `solution`). The
  solution's reasoning becomes the think block of the deep cold-start rows; its final answer (inside
  `<answer>`, else the last `\\boxed{}`, else the last line) the reference `math_answer`.
- documents: `lmms-lab/DocVQA` (config DocVQA, split validation; `question`, `answers`, an image); the first
  answer is the reference `doc_answer` (no worked steps: these rows are for RL and evaluation only).
Writes, under --out: images/, train.jsonl, test.jsonl (a fixed hash-chosen share of each source, disjoint
from train), cold_start.jsonl (math train rows with a worked solution). Every row: prompt, image (file path),
answer, math_answer or doc_answer (the other one null), reasoning, kind.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import re
import sys

MATH_PROMPT = "{problem}"
DOC_PROMPT = "{question}\nAnswer with a word or a short phrase from the document."


def _split(key: str, test_share: float) -> str:
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    return "test" if h < test_share else "train"


def math_row(ex: dict) -> dict | None:
    """A math example {problem, solution, ...} as a row (image added by the caller); None without an answer."""
    from rewards.text import last_boxed, tagged

    solution = str(ex.get("solution") or "").strip()
    problem = str(ex.get("problem") or "").strip()
    if not solution or not problem:
        return None
    answer = tagged(solution, "<answer>", "</answer>")
    if answer is None:
        answer = last_boxed(solution)
    if answer is None:
        answer = solution.splitlines()[-1]
    boxed = last_boxed(answer)
    answer = (boxed if boxed is not None else answer).strip()
    think = tagged(solution, "<think>", "</think>")
    reasoning = think if think is not None else re.sub(r"<answer>.*?</answer>", "", solution, flags=re.S)
    if not answer:
        return None
    return {"prompt": MATH_PROMPT.format(problem=problem), "answer": answer, "math_answer": answer,
            "doc_answer": None, "reasoning": reasoning.strip(), "kind": "math"}


def doc_row(ex: dict) -> dict | None:
    """A DocVQA example {question, answers, ...} as a row (image added by the caller); None without an answer."""
    answers = [a for a in (ex.get("answers") or []) if str(a).strip()]
    question = str(ex.get("question") or "").strip()
    if not answers or not question:
        return None
    a = str(answers[0]).strip()
    return {"prompt": DOC_PROMPT.format(question=question), "answer": a, "math_answer": None, "doc_answer": a,
            "reasoning": "", "kind": "document"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="data/ablation_gpu")
    ap.add_argument("--math", default="lmms-lab/multimodal-open-r1-8k-verified")
    ap.add_argument("--math-split", default="train")
    ap.add_argument("--docs", default="lmms-lab/DocVQA")
    ap.add_argument("--docs-config", default="DocVQA")
    ap.add_argument("--docs-split", default="validation")
    ap.add_argument("--docs-limit", type=int, default=8000)
    ap.add_argument("--test-share", type=float, default=0.1)
    args = ap.parse_args()
    import datasets

    out = pathlib.Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    files = {name: open(out / f"{name}.jsonl", "w") for name in ("train", "test", "cold_start")}
    counts = {name: 0 for name in files}
    sources = [("math", datasets.load_dataset(args.math, split=args.math_split), math_row),
               ("doc", datasets.load_dataset(args.docs, args.docs_config, split=args.docs_split), doc_row)]
    for tag, ds, convert in sources:
        if tag == "doc" and args.docs_limit:
            ds = ds.select(range(min(args.docs_limit, len(ds))))
        for i, ex in enumerate(ds):
            row = convert(ex)
            if row is None or ex.get("image") is None:
                continue
            path = out / "images" / f"{tag}_{i}.png"
            ex["image"].convert("RGB").save(path)
            row["image"] = str(path)
            split = _split(f"{tag}:{row['prompt']}", args.test_share)
            files[split].write(json.dumps(row) + "\n")
            counts[split] += 1
            if split == "train" and row["reasoning"]:
                files["cold_start"].write(json.dumps(row) + "\n")
                counts["cold_start"] += 1
    for f in files.values():
        f.close()
    print(f"wrote {counts} rows under {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
