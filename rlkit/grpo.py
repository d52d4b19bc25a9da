"""The GRPO driver: rollout -> score -> advantage -> update -> sync -> log, once per step.

This is the only module that knows every other package. Everything that can be checked before a worker
starts is checked in `prepare` (config, data columns, reward names, model path); then Ray places the policy
worker and the rollout engine in actors and `run_grpo` loops. See docs/ARCHITECTURE.md for the flow.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import random
import time

import torch

from rewards import RewardScorer, RewardSpec
from rlkit import checkpoint as ckpt
from rlkit.algorithms import advantage_groups, get_advantage_fn
from rlkit.collect import StepRows, collect
from rlkit.config import ConfigError, GRPOConfig, check_grpo, dump_config
from rlkit.data import DataError, PromptStream, load_source, map_columns
from rlkit.data.checks import check_rows
from rlkit.evaluate import HeldOutEval, accuracy_reward_name, load_eval_rows, reward_score_fn
from rlkit.filters import get_filter
from rlkit.mode_metrics import ModeMetrics
from rlkit.models.loading import check_model_path, load_processor, tokenizer_of
from rlkit.modes import deep_ratio_at
from rlkit.records import MODES, Sample, TrainItem
from rlkit.reward_health import RewardHealth
from rlkit.rundir import GRPO_RESUMABLE, open_run
from rlkit.runlog import RunLog

REWARD_STATE = "reward_state.json"


class PolicyLogprobs:
    """`rewards.rlpr.PolicyAccess` over the policy actor: completion logprobs from the weights that sampled this
    step (rewards are scored after the rollout and before the update), batched in the worker; no second copy."""

    def __init__(self, actor, tokenizer):
        self.actor, self.tokenizer = actor, tokenizer

    def completion_logprobs(self, prompt_texts, images, completion_ids):
        import ray

        items = [TrainItem(p, list(im or []), list(ids), 0.0, [])
                 for p, im, ids in zip(prompt_texts, images, completion_ids)]
        return ray.get(self.actor.compute_logprobs.remote(items))


@dataclasses.dataclass
class RewardResources:
    """What rewards declaring `needs` receive as `resources`; `policy` is set once the policy actor exists,
    `labeler` (and `claim_lm` for LM claim splitting) when a reward needs a labeler (rlaifv)."""

    policy: PolicyLogprobs | None = None
    labeler: object = None  # rewards.rlaifv.Labeler
    claim_lm: object = None  # rewards.rlaifv.TextLM over a rollout engine (closed at the end of the run)


@dataclasses.dataclass
class Prepared:
    cfg: GRPOConfig
    out: pathlib.Path
    data: object  # datasets.Dataset with canonical columns
    scorer: RewardScorer
    base_model: str  # the initial policy (reference model for KL)
    start_model: str  # what the workers load (base model, or the checkpoint being resumed)
    resume_from: pathlib.Path | None
    resources: RewardResources
    accuracy_reward: str  # the reward graded as accuracy (trainer.accuracy_reward, resolved)
    eval_rows: list  # held-out PromptRows for trainer.eval_every (empty when off)
    rows: list | None = None  # row indices the prompt stream draws from (None: all; bad ones left out up front)
    bad_rows: int = 0  # rows left out up front (data.on_bad_row: skip)


def reward_specs(cfg: GRPOConfig) -> list[RewardSpec]:
    return [RewardSpec(name=r.name or None, path=r.path or None, weight=r.weight, kwargs=dict(r.kwargs),
                       completion_format=r.completion_format) for r in cfg.rewards]


def load_prompt_data(cfg: GRPOConfig):
    ds = load_source(cfg.data.source, cfg.data.split, limit=cfg.data.limit, seed=cfg.seed, **cfg.data.source_kwargs)
    ds = map_columns(ds, dict(cfg.data.columns))
    if "answer" not in ds.column_names:
        raise DataError(f"the data set has no 'answer' column (has {', '.join(ds.column_names)}); "
                        "map one with data.columns.answer")
    return ds


def resolve_model(cfg: GRPOConfig, ds, out: pathlib.Path) -> str:
    """A local folder for cfg.model.path; `tiny:*` is built (once) into output_dir/base_model."""
    path = cfg.model.path
    if path.startswith("tiny:"):
        kind = path.split(":", 1)[1]
        if kind not in ("text", "vlm"):
            raise ValueError(f"config key 'model.path': {path!r}: use tiny:text or tiny:vlm")
        target = out / "base_model"
        if not (target / "config.json").exists():
            from rlkit.warm_start import build_tiny_cached, tiny_texts

            texts = tiny_texts(ds)  # every prompt, then every answer as a string
            m = cfg.model
            extra = {"image_size": m.image_size, "vision_depth": m.vision_depth,
                     "vision_init_std": m.vision_init_std or None} if kind == "vlm" else {}
            build_tiny_cached(kind, target, texts=texts, tokenizer=m.tokenizer, vocab_size=m.vocab_size,
                              seed=m.seed, hidden_size=m.hidden_size, num_layers=m.num_layers, **extra)
        return str(target)
    check_model_path(path)
    return path


def prepare(cfg: GRPOConfig, resume: bool = False, overwrite: bool = False, on_checked=None) -> Prepared:
    """Everything checked before Ray, then the model resolved; `on_checked()` (Ray and the actors start in a
    thread: rlkit/warm_start.py) is called once the checks have passed, before a tiny model is built."""
    check_grpo(cfg)
    from rlkit.orchestration import check_local_capacity

    check_local_capacity(cfg.ray.address, cfg.ray.num_cpus, *_asks(cfg))  # CPUs a local Ray will have, before it
    out = pathlib.Path(cfg.output_dir)
    last = open_run(cfg, resume=resume, overwrite=overwrite, allowed=GRPO_RESUMABLE)  # rlkit/rundir.py
    out.mkdir(parents=True, exist_ok=True)
    try:
        resources = RewardResources()
        scorer = RewardScorer(reward_specs(cfg), timeout_s=cfg.reward_timeout_s, strict=False,  # strict_rewards:
                              retries=cfg.reward_retries,  # applied per step by RewardHealth (rlkit/reward_health.py)
                              resources=resources)
    except (ValueError, ImportError, FileNotFoundError) as e:
        raise ConfigError(f"config key 'rewards': {e}") from e
    accuracy_reward = accuracy_reward_name(cfg.trainer.accuracy_reward, scorer.names)
    needs_labeler = any("labeler" in plan.needs for plan in scorer.plans)
    if needs_labeler:
        from rlkit.rlaifv import labeler_config, labeler_resources

        labeler_config(cfg.labeler)  # a bad `labeler:` key fails now, naming itself
    ds = load_prompt_data(cfg)
    scan = check_rows(ds, limit=cfg.data.check_rows, on_bad_row=cfg.data.on_bad_row,
                      mode_column=cfg.modes.mode_column)  # every row a step may draw, before Ray (data/checks.py)
    for line in scan.notices():  # bad rows left out (data.on_bad_row: skip); a slow scan's time
        print(line)
    eval_rows = load_eval_rows(cfg) if cfg.trainer.eval_every else []
    tiny = cfg.model.path.startswith("tiny:")
    if on_checked and tiny:  # the build overlaps Ray's start
        on_checked()
    base = resolve_model(cfg, ds, out)
    if on_checked and not tiny:  # after resolve_model's path check
        on_checked()
    if needs_labeler:  # path: policy = a frozen copy of the initial policy, in this process
        lab = labeler_resources(cfg.labeler, policy_path=base)
        resources.labeler, resources.claim_lm = lab.labeler, lab.claim_lm
    dump_config(cfg, out / "config.yaml")
    return Prepared(cfg, out, ds, scorer, base, str(last) if last else base, last, resources, accuracy_reward,
                    eval_rows, rows=scan.usable, bad_rows=len(scan.bad))


def engine_options(cfg: GRPOConfig) -> dict:
    """Keyword arguments of `rollout.make_engine(cfg.rollout.engine, model_path=...)` besides the path."""
    r = cfg.rollout
    if r.engine == "vllm":
        return dict(max_model_len=r.max_model_len, seed=cfg.seed, kv_cache_gib=r.kv_cache_gib,
                    gpu_memory_utilization=r.gpu_memory_utilization, sleep_mode=r.sleep, **dict(r.engine_kwargs))
    return {"device": "cuda"} if r.num_gpus > 0 else {}  # hf: on the GPU Ray gives the actor


def _asks(cfg: GRPOConfig) -> tuple:
    """(placement, strategy, workers, ranks, one worker's resources, one rank's): what the run asks of Ray."""
    r, t = cfg.rollout, cfg.trainer
    return (cfg.ray.placement, cfg.ray.placement_strategy, r.num_workers, t.num_ranks,
            {"CPU": r.num_cpus, "GPU": r.num_gpus}, {"CPU": t.num_cpus, "GPU": t.num_gpus})


def _placement(cfg: GRPOConfig):
    """The placement groups of ray.placement (rlkit/orchestration.py), reserved before any actor starts, after
    checking that the actors fit the cluster at all (every placement; a `ray.address` cluster may grow first)."""
    from rlkit.orchestration import place

    return place(*_asks(cfg), cfg.ray.placement_timeout_s, grow=bool(cfg.ray.address))


def _engine_env(cfg: GRPOConfig) -> dict:
    return {"VLLM_CPU_KVCACHE_SPACE": str(max(1, int(cfg.rollout.kv_cache_gib)))}


def _engines(cfg: GRPOConfig, model_path: str, placement, spawn=None):
    """rollout.num_workers engine actors as one engine (rlkit/pool.py); worker i in its placement bundle.
    `spawn`: `orchestration.spawn` or `EarlyStart.spawn` (rlkit/warm_start.py)."""
    from rlkit.orchestration import EngineActor
    from rlkit.orchestration import spawn as new_actor
    from rlkit.pool import EnginePool

    r, spawn = cfg.rollout, spawn or new_actor
    return EnginePool(lambda i: spawn(EngineActor, r.engine, model_path=model_path, num_cpus=r.num_cpus,
                                      num_gpus=r.num_gpus, bundle=placement.worker(i), env=_engine_env(cfg),
                                      **engine_options(cfg)),
                      r.num_workers, r.max_retries, r.timeout_s)


# The policy ranks' only tensor-valued result is the state dict of the weight sync. Ray pickles a torch tensor
# through torch's own reducer (a copy of its bytes into the pickle stream, ~10 ms a sync on the tiny model);
# zero-copy serialisation passes each tensor's memory as a pickle-5 out-of-band buffer instead (one copy into
# the object store, read in place by the engine actors, which copy it into vLLM's weights). A tied output head
# then arrives as its own buffer (no shared storage to dedupe); vLLM loads it into the shared weight again
# (tests/test_rollout_vllm.py::test_tied_head_sent_without_shared_storage).
POLICY_ENV = {"RAY_ENABLE_ZERO_COPY_TORCH_TENSORS": "1"}


def _policy(cfg: GRPOConfig, model_path: str, base_model: str, out: pathlib.Path, placement, spawn=None):
    """trainer.num_ranks policy rank actors (rlkit/pool.py); rank 0 leads; rank j in its placement bundle.
    `spawn`: `orchestration.spawn` or `EarlyStart.spawn` (rlkit/warm_start.py)."""
    from rlkit.orchestration import spawn as new_actor
    from rlkit.pool import PolicyGroup, PolicyRank

    t, a, spawn = cfg.trainer, cfg.algorithm, spawn or new_actor
    return PolicyGroup(lambda rank: spawn(
                 PolicyRank, model_path, num_cpus=t.num_cpus, num_gpus=t.num_gpus, device=t.device,
                 bundle=placement.rank(rank),
                 gradient_checkpointing=t.gradient_checkpointing, dtype=cfg.model.dtype, freeze=list(cfg.model.freeze),
                 lr=t.lr, weight_decay=t.weight_decay, betas=tuple(t.betas), adam_eps=t.adam_eps, max_grad_norm=t.max_grad_norm,
                 micro_batch_size=t.micro_batch_size, mini_batch_size=t.mini_batch_size, ppo_epochs=t.ppo_epochs,
                 shuffle_minibatches=t.shuffle_minibatches,
                 policy_loss=a.policy_loss, loss_opts=dict(a.loss_opts), kl_coef=a.kl_coef,
                 kl_estimator=a.kl_estimator, kl_in_reward=a.kl_in_reward, reference_path=base_model,
                 temperature=cfg.rollout.temperature, lora=dict(cfg.model.lora) or None, seed=cfg.seed,
                 num_threads=max(1, int(t.num_cpus)), strategy=t.strategy, env=POLICY_ENV),
        t.num_ranks, where=lambda: ckpt.last_note(out, model_path), strategy=t.strategy, call_timeout_s=t.timeout_s)


def run_grpo(cfg: GRPOConfig, resume: bool = False, overwrite: bool = False) -> dict:
    """Run GRPO as configured; returns a summary (last metrics, checkpoint path). A new run refuses an
    output_dir that holds another one unless `overwrite` (moved aside); see rlkit/rundir.py."""
    from tqdm import tqdm

    from rlkit.orchestration import init_ray
    from rlkit.warm_start import EarlyStart, grpo_plan

    # Ray, the placement and bare actors start in a thread once prepare's checks pass (rlkit/warm_start.py)
    early = EarlyStart(lambda: init_ray(cfg.ray.address, cfg.ray.num_cpus, cfg.ray.loopback),
                       lambda: _placement(cfg), grpo_plan(cfg, _engine_env(cfg), POLICY_ENV))
    try:
        p = prepare(cfg, resume, overwrite, on_checked=early.start)
    except BaseException:
        early.abandon()
        raise
    state = ckpt.read_run_state(p.resume_from) if p.resume_from else {}
    start = state.get("step", 0)
    rng = random.Random(cfg.seed)
    if "rng" in state:
        rng.setstate(_tuple(state["rng"]))
    stream = PromptStream(p.data, seed=cfg.seed, shuffle=cfg.data.shuffle, position=state.get("data_position", 0),
                          rows=p.rows)
    rows_src = StepRows(cfg, stream)
    rows_src.skipped = state.get("skipped_rows", p.bad_rows)
    tokens_total = state.get("tokens_sampled_total", 0)
    mode_metrics = ModeMetrics(p.accuracy_reward, state.get("mode_tokens_sampled_total"))
    adv_fn = get_advantage_fn(cfg.algorithm.advantage)
    group_filter = get_filter(cfg.algorithm.group_filter, **cfg.algorithm.group_filter_opts)
    group_filter.load_state_dict(state.get("group_filter", {}))
    states = reward_states(p.scorer, p.resume_from)
    health = RewardHealth.from_config(cfg, p.scorer)  # failure summaries, the stop rule, steps with nothing to learn
    log = RunLog(p.out, tensorboard=cfg.logging.tensorboard, log_samples=cfg.logging.log_samples,
                 resume_step=start if p.resume_from else None)

    placement = early.wait()  # Ray up and the placement reserved by the early start (None: not started)
    init_ray(cfg.ray.address, cfg.ray.num_cpus, cfg.ray.loopback)
    placement = placement or _placement(cfg)
    policy = _policy(cfg, p.start_model, p.base_model, p.out, placement, spawn=early.spawn)
    engine = _engines(cfg, p.start_model, placement, spawn=early.spawn)
    early.close()  # bare actors the pools did not take
    processor = load_processor(p.start_model)  # while the actors start
    engine.restarts = state.get("rollout_worker_restarts", 0)
    p.resources.policy = PolicyLogprobs(policy.leader, tokenizer_of(processor))
    p.scorer.start()  # reward worker processes warm up while the engine starts
    if p.resume_from:
        policy.load_trainer_state(str(p.resume_from))
    held_out = _held_out(cfg, p, engine, processor)
    last: dict = {}
    can_sleep = cfg.rollout.sleep
    from rlkit.orchestration import wait_ready  # the bar (and its rate, its time left) starts with the first step

    startup_s = wait_ready([*policy.ranks, *engine.actors], f"{cfg.trainer.num_ranks} policy rank(s) and "
                           f"{cfg.rollout.num_workers} {cfg.rollout.engine} rollout engine(s)")
    bar = tqdm(total=cfg.max_steps, initial=start, disable=not cfg.logging.progress, desc="grpo", unit="step")
    try:
        if held_out and start == 0:  # the curve's starting point: the initial policy
            log.log_step(0, held_out.run(tokens_total), [])
        for step in range(start + 1, cfg.max_steps + 1):
            # ---- rollout + rewards (the group filter drops uninformative groups; fresh prompts refill the batch).
            # rollout.stream_chunks > 1: each chunk's kept groups get their advantages and go to the policy, which
            # accumulates their gradient while the engines generate the next chunk (rlkit/streaming.py)
            t_start = time.perf_counter()
            pending, seq_kls = [], []

            def train_part(part):
                seq_kls.append(_advantages(cfg, policy, part, adv_fn))
                pending.extend(policy.train_part(_train_items(cfg, part)))

            streamed = cfg.rollout.stream_chunks > 1
            c = collect(cfg, engine, processor, rows_src, p.scorer, group_filter, rng, step,
                         on_kept=train_part if streamed else None)
            samples, everything, result = c.samples, c.everything, c.result
            t_rollout, t_reward, seen, kept, rounds = c.t_rollout, c.t_reward, c.seen, c.kept, c.rounds
            if samples and not streamed:  # advantages over algorithm.mode_groups (batch-level ones see everything)
                seq_kls.append(_advantages(cfg, policy, samples, adv_fn))
            kl_metrics = _kl_metrics(cfg, seq_kls)
            # ---- reward health: one line per failing reward; a broken reward stops here, before the update
            health_metrics = health.step(step, result, samples, everything, lambda: ckpt.latest(p.out))

            # ---- rollout.sleep: engines free their memory for the update (colocated GPUs); the sync wakes them
            t0 = time.perf_counter()
            if can_sleep and not engine.sleep():  # asked once: a backend that cannot, never can
                can_sleep = False
                print("rlkit: rollout.sleep: this engine cannot free its memory here (vLLM's CPU build has no sleep "
                      "mode; the hf engine on a CPU has nothing to free); engines keep their memory")
            t_sleep = time.perf_counter() - t0

            # ---- update (skipped when the filter left nothing to train on); streamed: the wait for the parts
            # still in progress and the one optimizer step
            t0 = time.perf_counter()
            if not samples:
                train_metrics = {"train/update_skipped": 1.0}
            elif streamed:
                train_metrics = policy.train_finish(pending)
            else:
                train_metrics = policy.train_step(_train_items(cfg, samples))
            t_update = time.perf_counter() - t0

            # ---- sync: weights go policy rank 0 -> object store (once) -> every engine actor (never the driver)
            t0 = time.perf_counter()
            if samples:
                engine.update_weights(policy.state_dict())
            t_sync = time.perf_counter() - t0
            t_step = time.perf_counter() - t_start

            # ---- log
            sampled, n_all = sum(len(s.completion_ids) for s in everything), max(1, len(everything))
            tokens_total += sampled
            metrics = {**result.stats(), **health_metrics, **train_metrics, **kl_metrics, **mode_metrics.step(everything),
                       "mode/deep_ratio": deep_ratio_at(step, cfg.modes.deep_ratio, cfg.modes.schedule),
                       **{k: v for st in states.values() if hasattr(st, "metrics") for k, v in st.metrics().items()},
                       **group_filter.metrics(), "filter/groups_seen": seen, "filter/groups_kept": kept,
                       "filter/filtered_frac": 1 - kept / max(1, seen), "filter/refill_rounds": rounds,
                       "completion/tokens_mean": sampled / n_all,
                       "completion/truncated_frac": sum(s.finish_reason == "length" for s in everything) / n_all,
                       "tokens/sampled": sampled, "tokens/sampled_total": tokens_total,
                       "data/skipped_rows": rows_src.skipped, "reward/failures": len(result.failures),
                       "rollout/worker_restarts": engine.restarts,
                       "time/rollout_s": t_rollout, "time/reward_s": t_reward, "time/update_s": t_update,
                       "time/sync_s": t_sync, "time/sleep_s": t_sleep, "time/step_s": t_step}
            log.log_step(step, metrics, [s.log_record() for s in samples])
            last = {"step": step, **metrics}
            bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}", tokens=int(metrics["completion/tokens_mean"]))
            bar.update(1)
            if held_out and held_out.due(step):  # greedy held-out answers from the synced engine
                evaluation = held_out.run(tokens_total)
                log.log_step(step, evaluation, [])
                last.update(evaluation)

            # ---- checkpoint
            every = cfg.logging.save_every
            if step == cfg.max_steps or (every and step % every == 0):
                with ckpt.naming_a_full_disk(p.out, step):
                    staging = ckpt.staging_dir(p.out, step)
                    policy.save(str(staging))
                    (staging / REWARD_STATE).write_text(json.dumps({k: st.state_dict() for k, st in states.items()}))
                    final = ckpt.finalize(p.out, step, staging, {
                        "step": step, "data_position": stream.position, "rng": _jsonable_state(rng.getstate()),
                        "tokens_sampled_total": tokens_total, "base_model": p.base_model,
                        "group_filter": group_filter.state_dict(),
                        "mode_tokens_sampled_total": mode_metrics.state_dict(),
                        "skipped_rows": rows_src.skipped, "rollout_worker_restarts": engine.restarts,
                    }, keep=cfg.logging.keep_checkpoints)
                last["checkpoint"] = str(final)
    finally:
        bar.close()
        log.close()
        p.scorer.close()
        if p.resources.claim_lm is not None:
            p.resources.claim_lm.engine.close()
        for group in (engine, policy):
            group.close()
        placement.remove()
    return {**last, "time/startup_s": startup_s}


def _held_out(cfg: GRPOConfig, p: Prepared, engine, processor) -> HeldOutEval | None:
    """In-loop held-out evaluation (trainer.eval_every) on the rollout actor, which holds the current weights,
    graded by the accuracy reward of the run's scorer; None when off."""
    if not p.eval_rows:
        return None
    score = reward_score_fn(p.scorer, p.accuracy_reward, processor, cfg.data.system_prompt)
    return HeldOutEval(cfg, p.eval_rows, engine, processor, score)


