"""A short supervised cold start for a vision-language policy: answer-only loss, plain torch loop, AdamW.

Why a hand-written loop and not TRL's SFTTrainer: the cold start of the CPU demo is a few hundred steps
of a 0.6M-parameter model, where the Trainer's set-up (accelerate, dataloader workers, callbacks,
logging) costs more than the training, and where the demo needs exact control the Trainer hides:
a wall-clock budget (`max_seconds`), the prompt rendered exactly as rollouts render it (the chat template
in fast mode, ending with the empty think block), and labels that cover only the answer. About 60 lines
of loop are easier to read, test and time than the Trainer's configuration. For real checkpoints on GPUs,
TRL's SFTTrainer with `completion_only_loss` does the same job.

What is trained on: rows with a question (`prompt`), an image path or PIL image (`image`, optional), the
target (`answer`) and optionally a `mode` ("fast" | "deep"; default from `SFTConfig.enable_thinking`). Each row
becomes

    <chat-template generation prompt in the row's mode>  +  target  +  <|im_end|>
    labels: -100 .......................................  target ids + <|im_end|> id

so the loss is the target's (and the end-of-turn's) negative log-likelihood only. A fast row's target is the
answer (its prompt already ends with the empty think block); a deep row's target is the whole response,
`<think>\nsteps\n</think>\n\nanswer` (`mode_rows` builds both from rows with a `reasoning` column).
"""
from __future__ import annotations

import dataclasses
import math
import pathlib
import random
import time
from typing import Any, Callable, Sequence

import torch

IGNORE_INDEX = -100


@dataclasses.dataclass
class SFTConfig:
    """Settings of `sft`. Training stops at `max_steps` or `max_seconds`, whichever comes first."""

    lr: float = 5e-4
    batch_size: int = 32
    max_steps: int | None = 200
    max_seconds: float | None = None
    seed: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    warmup_steps: int = 0
    enable_thinking: bool = False  # mode of rows without a mode column: False = fast (the prompt ends with an empty think block)
    mode_column: str = "mode"  # a row whose column of this name is "fast" or "deep" is rendered in that mode
    prompt_column: str = "prompt"
    image_column: str = "image"
    answer_column: str = "answer"
    log_every: int = 0  # 0: silent


@dataclasses.dataclass
class SFTResult:
    steps: int
    seconds: float
    losses: list[float]  # mean answer-token loss of each step's batch
    output_dir: pathlib.Path | None


def render_prompt(processor, question: str, has_image: bool, enable_thinking: bool = False) -> str:
    """The generation prompt for one question: `rlkit.step.modes.render_prompt`, the one the GRPO loop uses."""
    from rlkit.step.modes import render_prompt as render
    from rlkit.records import DEEP, FAST, PromptRow

    row = PromptRow(0, question, [None] if has_image else [], None, {})
    return render(processor, row, DEEP if enable_thinking else FAST)


def load_image(image: Any):
    """A PIL RGB image from a path or a PIL image (None stays None); `rlkit.data.open_image` names bad files."""
    from rlkit.data import open_image

    return None if image is None else open_image(image)


def mode_rows(rows, *, modes: Sequence[str] = ("fast", "deep"), answer_column: str = "answer",
              reasoning_column: str = "reasoning", mode_column: str = "mode") -> list[dict]:
    """Cold-start rows teaching both formats: each source row once per mode in `modes`, with its answer column
    replaced by the target and `mode_column` set (other columns kept). fast: target = the answer; deep: target =
    `deep_response(reasoning, answer)`, the think block then the answer, as the format reward expects."""
    from rlkit.models.chat_template import deep_response
    from rlkit.records import DEEP, MODES

    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ValueError(f"modes must be among {MODES}, got {bad}")
    out = []
    for i, r in enumerate(rows):
        for mode in modes:
            if mode == DEEP and not str(r.get(reasoning_column) or "").strip():
                raise ValueError(f"row {i}: a deep cold-start row needs a non-empty {reasoning_column!r} column")
            answer = str(r[answer_column])
            target = deep_response(str(r[reasoning_column]), answer) if mode == DEEP else answer
            out.append({**r, answer_column: target, mode_column: mode})
    return out


