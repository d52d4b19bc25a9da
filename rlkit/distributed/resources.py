"""Does the run fit the Ray cluster? Pure arithmetic over what the actors ask and what the nodes hold (no Ray).

The GRPO driver starts `rollout.num_workers` engine actors (each `rollout.num_cpus` / `rollout.num_gpus`) and
`trainer.num_ranks` policy ranks (each `trainer.num_cpus` / `trainer.num_gpus`); nothing else it starts holds
Ray resources (reward workers are plain processes, a labeler lives in the driver). Ray would queue an actor that
no node can hold forever, silently; `capacity_problem` finds such a run before any actor starts
(rlkit/distributed/orchestration.py `place`, every `ray.placement`), from two conditions that every placement needs:

- the sum over all actors (or bundles) of each resource is at most the cluster's total;
- every actor (with `ray.placement` colocate/separate: every bundle) fits on one node by itself;
  STRICT_PACK needs one node for all the bundles of a group, STRICT_SPREAD one node per bundle.

Both are necessary, not sufficient (packing can still fail); the rest is Ray's, with placement groups bounded by
`ray.placement_timeout_s` and plain actors reported while they wait (`orchestration.StartWatch`).
"""
from __future__ import annotations

import os

KINDS = ("CPU", "GPU")
_EPS = 1e-9


class ResourceError(RuntimeError):
    """What the run asks Ray for cannot fit the cluster: one line naming the ask, what exists, and the
    config keys to change (`rlkit` prints it as one line, like a config error; rlkit/cli.py)."""


def capacity_problem(num_workers: int, num_ranks: int, rollout: dict, trainer: dict, nodes: list[dict],
                     groups: list | None = None, strategy: str = "PACK", kinds: tuple = KINDS,
                     where: str = "the cluster has") -> str | None:
    """A one-line reason why `num_workers` actors of `rollout` resources and `num_ranks` of `trainer` (e.g.
    {"CPU": 1, "GPU": 0.5}) cannot all run on `nodes` (each node's total resources, as `ray.nodes()` reports),
    or None. `groups`: the placement groups' bundle lists (`orchestration.bundles`; None or []: no groups).
    `kinds`: the resources compared (only "CPU" before a local Ray has counted the GPUs)."""
    KINDS = kinds  # noqa: N806  (the resources this call compares and prints)

    def _fmt(res: dict) -> str:
        return "{" + ", ".join(f"{k}: {res.get(k, 0):g}" for k in KINDS) + "}"

    def _sum(items) -> dict:
        return {k: sum(r.get(k, 0) for r in items) for k in KINDS}

    asked = (f"rollout.num_workers {num_workers} x {_fmt(rollout)} (rollout.num_cpus/num_gpus) + "
             f"trainer.num_ranks {num_ranks} x {_fmt(trainer)} (trainer.num_cpus/num_gpus)")
    total = _sum(nodes)
    have = f"{where} {_fmt(total)} on {len(nodes)} node(s)"
    fix = ("lower rollout.num_cpus/num_gpus, trainer.num_cpus/num_gpus, rollout.num_workers or trainer.num_ranks, "
           "or give Ray more (ray.num_cpus for a local Ray, or more nodes)")
    want = _sum([rollout] * num_workers + [trainer] * num_ranks)
    over = [k for k in KINDS if want[k] > total[k] + _EPS]
    if over:
        return f"the run asks Ray for {_fmt(want)} in all: {asked}; {have}. To fix: {fix}"
    largest = {k: max([n.get(k, 0) for n in nodes] or [0]) for k in KINDS}
    units = [(f"one placement bundle of ray.placement (group {g}) asks {_fmt(b)}", b)
             for g, group in enumerate(groups or []) for b in group]
    if not groups:
        units = [(f"one rollout worker asks {_fmt(rollout)} (rollout.num_cpus/num_gpus)", rollout)] * bool(num_workers)
        units += [(f"one policy rank asks {_fmt(trainer)} (trainer.num_cpus/num_gpus)", trainer)] * bool(num_ranks)
    for what, res in units:
        if any(res.get(k, 0) > largest[k] + _EPS for k in KINDS):
            return f"{what}, but no node has that much: the largest has {_fmt(largest)} ({have}). To fix: {fix}"
    for g, group in enumerate(groups or []):
        if strategy == "STRICT_PACK":
            need = _sum(group)
            if not any(all(need[k] <= n.get(k, 0) + _EPS for k in KINDS) for n in nodes):
                return (f"ray.placement_strategy STRICT_PACK puts placement group {g} ({_fmt(need)} in all) on one "
                        f"node, but the largest has {_fmt(largest)}. To fix: use PACK, or {fix}")
        if strategy == "STRICT_SPREAD" and len(group) > len(nodes):
            return (f"ray.placement_strategy STRICT_SPREAD puts each of the {len(group)} bundles of placement group "
                    f"{g} on its own node, but the cluster has {len(nodes)} node(s). To fix: use SPREAD or PACK")
    return None


def kv_cache_problem(engine: str, num_gpus: float, kv_cache_gib: float, engines: int, available: int) -> str | None:
    """A one-line reason why `engines` vLLM CPU engines on this machine cannot have the KV cache asked for, or None.

    Each CPU engine allocates its whole cache when it starts; one that asks for more than the machine has fails
    there, inside its actor, and the engine pool restarts it `rollout.max_retries` times before the run stops. The
    size asked is `rollout.kv_cache_gib`, or `VLLM_CPU_KVCACHE_SPACE` (whole GiB), which vLLM lets win; 0 (sized
    by the engine, at most 1 GiB) and GPU engines are not checked. `available`: bytes the machine has free for it."""
    env = os.environ.get("VLLM_CPU_KVCACHE_SPACE", "")
    gib = float(env) if env.strip().isdigit() else kv_cache_gib
    if engine != "vllm" or num_gpus > 0 or gib <= 0 or engines * gib * (1 << 30) <= available:
        return None
    asked = "VLLM_CPU_KVCACHE_SPACE" if env.strip().isdigit() else "config key 'rollout.kv_cache_gib'"
    return (f"{asked}: {engines} vLLM CPU engine(s) x {gib:g} GiB of KV cache do not fit the {available / (1 << 30):.1f}"
            f" GiB of memory this machine has available; ask for less (rollout.kv_cache_gib 0 sizes it to the run)")


def available_memory() -> int:
    """Bytes of memory this machine can give a new allocation without swapping (MemAvailable)."""
    import psutil

    return int(psutil.virtual_memory().available)