def _advantages(cfg: GRPOConfig, policy, samples: list[Sample], adv_fn) -> torch.Tensor | None:
    """Set each sample's advantage over algorithm.mode_groups; with algorithm.kl_in_reward the rewards are first
    penalised by kl_coef * sum_t k1 (returned per sample for the metrics; None without it)."""
    import ray

    rewards_t = torch.tensor([s.reward for s in samples], dtype=torch.float32)
    seq_kl = None
    if cfg.algorithm.kl_in_reward:
        from rlkit.algorithms.kl import kl_penalized_rewards

        seq_kl = torch.tensor(ray.get(policy.leader.reference_kl.remote(
            [TrainItem(s.prompt_text, s.row.images, s.completion_ids, 0.0, []) for s in samples])))
        rewards_t = kl_penalized_rewards(rewards_t, seq_kl, cfg.algorithm.kl_coef)
    groups_t = advantage_groups(torch.tensor([s.group for s in samples]),
                                torch.tensor([MODES.index(s.mode) for s in samples]),
                                cfg.algorithm.mode_groups)  # prompt groups, or (prompt, mode) subgroups
    for s, a in zip(samples, adv_fn(rewards_t, groups_t, **cfg.algorithm.advantage_opts).tolist()):
        s.advantage = a
    return seq_kl


