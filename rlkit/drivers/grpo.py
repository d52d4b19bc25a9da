"""The GRPO driver: rollout -> score -> advantage -> update -> sync -> log, once per step.

`run_grpo` = `setup` / `train` / `cleanup`. Everything that can be checked before a worker starts is checked
in `prepare` (config and registered names, data columns, reward names, model path: objects built by
rlkit/run/build.py); `setup` then restores the run's state and has Ray place the policy ranks and the rollout
engines; `train` is the loop on one screen; `cleanup` closes whatever `setup` got to. See docs/ARCHITECTURE.md.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import random

import torch

from rewards import RewardScorer
from rlkit.run import checkpoint as ckpt
from rlkit.algorithms import advantage_groups, get_advantage_fn
from rlkit.step.ahead import Ahead, async_metrics
from rlkit.step.collect import StepRows, collect
from rlkit.config import GRPOConfig, dump_config
from rlkit.data import PromptStream
from rlkit.data.checks import check_rows
from rlkit.drivers.cold_start import cold_rows, run_cold_start
from rlkit.drivers.evaluate import HeldOutEval, accuracy_reward_name, load_eval_rows, reward_score_fn
from rlkit.step.filters import get_filter
from rlkit.step.mode_metrics import ModeMetrics
from rlkit.models.loading import load_processor, tokenizer_of
from rlkit.step.modes import deep_ratio_at
from rlkit.records import MODES, Sample, TrainItem
from rlkit.step.reward_health import RewardHealth
from rlkit.run.rundir import GRPO_RESUMABLE, open_run
from rlkit.run.build import (PolicyLogprobs, RewardResources, check_kv_cache, engine_options,  # noqa: F401
                             load_prompt_data, resolve_model, reward_scorer, reward_specs, row_texts, worker_settings)
from rlkit.run.checks import check_grpo
from rlkit.run.labeler import labeler_config, labeler_resources
from rlkit.run.timing import timed
from rlkit.run.runlog import RunLog

REWARD_STATE = "reward_state.json"


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


def prepare(cfg: GRPOConfig, resume: bool = False, overwrite: bool = False, on_checked=None) -> Prepared:
    """Everything checked before Ray, then the model resolved; `on_checked()` (Ray and the actors start in a
    thread: rlkit/distributed/warm_start.py) is called once the checks have passed, before a tiny model is built."""
    check_grpo(cfg)
    from rlkit.distributed.orchestration import check_local_capacity

    check_local_capacity(cfg.ray.address, cfg.ray.num_cpus, *_asks(cfg))  # CPUs a local Ray will have, before it
    if not cfg.ray.address:  # every engine on this machine
        check_kv_cache(cfg.rollout, cfg.rollout.num_workers)
    out = pathlib.Path(cfg.output_dir)
    last = open_run(cfg, resume=resume, overwrite=overwrite, allowed=GRPO_RESUMABLE)  # rlkit/run/rundir.py
    out.mkdir(parents=True, exist_ok=True)
    resources = RewardResources()
    scorer = reward_scorer(cfg, strict=False, resources=resources)  # strict_rewards: per step, by RewardHealth
    accuracy_reward = accuracy_reward_name(cfg.trainer.accuracy_reward, scorer.names)
    needs_labeler = any("labeler" in plan.needs for plan in scorer.plans)
    if needs_labeler:
        labeler_config(cfg.labeler)  # a bad `labeler:` key fails now, naming itself
    ds = load_prompt_data(cfg)
    scan = check_rows(ds, limit=cfg.data.check_rows, on_bad_row=cfg.data.on_bad_row,
                      mode_column=cfg.modes.mode_column)  # every row a step may draw, before Ray (data/checks.py)
    for line in scan.notices():  # bad rows left out (data.on_bad_row: skip); a slow scan's time
        print(line)
    eval_rows = load_eval_rows(cfg) if cfg.trainer.eval_every else []
    cs = cfg.cold_start  # supervised steps before RL (rlkit/drivers/cold_start.py); its rows checked before Ray
    train = [dict(r) for r in ds] if cs.steps else []
    cold = cold_rows(cfg, cs, train) if cs.steps else []
    early = cfg.model.path.startswith("tiny:") and not cs.steps  # a cold start would take the actors' CPU
    if on_checked and early:  # the build overlaps Ray's start
        on_checked()
    base = run_cold_start(cfg, cs, cold, train, out, who="rlkit grpo") if cs.steps else \
        resolve_model(cfg.model, out, lambda: row_texts(ds))
    if on_checked and not early:  # after resolve_model's path check (and the cold start)
        on_checked()
    if needs_labeler:  # path: policy = a frozen copy of the initial policy, in this process
        lab = labeler_resources(cfg.labeler, base, cfg.rollout, cfg.seed)
        resources.labeler, resources.claim_lm = lab.labeler, lab.claim_lm
    dump_config(cfg, out / "config.yaml")
    return Prepared(cfg, out, ds, scorer, base, str(last) if last else base, last, resources, accuracy_reward,
                    eval_rows, rows=scan.usable, bad_rows=len(scan.bad))


def _asks(cfg: GRPOConfig) -> tuple:
    """(placement, strategy, workers, ranks, one worker's resources, one rank's): what the run asks of Ray."""
    r, t = cfg.rollout, cfg.trainer
    return (cfg.ray.placement, cfg.ray.placement_strategy, r.num_workers, t.num_ranks,
            {"CPU": r.num_cpus, "GPU": r.num_gpus}, {"CPU": t.num_cpus, "GPU": t.num_gpus})


def _placement(cfg: GRPOConfig):
    """The placement groups of ray.placement (rlkit/distributed/orchestration.py), reserved before any actor starts, after
    checking that the actors fit the cluster at all (every placement; a `ray.address` cluster may grow first)."""
    from rlkit.distributed.orchestration import place

    return place(*_asks(cfg), cfg.ray.placement_timeout_s, grow=bool(cfg.ray.address))


def _engines(cfg: GRPOConfig, model_path: str, placement, spawn=None):
    """rollout.num_workers engine actors as one engine (rlkit/distributed/pool.py); worker i in its placement bundle.
    `spawn`: `orchestration.spawn` or `EarlyStart.spawn` (rlkit/distributed/warm_start.py)."""
    from rlkit.distributed.orchestration import EngineActor
    from rlkit.distributed.orchestration import spawn as new_actor
    from rlkit.distributed.pool import EnginePool

    r, spawn = cfg.rollout, spawn or new_actor
    return EnginePool(lambda i: spawn(EngineActor, r.engine, model_path=model_path, num_cpus=r.num_cpus,
                                      num_gpus=r.num_gpus, bundle=placement.worker(i),
                                      **engine_options(r, cfg.seed)),
                      r.num_workers, r.max_retries, r.timeout_s)


# The policy ranks' only tensor-valued result is the state dict of the weight sync. Ray pickles a torch tensor
# through torch's own reducer (a copy of its bytes into the pickle stream, ~10 ms a sync on the tiny model);
# zero-copy serialisation passes each tensor's memory as a pickle-5 out-of-band buffer instead (one copy into
# the object store, read in place by the engine actors, which copy it into vLLM's weights). A tied output head
# then arrives as its own buffer (no shared storage to dedupe); vLLM loads it into the shared weight again
# (tests/test_rollout_vllm.py::test_tied_head_sent_without_shared_storage).
POLICY_ENV = {"RAY_ENABLE_ZERO_COPY_TORCH_TENSORS": "1"}


def _policy(cfg: GRPOConfig, model_path: str, base_model: str, out: pathlib.Path, placement, spawn=None):
    """trainer.num_ranks policy rank actors (rlkit/distributed/pool.py); rank 0 leads; rank j in its placement bundle.
    `spawn`: `orchestration.spawn` or `EarlyStart.spawn` (rlkit/distributed/warm_start.py)."""
    from rlkit.distributed.orchestration import spawn as new_actor
    from rlkit.distributed.pool import PolicyGroup, PolicyRank

    spawn = spawn or new_actor
    t, settings = cfg.trainer, worker_settings(cfg, reference_path=base_model)  # rlkit/policy/settings.py
    return PolicyGroup(lambda rank: spawn(PolicyRank, model_path, settings, num_cpus=t.num_cpus, num_gpus=t.num_gpus,
                                          bundle=placement.rank(rank), env=POLICY_ENV),
        t.num_ranks, where=lambda: ckpt.last_note(out, model_path), strategy=t.strategy, call_timeout_s=t.timeout_s)


def run_grpo(cfg: GRPOConfig, resume: bool = False, overwrite: bool = False) -> dict:
    """Run GRPO as configured; returns a summary (last metrics, checkpoint path). A new run refuses an
    output_dir that holds another one unless `overwrite` (moved aside); see rlkit/run/rundir.py."""
    run = Run(cfg)
    try:
        setup(run, resume, overwrite)
        last = train(run)
    finally:
        cleanup(run)
    return {**last, "time/startup_s": run.startup_s}


def train(run: Run) -> dict:
    """The loop: collect, advantages, update, sync, log, evaluate, checkpoint; returns the last step's record."""
    cfg, last = run.cfg, {}
    if run.held_out and run.start == 0:  # the curve's starting point: the initial policy
        run.log.log_step(0, run.held_out.run(run.tokens_total), [])
    ahead = run.ahead = _ahead(run)  # rollout.max_staleness > 0: later batches are collected while a step trains
    for step in range(run.start + 1, cfg.max_steps + 1):
        phases: dict[str, float] = {}
        with timed(phases, "step"):  # from the first request to the end of the sync
            # rollout + rewards (the group filter drops flat groups, fresh prompts refill); advantages per group.
            # Streamed (rollout.stream_chunks > 1): each chunk's groups already train while the next generates
            update = Update(run)
            c = ahead.next(step) if ahead else collect(
                cfg, run.engine, run.processor, run.rows, run.p.scorer, run.group_filter, run.rng, step,
                on_kept=update.part if update.streamed else None)
            if c.samples and not update.streamed:
                update.advantages(c.samples)
            # reward health: one line per failing reward; a broken reward stops here, before the update
            health = run.health.step(step, c.result, c.samples, c.everything, lambda: ckpt.latest(run.p.out))
            with timed(phases, "sleep"):
                sleep_engines(run)  # rollout.sleep: engines free their memory for the update; the sync wakes them
            with timed(phases, "update"):
                trained = update.finish(c.samples)
            with timed(phases, "sync"):  # policy rank 0 -> object store (once) -> every engine actor
                ref = run.policy.state_dict() if c.samples else None
                if ahead:  # reaches the engines when a batch first needs it (at once before an eval or checkpoint)
                    ahead.trained(step, ref)
                elif ref is not None:
                    run.engine.update_weights(ref)
        metrics = step_metrics(run, step, c, {**health, **trained, **update.kl_metrics(),
                                              **async_metrics(ahead, step, c)}, phases)
        run.log.log_step(step, metrics, [s.log_record() for s in c.samples])
        last = {"step": step, **metrics}
        run.bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}", tokens=int(metrics["completion/tokens_mean"]))
        run.bar.update(1)
        if run.held_out and run.held_out.due(step):  # greedy held-out answers from the synced engine
            evaluation = run.held_out.run(run.tokens_total)
            run.log.log_step(step, evaluation, [])
            last.update(evaluation)
        if step == cfg.max_steps or (cfg.logging.save_every and step % cfg.logging.save_every == 0):
            last["checkpoint"] = save_checkpoint(run, step)
        if ahead:
            ahead.release(step)  # after the evaluation and the checkpoint: the thread may sample and score with it
    return last