def build_sft_batch(
    processor,
    questions: Sequence[str],
    images: Sequence[Any] | None,
    answers: Sequence[str],
    *,
    enable_thinking: bool = False,
    modes: Sequence[str | None] | None = None,
) -> dict[str, torch.Tensor]:
    """Tokenise (prompt, image, target) rows into a right-padded training batch with target-only labels.

    The prompt goes through the processor (which expands the image placeholder to the image's tokens); the
    target and the end-of-turn token are tokenised on their own and appended, so no BPE merge can cross the
    prompt/target boundary and the label mask is exact. `modes[i]` ("fast" | "deep" | None) renders row i's
    prompt in that mode; None (or no `modes`) follows `enable_thinking`. Returns input_ids, attention_mask,
    labels (B, T), for vision-language processors mm_token_type_ids (B, T), and with images pixel_values and
    image_grid_thw.
    """
    from rlkit.models.loading import tokenizer_of
    from rlkit.records import DEEP, MODES

    tok = tokenizer_of(processor)
    has_image = images is not None
    modes = list(modes) if modes is not None else [None] * len(questions)
    if len(modes) != len(questions):
        raise ValueError(f"got {len(modes)} modes for {len(questions)} rows")
    bad = [m for m in modes if m is not None and m not in MODES]
    if bad:
        raise ValueError(f"row modes must be 'fast' or 'deep', got {bad[0]!r}")
    thinking = [enable_thinking if m is None else m == DEEP for m in modes]
    texts = [render_prompt(processor, q, has_image, t) for q, t in zip(questions, thinking)]
    kw: dict[str, Any] = {}
    if has_image:
        kw["images"] = [load_image(im) for im in images]
    enc = processor(text=texts, padding=False, **kw)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    pad = tok.pad_token_id
    rows = []
    for i, answer in enumerate(answers):
        p = list(enc["input_ids"][i])
        a = tok(answer, add_special_tokens=False)["input_ids"] + [eos]
        mm = list(enc["mm_token_type_ids"][i]) if "mm_token_type_ids" in enc else [0] * len(p)
        rows.append((p, a, mm))
    width = max(len(p) + len(a) for p, a, _ in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mm_types = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (p, a, mm) in enumerate(rows):
        n = len(p) + len(a)
        ids[i, :n] = torch.tensor(p + a)
        mask[i, :n] = 1
        labels[i, len(p) : n] = torch.tensor(a)
        mm_types[i, : len(p)] = torch.tensor(mm)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if "mm_token_type_ids" in enc or hasattr(processor, "image_processor"):  # VLMs (mrope); a text tokenizer has none
        batch["mm_token_type_ids"] = mm_types
    if has_image:
        batch["pixel_values"] = torch.as_tensor(enc["pixel_values"])
        batch["image_grid_thw"] = torch.as_tensor(enc["image_grid_thw"])
    return batch


def answer_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean negative log-likelihood of the labelled (answer) tokens of `batch`."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs).logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX
    )


def sft(
    model,
    processor,
    rows,
    config: SFTConfig = SFTConfig(),
    *,
    output_dir: str | pathlib.Path | None = None,
    label_fn: Callable[[dict, random.Random], str] | None = None,
) -> SFTResult:
    """Train `model` on `rows` (a datasets.Dataset or a list of dicts) with an answer-only loss.

    Batches are drawn from a seeded permutation of the rows, reshuffled every epoch. `label_fn(row, rng)`,
    when given, replaces a row's answer (e.g. a random answer of the right type, for a cold start that
    teaches only the answer format). With `output_dir`, the model and processor are saved there
    (`save_pretrained`) and the directory is returned in the result.
    """
    cfg = config
    if cfg.max_steps is None and cfg.max_seconds is None:
        raise ValueError("sft needs max_steps or max_seconds")
    rows = list(rows) if not isinstance(rows, list) else rows
    if not rows:
        raise ValueError("sft got no rows")
    missing = [c for c in (cfg.prompt_column, cfg.answer_column) if c not in rows[0]]
    if missing:
        raise ValueError(f"sft rows lack column(s) {missing}; columns: {sorted(rows[0])}")
    has_image = cfg.image_column in rows[0] and rows[0][cfg.image_column] is not None
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup_steps)))
    model.train()
    order: list[int] = []
    losses: list[float] = []
    start = time.perf_counter()
    step = 0
    while (cfg.max_steps is None or step < cfg.max_steps) and (
        cfg.max_seconds is None or time.perf_counter() - start < cfg.max_seconds
    ):
        if len(order) < cfg.batch_size:
            perm = list(range(len(rows)))
            rng.shuffle(perm)
            order.extend(perm)
        chunk = [rows[i] for i in order[: cfg.batch_size]]
        del order[: cfg.batch_size]
        answers = [label_fn(r, rng) if label_fn else r[cfg.answer_column] for r in chunk]
        batch = build_sft_batch(
            processor,
            [r[cfg.prompt_column] for r in chunk],
            [r[cfg.image_column] for r in chunk] if has_image else None,
            answers,
            enable_thinking=cfg.enable_thinking,
            modes=[r.get(cfg.mode_column) for r in chunk],
        )
        loss = answer_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm and cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        opt.step()
        sched.step()
        step += 1
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"sft loss is {value} at step {step}")
        losses.append(value)
        if cfg.log_every and step % cfg.log_every == 0:
            print(f"sft step {step} loss {value:.4f} ({time.perf_counter() - start:.1f}s)", flush=True)
    seconds = time.perf_counter() - start
    model.eval()
    out = None
    if output_dir is not None:
        out = pathlib.Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)
        processor.save_pretrained(out)
    return SFTResult(steps=step, seconds=seconds, losses=losses, output_dir=out)
