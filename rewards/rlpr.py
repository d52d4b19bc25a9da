"""RLPR: the policy's own probability of the reference answer, after its reasoning, as the reward.

RLPR ("Extrapolating RLVR to General Domains without Verifiers", arXiv 2506.18254) trains on questions that
have a reference answer y* but no verifier. For a sampled deep-mode response `<think>z</think> a`:

    o'      = the response's reasoning z with y* in the answer slot:  <think>z</think> + SLOT + y*
    r       = mean over y*'s tokens of p_policy(token | prompt, images, everything before it in o')
    r'      = the same score with no reasoning:                       <think>\\n\\n</think> + SLOT + y*
    r_hat   = clip(r - r', 0, 1)                                       (debiasing)
    reward  = w_prob * r_hat + w_format * format                       (reference: 0.9 / 0.1)

SLOT is `separator` then `answer_open` (e.g. "\\n\\n" or "\\n\\n<answer>"). `answer_close` is not appended:
the model is causal, so tokens after y* cannot change y*'s probabilities. `format` is the built-in
`format` reward (rewards/structure.py) with the same tags. Probabilities come from the policy through a
`PolicyAccess` (the same weights that sampled the step; no second copy of the model), in one batched call
per scorer call: every o' and every baseline that is not cached go together.

Decisions (docs/rewards.md, "RLPR"):
- Tokens. The reasoning is the response's own sampled token ids up to and including the last `</think>`
  (when `completion_ids` is given and `</think>` is one token, as in Qwen3); otherwise the completion text
  up to `</think>` is tokenised. SLOT and y* are tokenised separately, so y*'s tokens are known exactly;
  whether `tok(SLOT + y*) == tok(SLOT) + tok(y*)` (no BPE merge across the boundary) is checked and counted
  (`rlpr/boundary_merge_frac`). With Qwen's BPE, a slot ending in a newline or a tag does not merge;
  a slot ending in a space does (" paris" is one token): put no trailing space in `separator`.
- Fast mode returns None (not applicable). The fast prompt already ends with the empty think block, so o'
  is the prompt followed by y*: exactly the baseline, r == r', r_hat == 0 for every response, and the
  undebiased r is the same for every response of the prompt (it does not look at the response). Neither
  carries information about the response; None lets other rewards (format, exact_match) score fast
  samples and keeps a constant from leaking into mixed fast/deep groups.
- A deep response whose think block never closed (truncated) has no answer slot: r_hat = 0
  (`unfinished="zero"`, the default), or its whole text is taken as reasoning and closed
  (`unfinished="close"`: partial credit for reasoning cut off by the length limit).
- Baselines r' (`baseline="cached"`, the reference code's choice): computed the first time a (prompt,
  images, answer) is seen, with the policy of that step, and cached in `RLPRState` (picklable, JSON-able,
  `state_dict()`/`load_state_dict()` for checkpoints). `"recompute"`: every call, with the current policy.
  `"none"`: r' = 0 (no debiasing).

Diagnostics (`RLPRState.metrics()`, logged every step by the driver): `rlpr/r_mean`, `r_base_mean`,
`r_hat_mean`, `clipped_frac` (share with r < r'), `boundary_merge_frac`, counts (`scored`, `fast`,
`unfinished`, `no_answer`, `sequences` sent to the policy, `baselines_computed`), `baseline_cache_size`, and
seconds (`policy_s`, `total_s`).

A leaf module: imports no rlkit driver, policy worker or Ray. `WorkerPolicyAccess` adapts a local
PolicyWorker-like object (duck-typed) for tests and single-process use.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from typing import Any, Callable, Protocol, runtime_checkable

from rewards.registry import register_reward
from rewards.structure import think_format
from rewards.text import THINK_CLOSE, THINK_OPEN, clean_text, completion_text

# ----------------------------------------------------------------------------------------------- aggregation
# Names in the reference code: mean_exp_log_softmax, mean_log_softmax, exp_sum_log_softmax, exp_mean_log_softmax.
AGGREGATIONS: dict[str, Callable[[list[float]], float]] = {
    "mean_prob": lambda lp: sum(math.exp(x) for x in lp) / len(lp),  # the paper's choice
    "mean_logprob": lambda lp: sum(lp) / len(lp),
    "seq_prob": lambda lp: math.exp(sum(lp)),
    "geo_mean": lambda lp: math.exp(sum(lp) / len(lp)),
}
BASELINES = ("cached", "recompute", "none")
UNFINISHED = ("zero", "close")


def aggregate_logprobs(logprobs: list[float], how: str = "mean_prob") -> float:
    """One score from the answer tokens' logprobs.

    >>> lp = [math.log(0.5), math.log(0.25)]
    >>> [round(aggregate_logprobs(lp, h), 6) for h in ("mean_prob", "seq_prob", "geo_mean")]
    [0.375, 0.125, 0.353553]
    >>> round(aggregate_logprobs(lp, "mean_logprob"), 6)
    -1.039721
    """
    if how not in AGGREGATIONS:
        raise ValueError(f"unknown RLPR aggregation {how!r}; use one of {', '.join(AGGREGATIONS)}")
    if not logprobs:
        raise ValueError("no answer tokens to aggregate")
    return float(AGGREGATIONS[how](list(logprobs)))


# ----------------------------------------------------------------------------------------------- policy access
@runtime_checkable
class PolicyAccess(Protocol):
    """What RLPR needs from the policy: its tokenizer and batched, no-grad completion logprobs.

    `completion_logprobs(prompt_texts, images, completion_ids)[i][j]` is log p(completion_ids[i][j] | the
    rendered prompt_texts[i] with images[i], completion_ids[i][:j]) under the weights that sampled this step,
    at the sampling temperature (the policy worker's convention; 1.0 gives the raw probabilities). Prompts
    are tokenised by the policy exactly as for training (images expanded by its processor).
    """

    tokenizer: Any

    def completion_logprobs(self, prompt_texts: list[str], images: list[list],
                            completion_ids: list[list[int]]) -> list[list[float]]: ...


@dataclasses.dataclass
class _Item:
    """The fields of rlkit.records.TrainItem (duck-typed: this leaf module does not import rlkit)."""

    prompt_text: str
    images: list
    completion_ids: list
    advantage: float = 0.0
    rollout_logprobs: list = dataclasses.field(default_factory=list)


class WorkerPolicyAccess:
    """`PolicyAccess` over a local PolicyWorker-like object: `compute_logprobs(items)` and `tokenizer`."""

    def __init__(self, worker):
        self.worker = worker
        self.tokenizer = worker.tokenizer

    def completion_logprobs(self, prompt_texts, images, completion_ids):
        items = [_Item(p, list(im or []), list(ids)) for p, im, ids in zip(prompt_texts, images, completion_ids)]
        return self.worker.compute_logprobs(items)


# ----------------------------------------------------------------------------------------------- state
class RLPRState:
    """Baseline cache (answer-token logprobs of r' per context) and diagnostics accumulated over calls.

    Picklable; `state_dict()` is JSON-able, so a checkpoint can hold it. Keys are SHA-1 digests of
    (prompt text, images, the baseline continuation, the answer), so the cache is small and holds no text.
    """

    VERSION = 1

    def __init__(self):
        self.baselines: dict[str, list[float]] = {}
        self.totals: dict[str, float] = {}

    def reset(self) -> None:
        self.baselines.clear()
        self.totals = {}

    def record(self, **values: float) -> None:
        for k, v in values.items():
            self.totals[k] = self.totals.get(k, 0.0) + float(v)

    def state_dict(self) -> dict:
        return {"version": self.VERSION, "baselines": {k: list(v) for k, v in self.baselines.items()}}

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != self.VERSION:
            raise ValueError(f"RLPR state version {state.get('version')!r} is not {self.VERSION}")
        self.baselines = {str(k): [float(x) for x in v] for k, v in state["baselines"].items()}

    def metrics(self) -> dict[str, float]:
        """Diagnostics over every call since the previous `metrics()` (a GRPO step may score several refill
        rounds), then starts afresh. Counts and seconds are sums; `*_mean` and `*_frac` are over scored samples.
        """
        t, self.totals = self.totals, {}
        n = t.get("scored", 0.0)
        per = lambda k: t.get(k, 0.0) / n if n else float("nan")  # noqa: E731
        out = {f"rlpr/{k}": t.get(k, 0.0) for k in ("scored", "fast", "no_answer", "unfinished", "sequences",
                                                     "baselines_computed", "policy_s", "total_s")}
        out.update({"rlpr/r_mean": per("r"), "rlpr/r_base_mean": per("r_base"), "rlpr/r_hat_mean": per("r_hat"),
                    "rlpr/clipped_frac": per("clipped"), "rlpr/boundary_merge_frac": per("merges"),
                    "rlpr/baseline_cache_size": float(len(self.baselines))})
        return out


DEFAULT_STATE = RLPRState()


@dataclasses.dataclass
class RLPRScore:
    """One sample's RLPR result (`reward` is what the registered reward returns)."""

    reward: float | None
    status: str  # "scored" | "fast" | "no_answer" | "unfinished"
    r: float | None = None  # score of o'
    r_base: float | None = None  # score with no reasoning (r')
    r_hat: float | None = None  # clip(r - r', 0, 1)
    format: float | None = None
    answer_ids: list = dataclasses.field(default_factory=list)
    answer_logprobs: list = dataclasses.field(default_factory=list)  # under o'
    base_logprobs: list = dataclasses.field(default_factory=list)  # under the baseline


# ----------------------------------------------------------------------------------------------- helpers
def _encode(tok, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"]) if text else []


def reference_text(answer) -> str | None:
    """The reference answer as text: None/empty -> None, a list/tuple -> its first element, else str()."""
    if isinstance(answer, (list, tuple)):
        answer = answer[0] if answer else None
    if answer is None:
        return None
    text = clean_text(str(answer)).strip()
    return text or None


def _image_key(im, memo: dict) -> str:
    if isinstance(im, (str, bytes)) or im is None:
        return "p:" + (im.decode("utf-8", "replace") if isinstance(im, bytes) else str(im))
    k = id(im)
    if k not in memo:  # the n samples of a prompt share their image objects: hash each once per call
        h = hashlib.sha1()
        if hasattr(im, "tobytes"):
            h.update(f"{getattr(im, 'mode', '')}{getattr(im, 'size', '')}".encode())
            h.update(im.tobytes())
        else:
            h.update(repr(im).encode())
        memo[k] = "i:" + h.hexdigest()
    return memo[k]


def baseline_key(prompt_text: str, image_keys: list[str], continuation: str, answer: str) -> str:
    return hashlib.sha1("\x1f".join([prompt_text, *image_keys, "\x1e", continuation, "\x1e", answer])
                       .encode("utf-8", "replace")).hexdigest()


def _single_id(tok, text: str) -> int | None:
    ids = _encode(tok, text)
    return ids[0] if len(ids) == 1 else None


def reasoning_ids(tok, completion, ids, think_close: str, close_id: int | None, unfinished: str,
                  end_ids: set) -> list[int] | None:
    """Token ids of the response's reasoning, up to and including the last `think_close`; None if unfinished.

    From the sampled ids when they are given and `think_close` is one token (exact: no re-tokenisation);
    else from the text. `unfinished="close"` closes a reasoning that never closed (trailing EOS removed).
    """
    if ids is not None and close_id is not None:
        ids = list(ids)
        if close_id in ids:
            k = len(ids) - 1 - ids[::-1].index(close_id)
            return ids[:k + 1]
        if unfinished == "close":
            while ids and ids[-1] in end_ids:
                ids.pop()
            return ids + [close_id]
        return None
    text = clean_text(completion_text(completion))
    pos = text.rfind(think_close)
    if pos >= 0:
        return _encode(tok, text[:pos + len(think_close)])
    return _encode(tok, text + think_close) if unfinished == "close" else None


# ----------------------------------------------------------------------------------------------- scoring
def rlpr_scores(prompts, completions, *, policy: PolicyAccess, answer, prompt_text, mode=None, images=None,
                completion_ids=None, think_open: str = THINK_OPEN, think_close: str = THINK_CLOSE,
                answer_open: str | None = None, answer_close: str | None = None, separator: str = "\n\n",
                aggregation: str = "mean_prob", baseline: str = "cached", w_prob: float = 0.9,
                w_format: float = 0.1, unfinished: str = "zero", default_mode: str = "deep",
                state: RLPRState | None = None) -> list[RLPRScore]:
    """Per-sample RLPR results (the registered `rlpr` reward returns their `.reward`). See the module docstring."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown RLPR aggregation {aggregation!r}; use one of {', '.join(AGGREGATIONS)}")
    if baseline not in BASELINES:
        raise ValueError(f"RLPR baseline must be one of {', '.join(BASELINES)}, got {baseline!r}")
    if unfinished not in UNFINISHED:
        raise ValueError(f"RLPR unfinished must be one of {', '.join(UNFINISHED)}, got {unfinished!r}")
    if aggregation == "mean_logprob" and baseline == "none":
        raise ValueError("RLPR aggregation 'mean_logprob' is <= 0, so clip(r, 0, 1) would always be 0: "
                         "use a baseline ('cached' or 'recompute') or another aggregation")
    if bool(answer_open) != bool(answer_close):
        raise ValueError("give both answer_open and answer_close, or neither")
    if prompt_text is None:
        raise ValueError("rlpr needs the 'prompt_text' column: the rendered prompt the engine saw (the GRPO "
                         "driver passes it); pass prompt_text=[...] when calling it directly")
    if answer is None:
        raise ValueError("rlpr needs the 'answer' column (the reference answers)")
    state = DEFAULT_STATE if state is None else state
    n = len(completions)
    modes = [m if m is not None else default_mode for m in (mode if mode is not None else [None] * n)]
    images = images if images is not None else [[] for _ in range(n)]
    tok = getattr(policy.tokenizer, "tokenizer", policy.tokenizer)  # a processor also works
    t_start = time.perf_counter()

    fmt_kw = dict(think_open=think_open, think_close=think_close, answer_open=answer_open, answer_close=answer_close)
    deep_idx = [i for i in range(n) if modes[i] == "deep"]
    fmt = think_format([prompts[i] for i in deep_idx], [completions[i] for i in deep_idx], mode=["deep"] * len(deep_idx),
                       **fmt_kw) if deep_idx else []
    formats = dict(zip(deep_idx, fmt))

    slot = separator + (answer_open or "")
    slot_ids = _encode(tok, slot)
    close_id = _single_id(tok, think_close)
    end_ids = {i for i in (tok.eos_token_id, tok.pad_token_id) if i is not None}
    empty = f"{think_open}\n\n{think_close}"  # Qwen3's empty think block: what the fast template renders
    empty_ids = _encode(tok, empty)
    boundary = slot if slot else think_close
    answer_cache: dict[str, tuple[list[int], bool]] = {}

    def answer_ids(ref: str) -> tuple[list[int], bool]:
        if ref not in answer_cache:
            a = _encode(tok, ref)
            answer_cache[ref] = (a, bool(a) and _encode(tok, boundary + ref) != _encode(tok, boundary) + a)
        return answer_cache[ref]

    results: list[RLPRScore] = [None] * n  # type: ignore[list-item]
    seqs: list[tuple[str, list, list[int]]] = []  # (prompt text, images, completion ids) for the policy
    own: dict[int, int] = {}  # sample -> index of its o' in seqs
    base_of: dict[int, str] = {}  # sample -> baseline key
    base_seq: dict[str, int] = {}  # baseline key -> index in seqs (baselines to compute in this call)
    own_seq: dict[tuple, int] = {}  # identical o' (same prompt, images, tokens) are scored once
    memo: dict = {}
    merges = 0
    for i in range(n):
        ref = reference_text(answer[i])
        if ref is None:
            results[i] = RLPRScore(None, "no_answer")
            continue
        if modes[i] == "fast":
            results[i] = RLPRScore(None, "fast")
            continue
        if modes[i] != "deep":
            raise ValueError(f"sample {i}: mode must be 'fast' or 'deep', got {modes[i]!r}")
        a_ids, merged = answer_ids(ref)
        if not a_ids:
            results[i] = RLPRScore(None, "no_answer")
            continue
        if prompt_text[i] is None:
            raise ValueError(f"sample {i}: prompt_text is missing")
        ids_i = completion_ids[i] if completion_ids is not None else None
        prefix = reasoning_ids(tok, completions[i], ids_i, think_close, close_id, unfinished, end_ids)
        if prefix is None:
            results[i] = RLPRScore(w_format * formats[i], "unfinished", r_hat=0.0, format=formats[i], answer_ids=a_ids)
            continue
        merges += merged
        results[i] = RLPRScore(None, "scored", format=formats[i], answer_ids=a_ids)
        ims = list(images[i] or [])
        seq = prefix + slot_ids + a_ids
        key_own = (prompt_text[i], tuple(id(im) for im in ims), tuple(seq))
        if key_own not in own_seq:
            own_seq[key_own] = len(seqs)
            seqs.append((prompt_text[i], ims, seq))
        own[i] = own_seq[key_own]
        if baseline == "none":
            continue
        key = baseline_key(prompt_text[i], [_image_key(im, memo) for im in ims], empty + slot, ref)
        base_of[i] = key
        if (baseline == "recompute" or key not in state.baselines) and key not in base_seq:
            base_seq[key] = len(seqs)
            seqs.append((prompt_text[i], ims, empty_ids + slot_ids + a_ids))

    t_policy = time.perf_counter()
    logprobs = policy.completion_logprobs([s[0] for s in seqs], [s[1] for s in seqs], [s[2] for s in seqs]) if seqs else []
    t_policy = time.perf_counter() - t_policy
    if len(logprobs) != len(seqs):
        raise RuntimeError(f"the policy returned {len(logprobs)} logprob lists for {len(seqs)} sequences")
    for j, (lp, s) in enumerate(zip(logprobs, seqs)):
        if len(lp) != len(s[2]):
            raise RuntimeError(f"the policy returned {len(lp)} logprobs for a sequence of {len(s[2])} tokens")
    fresh = {key: list(logprobs[j][len(empty_ids) + len(slot_ids):]) for key, j in base_seq.items()}
    if baseline == "cached":
        state.baselines.update(fresh)

    clipped = 0
    for i, j in own.items():
        res = results[i]
        k = len(res.answer_ids)
        res.answer_logprobs = list(logprobs[j][-k:])
        res.r = aggregate_logprobs(res.answer_logprobs, aggregation)
        if baseline == "none":
            res.r_base = 0.0
        else:
            res.base_logprobs = fresh[base_of[i]] if base_of[i] in fresh else list(state.baselines[base_of[i]])
            res.r_base = aggregate_logprobs(res.base_logprobs, aggregation)
        delta = res.r - res.r_base
        clipped += delta < 0
        res.r_hat = min(1.0, max(0.0, delta))
        res.reward = w_prob * res.r_hat + w_format * res.format

    scored = [results[i] for i in own]
    count = lambda st: sum(r.status == st for r in results)  # noqa: E731
    state.record(scored=len(scored), fast=count("fast"), no_answer=count("no_answer"), unfinished=count("unfinished"),
                 clipped=clipped, merges=merges, sequences=len(seqs), baselines_computed=len(base_seq),
                 r=sum(r.r for r in scored), r_base=sum(r.r_base for r in scored), r_hat=sum(r.r_hat for r in scored),
                 policy_s=t_policy, total_s=time.perf_counter() - t_start)
    return results


@register_reward("rlpr", needs=("policy",), batched=True)
def rlpr(prompts, completions, *, resources, answer=None, prompt_text=None, mode=None, images=None,
         completion_ids=None, think_open: str = THINK_OPEN, think_close: str = THINK_CLOSE,
         answer_open: str | None = None, answer_close: str | None = None, separator: str = "\n\n",
         aggregation: str = "mean_prob", baseline: str = "cached", w_prob: float = 0.9, w_format: float = 0.1,
         unfinished: str = "zero", default_mode: str = "deep", state: RLPRState | None = None,
         answer_key: str = "answer", **columns) -> list[float | None]:
    """RLPR reward: w_prob * clip(r - r', 0, 1) + w_format * format for deep samples; None for fast ones.

    Needs `resources.policy` (a `PolicyAccess`) and the columns `answer` and `prompt_text` (the rendered
    prompt); uses `mode`, `images` and `completion_ids` when given. `answer_key` names another column to read
    the references from (as `exact_match`'s): a row whose reference there is None gets None, so RLPR can score
    the free-form rows of a data set while a rule reward with its own `answer_key` scores the others.
    Options: see the module docstring and docs/rewards.md. The baseline cache and the last call's diagnostics
    live in `rlpr.state` (or `state=`).
    """
    if answer_key != "answer":
        if answer_key not in columns:
            raise ValueError(f"rlpr: answer_key {answer_key!r} names no column of the data (have: "
                             f"{', '.join(sorted(columns)) or 'none'})")
        answer = columns[answer_key]
    return [s.reward for s in rlpr_scores(
        prompts, completions, policy=resources.policy, answer=answer, prompt_text=prompt_text, mode=mode,
        images=images, completion_ids=completion_ids, think_open=think_open, think_close=think_close,
        answer_open=answer_open, answer_close=answer_close, separator=separator, aggregation=aggregation,
        baseline=baseline, w_prob=w_prob, w_format=w_format, unfinished=unfinished, default_mode=default_mode,
        state=state)]


rlpr.state = DEFAULT_STATE  # checkpointed and logged by the GRPO driver (rlkit.drivers.grpo.reward_states)