# ----------------------------------------------------------------------------------------------- set-up, teardown
@dataclasses.dataclass
class Run:
    """What the loop carries from step to step; `setup` fills it, `cleanup` closes what it holds."""

    cfg: GRPOConfig
    p: Prepared | None = None
    start: int = 0  # the last completed step (resumed) or 0
    rng: random.Random | None = None
    stream: PromptStream | None = None
    rows: StepRows | None = None  # the prompt rows of each step (skipped bad rows counted)
    tokens_total: int = 0  # completion tokens sampled over the run
    mode_metrics: ModeMetrics | None = None
    adv_fn: object = None  # the registered advantage estimator
    group_filter: object = None
    reward_states: dict = dataclasses.field(default_factory=dict)  # `reward_states`: saved with checkpoints
    health: RewardHealth | None = None
    log: RunLog | None = None
    placement: object = None  # orchestration.Placement
    policy: object = None  # pool.PolicyGroup
    engine: object = None  # pool.EnginePool
    processor: object = None
    held_out: HeldOutEval | None = None
    can_sleep: bool = False  # rollout.sleep, until the engines say they cannot
    startup_s: float = 0.0  # from the actors' start to all of them ready
    ahead: object = None  # rlkit.step.ahead.Ahead (rollout.max_staleness > 0)
    bar: object = None


