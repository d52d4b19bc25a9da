"""vLLM rollout engine: fast sampling with per-token logprobs, and in-place weight sync from the trainer.

Why this shape (as in verl's vLLM rollout, minus Ray): `vllm.LLM` runs in the caller's process
(`VLLM_ENABLE_V1_MULTIPROCESSING=0` keeps even the engine core in-process on CPU), so a trainer process
or a Ray actor owns one engine object and calls `generate` / `update_weights` between optimizer steps.
No restart, no checkpoint on disk: `update_weights` streams transformers-named tensors into the worker's
`model_runner.reload_weights`, which maps names through the architecture's own `load_weights`
(`model.language_model.*` -> `language_model.model.*`, q/k/v -> fused qkv, ...) and re-runs each layer's
`process_weights_after_loading` (oneDNN / sgl repacking on CPU) into the original storage.

Three things that are not automatic and that this module does after every sync:
1. tied output head (CPU): with `tie_word_embeddings`, `lm_head.weight` *is* `embed_tokens.weight`, so
   vLLM loads it once, under the embedding's name; the `ParallelLMHead` layer gets no weights of its own,
   is never re-processed by the layerwise reloader, and its CPU GEMM closure (`layer.cpu_linear`, built by
   `dispatch_cpu_unquantized_gemm` from a packed *copy* of the weight) keeps computing the old head:
   logprobs silently stay wrong (error ~1.3 nats in the tests). We re-run
   `UnquantizedEmbeddingMethod.process_weights_after_loading(lm_head)` (a no-op on GPU).
2. caches: the prefix cache holds KV computed with old weights (`llm.reset_prefix_cache()`). For
   vision-language models, `reload_weights` clears the worker's encoder cache but the scheduler still
   believes the old image embeddings are there, so the next image request dies with "Encoder cache
   miss" unless `llm.llm_engine.reset_encoder_cache()` resets both.
3. transport: the worker side is `WeightSyncExtension.rlkit_reload_weights`, mixed into vLLM's worker
   (`worker_extension_cls`) and called by name through `collective_rpc`. In-process the tensors are handed
   over as they are (no copy); across processes (multiprocessing engine, GPU workers) tensors do not
   pickle through `collective_rpc`, so they travel as one safetensors byte blob (one extra host copy).

Cost of a sync: one copy of each weight into the engine plus repacking; about 0.01-0.05 s for the tiny
models, roughly proportional to parameter bytes for real ones (plus a blob copy across processes).
`update_weights` accepts any subset of the weights (send a big model in chunks), but every chunk must hold
whole vLLM layers: q/k/v projections together, gate/up together (they are fused in vLLM and a partly
loaded fused layer would be processed with uninitialised memory); this is checked.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
from typing import Any, Iterable, Sequence

import torch

from rollout.base import Completion, RolloutRequest, SamplingConfig, banned_ids, placeholder_token_ids, requests_n

# Checkpoint names that vLLM fuses into one layer: a chunk must contain all members of a group or none.
_FUSED_GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


# Scheduler token budget on CPU (prompts of one step prefilled in one chunk: see VLLMEngine.__init__).
CPU_MAX_BATCHED_TOKENS = 65536
# vLLM 0.32's `max_num_seqs` for the `LLM` class on CPU, per tensor-parallel worker (EngineArgs' batch defaults):
# the most sequences its scheduler runs at once.
CPU_MAX_NUM_SEQS = 256
# The most an automatically sized CPU KV cache takes (`kv_cache_gib=0`): rlkit's earlier fixed size.
KV_CACHE_AUTO_MAX_BYTES = 1 << 30


def kv_bytes_per_token(config: dict, dtype_bytes: int, tensor_parallel: int = 1) -> int | None:
    """KV cache bytes one token takes in one worker of a model with standard attention: a key and a value of
    `head_dim` numbers per key-value head per layer, the heads split over `tensor_parallel` workers (a worker keeps
    at least one). `config`: the model's config.json (a vision-language model's `text_config` read over its top
    level). None when the config does not say (then the automatic size is its cap)."""
    c = {**config, **(config.get("text_config") or {})}
    try:
        heads = int(c["num_attention_heads"])
        head_dim = int(c.get("head_dim") or int(c["hidden_size"]) // heads)
        kv_heads = -(-int(c.get("num_key_value_heads") or heads) // tensor_parallel)
        return 2 * int(c["num_hidden_layers"]) * kv_heads * head_dim * dtype_bytes
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None


def auto_kv_cache_bytes(config: dict, dtype: str, max_model_len: int, max_num_seqs: int, tensor_parallel: int = 1,
                        cap: int = KV_CACHE_AUTO_MAX_BYTES) -> int:
    """One worker's CPU KV cache for what the engine can use at all: `max_num_seqs` sequences of `max_model_len`
    tokens (more never run at once, so none is preempted for room), in whole MiB, at most `cap`.

    Why not a fixed GiB: vLLM's CPU worker allocates the cache as one zeroed tensor when the engine starts, and
    the first touch of each page costs the kernel time: 1 GiB took 1.2-3.4 CPU seconds of a tiny model's engine
    start (docs/performance.md, "Fifth pass"), for a cache the tiny model fills to 1/4 at most."""
    per_token = kv_bytes_per_token(config, 2 if dtype in ("bfloat16", "float16", "half") else 4, tensor_parallel)
    if per_token is None:
        return cap
    mib = 1 << 20
    return min(cap, -(-per_token * max_model_len * max_num_seqs // mib) * mib)


def _check_fused_complete(names: Iterable[str]) -> None:
    names = set(names)
    for name in names:
        parts = name.split(".")
        for group in _FUSED_GROUPS:
            if len(parts) >= 2 and parts[-2] in group:
                for other in group:
                    sibling = ".".join(parts[:-2] + [other, parts[-1]])
                    if sibling not in names:
                        raise ValueError(
                            f"update_weights: {name!r} is sent without {sibling!r}; vLLM fuses "
                            f"{'/'.join(group)} into one layer, so send them in the same chunk"
                        )


def _dedupe(state_dict: dict[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    """Detached, contiguous tensors; names that alias an earlier tensor (tied embeddings) are dropped.

    vLLM loads a tied weight once (under the embedding's name) and safetensors refuses shared storage.
    """
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    out = []
    for name, t in state_dict.items():
        t = t.detach()
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if t.device.type != "meta" and key in seen:
            continue
        seen.add(key)
        out.append((name, t.contiguous()))
    return out


def _refresh_output_heads(model: torch.nn.Module) -> int:
    """Re-run weight processing of every unquantized output head (module docstring, point 1). Returns how many.

    Only unquantized heads: their processing (CPU repacking) starts from `weight` and is safe to repeat;
    a quantized method could transform already-processed weights a second time."""
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, UnquantizedEmbeddingMethod

    n = 0
    for module in model.modules():
        if isinstance(module, ParallelLMHead) and isinstance(getattr(module, "quant_method", None),
                                                             UnquantizedEmbeddingMethod):
            if not module.weight.is_meta:
                module.quant_method.process_weights_after_loading(module)
                n += 1
    return n


class _ErrorsOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


_ERRORS_ONLY = _ErrorsOnly()
_RELOAD_LOGGERS = ("vllm.model_executor.model_loader.reload.inplace",
                   "vllm.model_executor.model_loader.reload.layerwise")


@contextlib.contextmanager
def _quiet_partial_load_warnings():
    """vLLM warns about every weight absent from a reload ("not loaded from checkpoint", "Failed to load
    weights"): expected for chunked syncs and for buffers such as rotary caches. Unknown names still raise.

    A filter, not `setLevel`: every `Logger.setLevel` clears the level cache of every logger in the process
    (`Manager._clear_cache`), which with vLLM's hundreds of loggers cost ~1 ms a call, 4 calls a sync."""
    loggers = [logging.getLogger(n) for n in _RELOAD_LOGGERS]
    for lg in loggers:
        lg.addFilter(_ERRORS_ONLY)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeFilter(_ERRORS_ONLY)


class WeightSyncExtension:
    """Mixed into vLLM's worker class (`worker_extension_cls`), so `collective_rpc("rlkit_reload_weights")`
    works by name: a callable would need `VLLM_ALLOW_INSECURE_SERIALIZATION=1` with the multiprocessing
    engine, and tensors do not pickle through it (bytes do)."""

    def rlkit_reload_weights(self, payload: Any) -> int:
        """Load `payload` (safetensors bytes, or a list of (name, tensor) in-process) in place."""
        if isinstance(payload, (bytes, bytearray)):
            import safetensors.torch

            payload = list(safetensors.torch.load(bytes(payload)).items())
        runner = self.model_runner  # type: ignore[attr-defined]
        try:
            with _quiet_partial_load_warnings():
                runner.reload_weights(weights_iterator=iter(payload))
        except Exception:
            # A bad name raises halfway, with every layer swapped out to meta tensors: put the old (kernel)
            # tensors back so the engine keeps serving the previous weights instead of dying on the next step.
            from vllm.model_executor.model_loader.reload.layerwise import finalize_layerwise_reload

            finalize_layerwise_reload(runner.get_model(), runner.model_config)
            _refresh_output_heads(runner.get_model())
            raise
        return _refresh_output_heads(runner.get_model())


def cpu_bind_groups(cpus: list[int], parts: int) -> str:
    """`VLLM_CPU_OMP_THREADS_BIND` for `parts` CPU workers: the CPUs cut into contiguous, near-equal groups.

    >>> cpu_bind_groups([0, 1, 2, 3, 4], 2)
    '0,1|2,3,4'
    """
    if len(cpus) < parts:
        raise ValueError(f"tensor_parallel_size {parts} on CPU needs at least {parts} usable cores, got {len(cpus)}")
    cut = [cpus[k * len(cpus) // parts:(k + 1) * len(cpus) // parts] for k in range(parts)]
    return "|".join(",".join(map(str, group)) for group in cut)


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def _inspect_models_in_process() -> None:
    """vLLM learns what a model class supports by importing it in a new Python process ("to avoid initializing
    CUDA"), which on a machine's first run (its cache, ~/.cache/vllm/modelinfos, is empty) costs a second vLLM
    import: 10-20 s of a 2-core machine. Its CPU build has no CUDA to protect: inspect in this process, which
    imports the model class anyway to build the model (docs/performance.md, start-up)."""
    from vllm.model_executor.models import registry

    if callable(getattr(registry, "_run_in_subprocess", None)):
        registry._run_in_subprocess = lambda fn: fn()


def _eager_token_ranks() -> None:
    """vLLM computes each sampled token's rank (`batched_count_greater_than`, a count of logprobs >= the sampled
    one) through `torch.compile`; on CPU the first call traces and builds that kernel with dynamo and inductor
    (a C++ compile): ~3 s and ~6 CPU-seconds at the first rollout of every run. On CPU it runs eagerly instead:
    the same integer counts (`(x >= values).sum(-1)`, exactly what the compiled function computes).
    docs/performance.md, start-up."""
    from vllm.v1.sample import sampler

    fn = getattr(sampler, "batched_count_greater_than", None)
    if fn is not None and hasattr(fn, "__wrapped__"):  # the torch.compile-wrapped function
        sampler.batched_count_greater_than = _count_greater_equal


def _count_greater_equal(x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """(B, V), (B, 1) -> (B,): how many entries of each row of `x` are >= that row's value."""
    return (x >= values).sum(-1)


class VLLMEngine:
    """`vllm.LLM` behind the `rollout.base.Engine` interface.

    model_path: a transformers checkpoint directory (model + tokenizer/processor).
    dtype: None picks float32 on CPU (exact logprob agreement with the trainer) and bfloat16 on GPU.
    max_model_len: prompt + completion budget per sequence.
    seed: engine seed (sampling without a per-call seed still differs between engines with other seeds).
    kv_cache_gib: KV cache size on CPU; 0 sizes it to what the engine can run at once (`auto_kv_cache_bytes`).
        `VLLM_CPU_KVCACHE_SPACE` (whole GiB), if set, wins, as in vLLM.
    limit_images_per_prompt: images per prompt for vision-language models (videos are disabled).
    gpu_memory_utilization: fraction of GPU memory for weights + KV cache (GPU only).
    enforce_eager: None means True on CPU (no graph capture there) and False on GPU.
    weight_transport: 'auto' (tensors in-process, safetensors bytes otherwise), 'tensors' or 'bytes'.
    sleep_mode: on GPUs, start vLLM with its sleep mode, so `sleep()` offloads the weights to host memory and
        discards the KV cache (vLLM's level 1) while a colocated trainer uses the GPU; `update_weights` wakes
        the weights first, loads, then reallocates the cache; `generate` wakes everything. vLLM's CPU build
        has no sleep mode: there `sleep()` returns False and nothing changes.
    engine_kwargs: passed to `vllm.LLM` as they are (e.g. tensor_parallel_size, max_num_seqs); except
        `worker_extension_cls`, which is ours (`WeightSyncExtension`, the worker side of `update_weights`).
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        dtype: str | None = None,
        max_model_len: int = 2048,
        seed: int = 0,
        kv_cache_gib: float = 0.0,
        limit_images_per_prompt: int = 1,
        gpu_memory_utilization: float = 0.5,
        enforce_eager: bool | None = None,
        weight_transport: str = "auto",
        sleep_mode: bool = False,
        **engine_kwargs: Any,
    ) -> None:
        from vllm import LLM

        if weight_transport not in ("auto", "tensors", "bytes"):
            raise ValueError(f"weight_transport must be 'auto', 'tensors' or 'bytes', got {weight_transport!r}")
        self.model_path = str(model_path)
        cfg = json.loads((pathlib.Path(self.model_path) / "config.json").read_text())
        self.is_multimodal = "vision_config" in cfg
        self.placeholder_ids = placeholder_token_ids(cfg) if self.is_multimodal else []
        on_cpu = _on_cpu()
        if on_cpu:
            _inspect_models_in_process()
            _eager_token_ranks()
        kwargs: dict[str, Any] = dict(
            model=self.model_path,
            dtype=dtype or ("float32" if on_cpu else "bfloat16"),
            max_model_len=max_model_len,
            seed=seed,
            enforce_eager=on_cpu if enforce_eager is None else enforce_eager,
        )
        if on_cpu:
            tp = int(engine_kwargs.get("tensor_parallel_size", 1))
            seqs = int(engine_kwargs.get("max_num_seqs") or CPU_MAX_NUM_SEQS * tp)
            kwargs["kv_cache_memory_bytes"] = (int(kv_cache_gib * (1 << 30)) if kv_cache_gib > 0 else
                                               auto_kv_cache_bytes(cfg, kwargs["dtype"], max_model_len, seqs, tp))
            # vLLM 0.32's CPU runner crashes ("CPU Generator does not use offset") when a seeded request is
            # prefilled in chunks, and requests are seeded: a batch whose prompts exceed the default 4,096
            # tokens per scheduler step (16 x 8 vision-language prompts do) would kill the engine. A larger
            # budget keeps every prefill in one chunk (docs/performance.md).
            kwargs["max_num_batched_tokens"] = max(CPU_MAX_BATCHED_TOKENS, max_model_len)
        else:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
            if sleep_mode:
                kwargs["enable_sleep_mode"] = True
        self.can_sleep, self.asleep = bool(sleep_mode and not on_cpu), False
        if self.is_multimodal:
            kwargs["limit_mm_per_prompt"] = {"image": limit_images_per_prompt, "video": 0}
        kwargs.update(engine_kwargs)
        tp = int(kwargs.get("tensor_parallel_size", 1))
        if on_cpu and tp > 1 and not os.environ.get("VLLM_CPU_OMP_THREADS_BIND"):
            # vLLM's CPU build binds each tensor-parallel worker's OpenMP threads to a NUMA node and refuses
            # more workers than nodes; split the cores this process may use between the workers instead.
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cpu_bind_groups(sorted(os.sched_getaffinity(0)), tp)
        ext = kwargs.setdefault("worker_extension_cls", f"{__name__}.WeightSyncExtension")
        if ext != f"{__name__}.WeightSyncExtension":
            raise ValueError("worker_extension_cls is taken by rollout's weight sync; subclass WeightSyncExtension")
        set_num_threads = torch.set_num_threads
        self.llm = LLM(**kwargs)
        if self._in_process():
            # vLLM's CPU worker replaces `torch.set_num_threads` with a no-op, process-wide, because it pins
            # OpenMP threads in its own worker processes; in-process nothing was pinned, so give it back to
            # the trainer sharing this process.
            torch.set_num_threads = set_num_threads
        self.tokenizer = self.llm.get_tokenizer()
        self.weight_transport = weight_transport
        self.weight_version = 0

    # ------------------------------------------------------------------ sleep (GPU, colocated training)
    def sleep(self) -> bool:
        """Offload the weights and drop the KV cache until the next call; False where vLLM cannot (CPU)."""
        if not self.can_sleep:
            return False
        if not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True
        return True

    def _wake(self, tags: list[str] | None = None) -> None:
        if self.asleep:
            self.asleep = not self.llm.wake_up(tags)  # True once every allocation is back

    # ------------------------------------------------------------------ sampling
    def generate(self, requests: Sequence[RolloutRequest], sampling: SamplingConfig) -> list[list[Completion]]:
        from vllm import SamplingParams

        self._wake()
        ns = requests_n(requests, sampling)
        bias = {t: float("-inf") for t in banned_ids(sampling, self.placeholder_ids)}
        prompts, params, offset = [], [], 0
        for req, n in zip(requests, ns):
            prompt: dict[str, Any] = {"prompt": req.prompt}
            if req.images:
                prompt["multi_modal_data"] = {"image": list(req.images)}
            prompts.append(prompt)
            params.append(
                SamplingParams(
                    n=n,
                    temperature=sampling.temperature,
                    top_p=sampling.top_p,
                    max_tokens=sampling.max_tokens,
                    # vLLM seeds the n children seed, seed+1, ...: offset so requests never share a stream.
                    seed=None if sampling.seed is None else sampling.seed + offset,
                    stop_token_ids=list(sampling.stop_token_ids or []),
                    logit_bias=bias or None,  # applied after the raw logprobs are taken
                    logprobs=0,  # 0 = only the sampled token's logprob
                    flat_logprobs=True,
                    # We decode once at the end (below): vLLM's incremental detokenizer holds back a trailing
                    # partial UTF-8 sequence, so its text could differ from `decode(token_ids)`.
                    detokenize=False,
                )
            )
            offset += n
        if not prompts:
            return []
        results = []
        for out, n in zip(self._generate_fitting(prompts, params), ns):
            if out is None:
                results.append([Completion("", [], [], [], "prompt_too_long") for _ in range(n)])
                continue
            prompt_ids = list(out.prompt_token_ids or [])
            group = []
            for c in sorted(out.outputs, key=lambda c: c.index):
                ids = list(c.token_ids)
                group.append(
                    Completion(
                        text=self.tokenizer.decode(ids, skip_special_tokens=True),
                        token_ids=ids,
                        logprobs=_sampled_logprobs(c.logprobs, ids),
                        prompt_token_ids=prompt_ids,
                        finish_reason="length" if c.finish_reason == "length" else "stop",
                    )
                )
            results.append(group)
        return results

    def _generate_fitting(self, prompts: list, params: list) -> list:
        """vLLM's output for each prompt, None for a prompt longer than the engine's `max_model_len`.

        vLLM refuses a whole call for one such prompt (`VLLMValidationError`, before anything is sampled): a
        single long row in a data set would stop a run hours in. On that error each prompt is tried alone for one
        token (the rare path), then the ones that fit are generated together with their own parameters, so their
        samples are the ones a call without the long prompts would give (per-request seeds)."""
        from vllm import SamplingParams
        from vllm.exceptions import VLLMValidationError

        def too_long(e: VLLMValidationError) -> bool:
            return e.parameter == "input_tokens"

        try:
            return self.llm.generate(prompts, params, use_tqdm=False)
        except VLLMValidationError as e:
            if not too_long(e):
                raise
        fits = []
        for prompt in prompts:
            try:
                self.llm.generate([prompt], SamplingParams(max_tokens=1, seed=0, detokenize=False), use_tqdm=False)
                fits.append(True)
            except VLLMValidationError as e:
                if not too_long(e):
                    raise
                fits.append(False)
        kept = [i for i, f in enumerate(fits) if f]
        outs = iter(self.llm.generate([prompts[i] for i in kept], [params[i] for i in kept], use_tqdm=False)
                    if kept else [])
        return [next(outs) if f else None for f in fits]

    # ------------------------------------------------------------------ weight sync
    def update_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load transformers-named weights in place (all or a chunk of whole layers), then drop caches.
        An engine asleep gets its weights back first and its KV cache only after loading (lower peak memory)."""
        self._wake(["weights"])
        items = _dedupe(state_dict)
        _check_fused_complete(name for name, _ in items)
        transport = self.weight_transport
        if transport == "auto":
            transport = "tensors" if self._in_process() else "bytes"
        if transport == "bytes":
            import safetensors.torch

            payload: Any = safetensors.torch.save({name: t.cpu() for name, t in items})
        else:
            payload = items
        self.llm.collective_rpc("rlkit_reload_weights", args=(payload,))
        self._wake(["kv_cache"])
        self.llm.reset_prefix_cache()
        if self.is_multimodal:
            self.llm.llm_engine.reset_encoder_cache()
        self.weight_version += 1

    def _in_process(self) -> bool:
        """True when the engine core and its single worker live in this process (tensors need no pickling)."""
        from vllm.v1.engine.core_client import InprocClient
        from vllm.v1.executor.uniproc_executor import UniProcExecutor

        core = self.llm.llm_engine.engine_core
        if not isinstance(core, InprocClient):
            return False
        return isinstance(core.engine_core.model_executor, UniProcExecutor)

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        engine = getattr(llm, "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del llm, engine, core
        import gc

        gc.collect()


def _sampled_logprobs(lps: Any, token_ids: list[int]) -> list[float]:
    """The sampled token's logprob at each position, from vLLM's flat or dict-per-position logprobs."""
    if lps is None:
        raise RuntimeError("vLLM returned no logprobs (SamplingParams.logprobs must be set)")
    if hasattr(lps, "start_indices"):  # FlatLogprobs: one entry per position when logprobs=0
        out = []
        for pos, tok in enumerate(token_ids):
            lo, hi = lps.start_indices[pos], lps.end_indices[pos]
            for k in range(lo, hi):
                if lps.token_ids[k] == tok:
                    out.append(float(lps.logprobs[k]))
                    break
            else:
                raise RuntimeError(f"sampled token {tok} missing from vLLM logprobs at position {pos}")
        return out
    return [float(lps[pos][tok].logprob) for pos, tok in enumerate(token_ids)]
