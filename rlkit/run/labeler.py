"""The labeler of RLAIF-V and of the `rlaifv` GRPO reward, and the builder that loads it from a config.

- `TransformersLabeler`: `rewards.rlaifv.Labeler` from one forward pass (P(yes variants), P(no variants)).
- `EngineTextLM`: `rewards.rlaifv.TextLM` over a rollout engine (LM claim splitting and questions); `close()`
  frees the engine (the one teardown of a claim LM).
- `LabelerConfig` (the `labeler:` section), `labeler_config` / `check_labeler` (checks naming the key),
  `labeler_resources` (the one builder: labeler plus claim LM) and `LabelerResources`.

Used by `rlkit rlaifv` (rlkit/drivers/rlaifv.py) and by GRPO's `rlaifv` reward (rlkit/drivers/grpo.py); imports no driver.
"""
from __future__ import annotations

import dataclasses
import os

import torch

from rlkit.config import ConfigError, RolloutConfig, check_ranges
from rlkit.data import open_image
from rlkit.models.loading import load_policy, load_processor, tokenizer_of
from rlkit.run.build import engine_options


class TransformersLabeler:
    """`rewards.rlaifv.Labeler` from a forward pass: (P(yes variants), P(no variants)) per question.

    model_or_path: a transformers id/folder, or a loaded model (then `processor` is required; a live policy
        works, its train/eval mode is restored after each call). Questions are rendered as one user turn
        (images first) with the chat template, thinking off, so the next token is the answer; prompts are
        left-padded so one forward pass with `logits_to_keep=1` gives every row's answer distribution (B, V).
    yes, no: the answer words; variants that are not a single token in this vocabulary are skipped (listed
        in `skipped`); at least one of each must remain. Ids are summed once each.
    """

    def __init__(self, model_or_path, processor=None, *, dtype: str = "float32", batch_size: int = 16,
                 yes=("yes", "Yes"), no=("no", "No"), system_prompt: str = ""):
        if isinstance(model_or_path, (str, os.PathLike)):
            model_or_path, processor, _ = load_policy(str(model_or_path), dtype)
        if processor is None:
            raise ValueError("TransformersLabeler needs the processor of a model object")
        self.model, self.processor, self.tokenizer = model_or_path, processor, tokenizer_of(processor)
        self.multimodal = hasattr(processor, "image_processor")
        self.batch_size, self.system_prompt, self.skipped = max(1, batch_size), system_prompt, []
        self.yes_ids, self.no_ids = self._ids(yes, "yes"), self._ids(no, "no")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def _ids(self, words, what: str) -> list[int]:
        ids = []
        for w in words:
            enc = self.tokenizer(w, add_special_tokens=False)["input_ids"]
            if len(enc) == 1:
                ids += [enc[0]] if enc[0] not in ids else []
            else:
                self.skipped.append(w)
        if not ids:
            raise ValueError(f"none of the labeler's {what} words {list(words)} is a single token of its tokenizer")
        return ids

    def render(self, question: str, n_images: int) -> str:
        content = [{"type": "image"}] * n_images + [{"type": "text", "text": question}]
        messages = ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else []) + [
            {"role": "user", "content": content if self.multimodal else question}]
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                  enable_thinking=False)

    @torch.no_grad()
    def yes_no_probs(self, questions: list[str], images: list[list]) -> list[tuple[float, float]]:
        was = self.model.training
        self.model.eval()
        out: list[tuple[float, float]] = []
        try:
            for s in range(0, len(questions), self.batch_size):
                qs, ims = questions[s:s + self.batch_size], [list(x or []) for x in images[s:s + self.batch_size]]
                texts = [self.render(q, len(im)) for q, im in zip(qs, ims)]
                flat = [open_image(im) for row in ims for im in row]
                if flat and not self.multimodal:
                    raise ValueError("the labeler is a text-only model but the questions come with images")
                kw = dict(padding=True, padding_side="left", return_tensors="pt", add_special_tokens=False)
                enc = (self.processor(text=texts, images=flat or None, **kw) if self.multimodal
                       else self.tokenizer(texts, **kw))
                enc = {k: v.to(self.model.device) for k, v in enc.items()}
                logits = self.model(**enc, logits_to_keep=1, use_cache=False).logits[:, -1].float()
                probs = torch.softmax(logits, dim=-1)
                p_yes, p_no = probs[:, self.yes_ids].sum(-1), probs[:, self.no_ids].sum(-1)
                out += list(zip(p_yes.tolist(), p_no.tolist()))
        finally:
            self.model.train(was)
        return out


class EngineTextLM:
    """`rewards.rlaifv.TextLM` over a rollout engine: each prompt as one user turn, greedy, thinking off."""

    def __init__(self, engine, processor, max_tokens: int = 256):
        self.engine, self.processor, self.max_tokens = engine, processor, max_tokens

    def complete(self, prompts: list[str]) -> list[str]:
        from rollout import RolloutRequest, SamplingConfig

        reqs = [RolloutRequest(self.processor.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                                  add_generation_prompt=True, enable_thinking=False))
                for p in prompts]
        outs = self.engine.generate(reqs, SamplingConfig(temperature=0.0, max_tokens=self.max_tokens, n=1))
        return [o[0].text for o in outs]

    def close(self) -> None:
        self.engine.close()