def setup(run: Run, resume: bool, overwrite: bool) -> None:
    """Checks, data, model and rewards (`prepare`, before Ray); the run's state (restored on --resume); then the
    placement, the policy ranks and the engines, waited for until ready."""
    from tqdm import tqdm

    from rlkit.distributed.orchestration import init_ray, wait_ready
    from rlkit.distributed.warm_start import EarlyStart, grpo_plan, load_quietly

    cfg = run.cfg
    # Ray, the placement and bare actors start in a thread once prepare's checks pass (rlkit/distributed/warm_start.py)
    early = EarlyStart(lambda: init_ray(cfg.ray.address, cfg.ray.num_cpus, cfg.ray.loopback),
                       lambda: _placement(cfg), grpo_plan(cfg, POLICY_ENV))
    try:
        run.p = p = prepare(cfg, resume, overwrite, on_checked=early.start)
    except BaseException:
        early.abandon()
        raise
    state = ckpt.read_run_state(p.resume_from) if p.resume_from else {}
    run.start = state.get("step", 0)
    run.rng = random.Random(cfg.seed)
    if "rng" in state:
        run.rng.setstate(_tuple(state["rng"]))
    run.stream = PromptStream(p.data, seed=cfg.seed, shuffle=cfg.data.shuffle,
                              position=state.get("data_position", 0), rows=p.rows)
    run.rows = StepRows(cfg, run.stream)
    run.rows.skipped = state.get("skipped_rows", p.bad_rows)
    run.rows.unfit = set(state.get("unfit_rows", []))
    run.tokens_total = state.get("tokens_sampled_total", 0)
    run.mode_metrics = ModeMetrics(p.accuracy_reward, state.get("mode_tokens_sampled_total"))
    run.adv_fn = get_advantage_fn(cfg.algorithm.advantage)
    run.group_filter = get_filter(cfg.algorithm.group_filter, **cfg.algorithm.group_filter_opts)
    run.group_filter.load_state_dict(state.get("group_filter", {}))
    run.reward_states = reward_states(p.scorer, p.resume_from)
    run.health = RewardHealth.from_config(cfg, p.scorer)  # failure summaries, the stop rule, nothing to learn
    run.log = RunLog(p.out, tensorboard=cfg.logging.tensorboard, log_samples=cfg.logging.log_samples,
                     resume_step=run.start if p.resume_from else None)

    run.placement = early.wait()  # Ray up and the placement reserved by the early start (None: not started)
    init_ray(cfg.ray.address, cfg.ray.num_cpus, cfg.ray.loopback)
    run.placement = run.placement or _placement(cfg)
    run.policy = _policy(cfg, p.start_model, p.base_model, p.out, run.placement, spawn=early.spawn)
    run.engine = _engines(cfg, p.start_model, run.placement, spawn=early.spawn)
    early.close()  # bare actors the pools did not take
    run.processor = load_quietly(load_processor, p.start_model)  # while the actors start; collector paused
    run.engine.restarts = state.get("rollout_worker_restarts", 0)
    p.resources.policy = PolicyLogprobs(run.policy, tokenizer_of(run.processor))
    p.scorer.start()  # reward worker processes warm up while the engine starts
    if p.resume_from:
        run.policy.load_trainer_state(str(p.resume_from))
    run.held_out = _held_out(cfg, p, run.engine, run.processor)
    run.can_sleep = cfg.rollout.sleep
    # the bar (and its rate, its time left) starts with the first step
    run.startup_s = wait_ready([*run.policy.ranks, *run.engine.actors], f"{cfg.trainer.num_ranks} policy rank(s) "
                               f"and {cfg.rollout.num_workers} {cfg.rollout.engine} rollout engine(s)")
    run.bar = tqdm(total=cfg.max_steps, initial=run.start, disable=not cfg.logging.progress, desc="grpo", unit="step")