def _kl_metrics(cfg: GRPOConfig, seq_kls: list) -> dict:
    kls = [k for k in seq_kls if k is not None]
    if not kls:
        return {}
    mean = float(torch.cat(kls).mean())
    return {"kl/reward_seq_k1_mean": mean, "kl/reward_penalty_mean": cfg.algorithm.kl_coef * mean}


def _train_items(cfg: GRPOConfig, samples: list[Sample]) -> list[TrainItem]:
    use_rollout_lp = cfg.rollout.temperature == 1.0  # engine logprobs are untempered
    return [TrainItem(s.prompt_text, s.row.images, s.completion_ids, s.advantage,
                      s.rollout_logprobs if use_rollout_lp else []) for s in samples]


def reward_states(scorer: RewardScorer, resume_from: pathlib.Path | None) -> dict:
    """Reward-side state (`fn.state`: RLPR's baseline cache), by reward name: reset, then restored on resume."""
    saved = {}
    if resume_from is not None and (resume_from / REWARD_STATE).exists():
        saved = json.loads((resume_from / REWARD_STATE).read_text())
    out, seen = {}, set()
    for plan in scorer.plans:
        st = getattr(plan.fn, "state", None)
        if st is None or not hasattr(st, "state_dict") or id(st) in seen:
            continue
        seen.add(id(st))
        if hasattr(st, "reset"):
            st.reset()  # a module-level state may hold a previous run's cache (another model)
        if plan.name in saved:
            st.load_state_dict(saved[plan.name])
        out[plan.name] = st
    return out


def _jsonable_state(state):
    return [_jsonable_state(x) for x in state] if isinstance(state, (tuple, list)) else state


def _tuple(state):
    return tuple(_tuple(x) for x in state) if isinstance(state, list) else state
