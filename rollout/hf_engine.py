"""transformers rollout engine: the reference (and fallback) implementation of `rollout.base.Engine`.

Why it exists: it is slow (no paged KV cache, no continuous batching), but it is plain `model.generate`,
so it runs wherever transformers runs (no vLLM build for the platform, exotic architectures, debugging) and
it is the yardstick the vLLM engine's logprobs are checked against.

Semantics matched to `VLLMEngine` (vLLM 0.32 defaults):
- logprobs are vLLM's default `logprobs_mode="raw_logprobs"`: log_softmax of the model's *raw* logits
  (`output_logits=True`, before temperature / top-p), gathered at the sampled token;
- sampling uses only temperature and top-p: a fresh `GenerationConfig` overrides whatever the checkpoint's
  `generation_config.json` sets (top_k, repetition_penalty, ...), since vLLM's `SamplingParams` ignores it;
- banned ids (vision placeholders always, for vision-language models) are suppressed after the raw logits;
- EOS (the model's, plus `stop_token_ids`) is kept as the last token id; text is decoded without special
  tokens; finish_reason is 'stop' or 'length'.
Prompts are padded on the left and all completions of a call are generated as one batch (`n` copies of each
prompt), split into `max_batch_size` rows at most.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Sequence

import torch

from rollout.base import Completion, RolloutRequest, SamplingConfig, banned_ids, placeholder_token_ids, requests_n


def _load(path: str | os.PathLike, dtype: torch.dtype):
    import transformers

    cfg = json.loads((pathlib.Path(path) / "config.json").read_text())
    if "vision_config" in cfg:
        model = transformers.AutoModelForImageTextToText.from_pretrained(path, dtype=dtype)
        processor = transformers.AutoProcessor.from_pretrained(path)
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        processor = transformers.AutoTokenizer.from_pretrained(path)
    return model, processor


class HFEngine:
    """`model.generate` behind the `rollout.base.Engine` interface.

    model_or_path: a checkpoint directory, or a loaded transformers model (used as is, not copied: passing
        the trainer's live model means rollouts always see the current weights).
    processor: the model's processor (vision-language) or tokenizer (text); loaded from the path if None.
        Not modified (left padding is asked for per call).
    device: where the model runs.
    dtype: dtype used when loading from a path.
    `sleep()` moves the weights to host memory and empties the CUDA cache (a colocated trainer gets the GPU
    memory back); the next `generate` or `update_weights` moves them back. On a CPU device there is nothing to
    free: `sleep()` returns False.
    max_batch_size: most sequences generated in one `generate` call.
    """

    def __init__(
        self,
        model_or_path: Any,
        processor: Any = None,
        device: str | torch.device = "cpu",
        *,
        dtype: torch.dtype = torch.float32,
        max_batch_size: int = 64,
    ) -> None:
        if isinstance(model_or_path, (str, os.PathLike)):
            model, loaded = _load(model_or_path, dtype)
            processor = processor if processor is not None else loaded
        else:
            model = model_or_path
        if processor is None:
            raise ValueError("HFEngine needs a processor/tokenizer when given a model object")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.asleep = False
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.is_multimodal = hasattr(processor, "image_processor")
        self.placeholder_ids = placeholder_token_ids(self.model.config.to_dict()) if self.is_multimodal else []
        self.max_batch_size = max_batch_size
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        if not self.eos_ids and self.tokenizer.eos_token_id is not None:
            self.eos_ids = [self.tokenizer.eos_token_id]
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.eos_ids[0]

    # ------------------------------------------------------------------ sampling
    def _encode(self, prompts: list[str], images: list[list[Any]]) -> dict[str, torch.Tensor]:
        flat = [im for ims in images for im in ims]
        if self.is_multimodal:
            enc = self.processor(text=prompts, images=flat or None, padding=True, padding_side="left",
                                 return_tensors="pt")
        else:
            if flat:
                raise ValueError("images given to a text-only model")
            enc = self.tokenizer(prompts, padding=True, padding_side="left", return_tensors="pt")
        return {k: v.to(self.device) for k, v in enc.items()}

    def _generation_config(self, sampling: SamplingConfig, eos_ids: list[int]):
        from transformers import GenerationConfig

        greedy = sampling.temperature <= 0
        return GenerationConfig(
            do_sample=not greedy,
            temperature=None if greedy else sampling.temperature,
            top_p=None if greedy else sampling.top_p,
            top_k=None if greedy else 0,
            min_p=None,
            repetition_penalty=1.0,
            suppress_tokens=banned_ids(sampling, self.placeholder_ids) or None,  # -inf after raw logits
            no_repeat_ngram_size=0,
            num_beams=1,
            max_new_tokens=sampling.max_tokens,
            eos_token_id=eos_ids,
            pad_token_id=self.pad_id,
            output_logits=True,
            return_dict_in_generate=True,
        )

    def sleep(self) -> bool:
        """Free the accelerator memory until the next call (see the class docstring); False: nothing to free."""
        if self.device.type == "cpu":
            return False
        if not self.asleep:
            self.model.to("cpu")
            torch.cuda.empty_cache()
            self.asleep = True
        return True

    def _wake(self) -> None:
        if self.asleep:
            self.model.to(self.device)
            self.asleep = False

    @torch.no_grad()
    def generate(self, requests: Sequence[RolloutRequest], sampling: SamplingConfig) -> list[list[Completion]]:
        self._wake()
        ns = requests_n(requests, sampling)
        rows = [(i, req) for i, (req, n) in enumerate(zip(requests, ns)) for _ in range(n)]
        eos_ids = self.eos_ids + [t for t in (sampling.stop_token_ids or []) if t not in self.eos_ids]
        gen_cfg = self._generation_config(sampling, eos_ids)
        results: list[list[Completion]] = [[] for _ in requests]
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            for start in range(0, len(rows), self.max_batch_size):
                chunk = rows[start : start + self.max_batch_size]
                enc = self._encode([r.prompt for _, r in chunk], [list(r.images) for _, r in chunk])
                out = self.model.generate(**enc, generation_config=gen_cfg)
                width = enc["input_ids"].shape[1]
                new = out.sequences[:, width:]
                # Raw logits -> raw logprobs of the sampled tokens (vLLM's default logprobs_mode).
                logits = torch.stack(out.logits, dim=1).float()  # (B, T, V)
                lps = torch.log_softmax(logits, dim=-1).gather(-1, new[:, : logits.shape[1], None])[..., 0]
                for row, (i, _) in enumerate(chunk):
                    ids = new[row].tolist()
                    stop = next((k for k, t in enumerate(ids) if t in eos_ids), None)
                    length = len(ids) if stop is None else stop + 1
                    ids = ids[:length]
                    mask = enc["attention_mask"][row].bool()
                    results[i].append(
                        Completion(
                            text=self.tokenizer.decode(ids, skip_special_tokens=True),
                            token_ids=ids,
                            logprobs=lps[row, :length].tolist(),
                            prompt_token_ids=enc["input_ids"][row][mask].tolist(),
                            finish_reason="length" if stop is None else "stop",
                        )
                    )
        return results

    # ------------------------------------------------------------------ weight sync
    @torch.no_grad()
    def update_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Copy (a subset of) transformers-named weights into the model; unknown names raise."""
        self._wake()
        known = self.model.state_dict().keys()
        unknown = [k for k in state_dict if k not in known]
        if unknown:  # checked first so a bad call changes nothing
            raise ValueError(f"update_weights: unknown parameter names {unknown[:5]}")
        self.model.load_state_dict(state_dict, strict=False)

    def close(self) -> None:
        self.model = None