def cleanup(run: Run) -> None:
    """Close what `setup` opened, newest first, whatever it got to: the bar, the log, the reward workers and
    resources (a claim LM's engine), the engines, the policy ranks, the placement groups."""
    for close in (run.ahead and run.ahead.close,  # the thread collecting ahead (rollout.max_staleness), first
                  run.bar and run.bar.close, run.log and run.log.close, run.p and run.p.scorer.close,
                  run.p and run.p.resources.close, run.engine and run.engine.close, run.policy and run.policy.close,
                  run.placement and run.placement.remove):
        if close:
            close()


# ----------------------------------------------------------------------------------------------- one step
class Update:
    """One step's update: the advantages of its samples (whole, or streamed part by part into the policy
    ranks, which accumulate gradients while the engines generate the next chunk: rlkit/policy/streaming.py), then
    `finish`: the policy's optimizer step (skipped when the filter left nothing to train on)."""

    def __init__(self, run: Run):
        self.run, self.streamed = run, run.cfg.rollout.stream_chunks > 1
        self.pending: list = []  # streamed parts' calls, waited for by `finish`
        self.seq_kls: list = []  # per-sample KL penalties (algorithm.kl_in_reward)

    def advantages(self, samples: list[Sample]) -> None:
        self.seq_kls.append(_advantages(self.run.cfg, self.run.policy, samples, self.run.adv_fn))

    def part(self, samples: list[Sample]) -> None:
        self.advantages(samples)
        self.pending.extend(self.run.policy.train_part(_train_items(self.run.cfg, samples)))

    def finish(self, samples: list[Sample]) -> dict:
        if not samples:
            return {"train/update_skipped": 1.0}
        if self.streamed:  # the wait for the parts still in progress and the one optimizer step
            return self.run.policy.train_finish(self.pending)
        return self.run.policy.train_step(_train_items(self.run.cfg, samples))

    def kl_metrics(self) -> dict:
        return _kl_metrics(self.run.cfg, self.seq_kls)