@dataclasses.dataclass
class LabelerConfig:
    path: str = "policy"  # the labeler model: "policy" (each round's own model) or a transformers id/path
    dtype: str = "float32"  # labeler dtype: float32 | bfloat16 | float16
    batch_size: int = 16  # questions per forward pass
    yes: list = dataclasses.field(default_factory=lambda: ["yes", "Yes"])  # answer words summed as P(yes)
    no: list = dataclasses.field(default_factory=lambda: ["no", "No"])  # answer words summed as P(no)
    accept_odds: float = 1.0  # a claim is accepted when P(yes) > accept_odds * P(no) (1: the paper's rule)
    calibrate: bool = False  # rounds only: accept_odds := each round's median claim odds (an untrained labeler)
    splitter: str = "rule"  # claims from "rule" (deterministic, offline) or "lm" (a language model, prompt in a file)
    questioner: str = "rule"  # yes/no questions from "rule" (templates) or "lm"
    lm_path: str = ""  # model for "lm" splitting/questioning ("": the labeler's model)
    lm_engine: str = "hf"  # engine serving it: "hf" or "vllm"
    lm_max_tokens: int = 256  # reply budget of the splitting/questioning model
    split_prompt_file: str = ""  # prompt for "lm" splitting ({question}, {answer}); "": built-in SPLIT_PROMPT
    question_prompt_file: str = ""  # prompt for "lm" questions ({claims}); "": built-in QUESTION_PROMPT
    max_claims: int = 16  # claims checked per response (more are counted, not checked)
    short_answer_words: int = 3  # claims this short are asked together with the prompt (answer template)


@dataclasses.dataclass
class LabelerResources:
    """The `resources` object of the `rlaifv` reward: `.labeler`, and `.claim_lm` for LM splitting/questions."""

    labeler: TransformersLabeler
    claim_lm: EngineTextLM | None = None

    def close(self) -> None:
        if self.claim_lm is not None:
            self.claim_lm.close()
            self.claim_lm = None


def labeler_config(cfg: LabelerConfig | dict) -> LabelerConfig:
    """`cfg`, checked; a dict (e.g. GRPO's `labeler:` section) is built like a config section. ConfigError names the key."""
    if isinstance(cfg, dict):
        from rlkit.config import _build

        cfg = _build(LabelerConfig, cfg, "labeler.")
        if cfg.calibrate:  # a dict is GRPO's `labeler:` section; calibration is per RLAIF-V round
            raise ConfigError("config key 'labeler.calibrate': only `rlkit rlaifv` rounds calibrate; the rlaifv "
                              "reward uses labeler.accept_odds")
    check_labeler(cfg)
    return cfg


def labeler_resources(cfg: LabelerConfig | dict, policy_path: str, rollout: RolloutConfig | None = None,
                      seed: int = 0) -> LabelerResources:
    """Load the labeler (and the splitting/questioning LM) that `cfg` names; "policy" means `policy_path`.

    `cfg` may be a dict (e.g. GRPO's `labeler:` section): it is validated like a config section. The claim LM's
    engine, when `labeler.lm_engine` is vllm, gets the run's vLLM options (`rlkit.run.build.engine_options` of
    `rollout`, `rollout.engine_kwargs` included); without `rollout`, and for the hf engine, the engine's defaults.
    """
    from rollout import make_engine

    cfg = labeler_config(cfg)
    path = policy_path if cfg.path == "policy" else cfg.path
    res = LabelerResources(TransformersLabeler(path, dtype=cfg.dtype, batch_size=cfg.batch_size, yes=tuple(cfg.yes),
                                               no=tuple(cfg.no)))
    if "lm" in (cfg.splitter, cfg.questioner):
        lm_path = cfg.lm_path or path
        kw = engine_options(rollout, seed, "vllm") if rollout is not None and cfg.lm_engine == "vllm" else {}
        engine = make_engine(cfg.lm_engine, model_path=lm_path, **kw)
        res.claim_lm = EngineTextLM(engine, load_processor(lm_path), cfg.lm_max_tokens)
    return res


def check_labeler(L: LabelerConfig, prefix: str = "labeler.") -> None:
    for key, value, choices in (("dtype", L.dtype, ("float32", "bfloat16", "float16")),
                                ("splitter", L.splitter, ("rule", "lm")), ("questioner", L.questioner, ("rule", "lm")),
                                ("lm_engine", L.lm_engine, ("hf", "vllm"))):
        if value not in choices:
            raise ConfigError(f"config key '{prefix}{key}': {value!r} is not one of {', '.join(choices)}")
    check_ranges(L, prefix)
    for key, ok in (("yes", bool(L.yes)), ("no", bool(L.no))):
        if not ok:
            raise ConfigError(f"config key '{prefix}{key}': {getattr(L, key)!r} is out of range")