def sleep_engines(run: Run) -> None:
    """rollout.sleep: ask the engines to free their memory (colocated GPUs); asked once when they cannot."""
    if run.can_sleep and not run.engine.sleep():
        run.can_sleep = False
        print("rlkit: rollout.sleep: this engine cannot free its memory here (vLLM's CPU build has no sleep "
              "mode; the hf engine on a CPU has nothing to free); engines keep their memory")


def step_metrics(run: Run, step: int, c, parts: dict, phases: dict) -> dict:
    """The step's metrics record (metrics.jsonl): rewards, `parts` (health, update, KL), modes, filter,
    completions, tokens (adds this step's to `run.tokens_total`), data, failures, restarts, phase times."""
    cfg, everything = run.cfg, c.everything
    snap = getattr(c, "snapshot", None) or state_metrics(run)  # collected ahead: as it stood after this batch
    sampled, n_all = sum(len(s.completion_ids) for s in everything), max(1, len(everything))
    run.tokens_total += sampled
    return {**c.result.stats(), **parts, **run.mode_metrics.step(everything),
            "mode/deep_ratio": deep_ratio_at(step, cfg.modes.deep_ratio, cfg.modes.schedule),
            **snap["reward_states"], **snap["filter"], "filter/groups_seen": c.seen, "filter/groups_kept": c.kept,
            "filter/filtered_frac": 1 - c.kept / max(1, c.seen), "filter/refill_rounds": c.rounds,
            "completion/tokens_mean": sampled / n_all,
            "completion/truncated_frac": sum(s.finish_reason == "length" for s in everything) / n_all,
            "tokens/sampled": sampled, "tokens/sampled_total": run.tokens_total,
            "data/skipped_rows": snap["skipped_rows"], "reward/failures": len(c.result.failures),
            "rollout/worker_restarts": run.engine.restarts,
            "time/rollout_s": c.t_rollout, "time/reward_s": c.t_reward,
            **{f"time/{k}_s": phases[k] for k in ("update", "sync", "sleep", "step")}}


def state_metrics(run: Run) -> dict:
    """Metrics of the state that collecting a batch changes (reward state, group filter, skipped rows)."""
    return {"reward_states": {k: v for st in run.reward_states.values() if hasattr(st, "metrics")
                              for k, v in st.metrics().items()},
            "filter": run.group_filter.metrics(), "skipped_rows": run.rows.skipped}


def _ahead(run: Run):
    """rollout.max_staleness > 0: the `Ahead` collector (rlkit/step/ahead.py), its RLPR scoring gated; else None."""
    cfg = run.cfg
    if not cfg.rollout.max_staleness:
        return None
    saves = cfg.logging.save_every
    ahead = Ahead(cfg.rollout.max_staleness, run.start, cfg.max_steps,
                  is_sync=lambda s: (s == cfg.max_steps or bool(saves and s % saves == 0)
                                     or bool(run.held_out and run.held_out.due(s))),
                  collect=lambda step: collect(cfg, run.engine, run.processor, run.rows, run.p.scorer,
                                               run.group_filter, run.rng, step),
                  load=run.engine.update_weights, snapshot=lambda: state_metrics(run))
    if run.p.resources.policy is not None:
        run.p.resources.policy = ahead.gated(run.p.resources.policy)
    return ahead


def run_state(run: Run, step: int) -> dict:
    """checkpoints/step_N/run_state.json: what --resume restores besides the weights and the optimizer."""
    return {"step": step, "data_position": run.stream.position, "rng": _jsonable_state(run.rng.getstate()),
            "tokens_sampled_total": run.tokens_total, "base_model": run.p.base_model,
            "group_filter": run.group_filter.state_dict(), "mode_tokens_sampled_total": run.mode_metrics.state_dict(),
            "skipped_rows": run.rows.skipped, "unfit_rows": sorted(run.rows.unfit),
            "rollout_worker_restarts": run.engine.restarts}


def save_checkpoint(run: Run, step: int) -> str:
    """checkpoints/step_N, written aside and renamed when complete (rlkit/run/checkpoint.py); returns its path."""
    out = run.p.out
    with ckpt.naming_a_full_disk(out, step):
        staging = ckpt.staging_dir(out, step)
        run.policy.save(str(staging))
        (staging / REWARD_STATE).write_text(json.dumps({k: st.state_dict() for k, st in run.reward_states.items()}))
        return str(ckpt.finalize(out, step, staging, run_state(run, step), keep=run.cfg.logging.keep_checkpoints))


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
    rewards_t = torch.tensor([s.reward for s in samples], dtype=torch.float32)
    seq_kl = None
    if cfg.algorithm.kl_in_reward:
        from rlkit.algorithms.kl import kl_penalized_rewards

        seq_kl = torch.tensor(policy.reference_kl(
            [TrainItem(s.prompt_text, s.row.images, s.completion_ids, 0.0, []) for s in samples]))
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
