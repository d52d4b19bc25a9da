"""Ray placement: start or join Ray, and put the policy worker and rollout engine in actors.

The only modules (with rlkit/pool.py and the drivers) that import Ray. Local runs bind every Ray service to
127.0.0.1 and turn off its dashboard and token auth (`init_ray`); `ray.address` joins an existing cluster
(`ray start --head` on the head node, docs/scaling.md).
Every actor gets one torch/OpenMP thread per reserved CPU (2-core machines are 10-30x slower otherwise).
"""
from __future__ import annotations

import os

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def actor_env(num_cpus: float, extra: dict | None = None) -> dict:
    threads = str(max(1, int(num_cpus)))
    env = {k: threads for k in THREAD_ENV}
    env.update({
        "TOKENIZERS_PARALLELISM": "false",
        "VLLM_ENABLE_V1_MULTIPROCESSING": os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "0"),
        "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
        "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"),
        "TRANSFORMERS_VERBOSITY": os.environ.get("TRANSFORMERS_VERBOSITY", "error"),
        "HF_HUB_DISABLE_PROGRESS_BARS": os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
    })
    env.update(extra or {})
    return env


def init_ray(address: str = "", num_cpus: int = 0, loopback: bool = True) -> None:
    """Join the cluster at `address`, or start a local Ray (`num_cpus`, 0: all cores) without a dashboard.

    `loopback` (local Ray only): every Ray service (GCS, raylet, object manager, workers, runtime-env agent)
    listens on 127.0.0.1 only. Ray 2.60 turns `_node_ip_address="127.0.0.1"` into the machine's address
    (`services.resolve_ip_for_localhost`) and its servers then listen on every interface; only its
    single-machine mode (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, read into `ray_constants.ENABLE_RAY_CLUSTER`
    when Ray is imported) uses the loopback address as the node address, so both are set here.
    tests/test_scale.py checks the listening sockets.
    """
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_worker_niceness", "0")  # actors at the driver's priority (runtime_env.py)
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        if loopback:
            from ray._private import ray_constants

            os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # inherited by every Ray process started here
            ray_constants.ENABLE_RAY_CLUSTER = False  # Ray may have been imported before the line above
        ray.init(
            address="local",  # a new local instance even when another user's cluster runs on this machine
            num_cpus=num_cpus or os.cpu_count(),
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            log_to_driver=True,
            configure_logging=False,
        )


def spawn(cls, *args, num_cpus: float = 1.0, num_gpus: float = 0.0, env: dict | None = None, **kwargs):
    """`cls(*args, **kwargs)` inside a Ray actor with `num_cpus` (and `num_gpus`) reserved and its thread env set.
    Ray makes only the reserved GPUs visible to the actor (CUDA_VISIBLE_DEVICES)."""
    import ray

    actor_cls = ray.remote(cls).options(
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        runtime_env={"env_vars": actor_env(num_cpus, env)},
        max_concurrency=1,
    )
    return actor_cls.remote(*args, **kwargs)


def shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


class EngineActor:
    """A rollout engine (`rollout.make_engine(kind, ...)`) as the body of a Ray actor."""

    def __init__(self, kind: str, **kwargs):
        import torch

        from rollout import make_engine

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        self.engine = make_engine(kind, **kwargs)

    def generate(self, requests, sampling):
        return self.engine.generate(requests, sampling)

    def update_weights(self, state_dict) -> None:
        self.engine.update_weights(state_dict)

    def close(self) -> None:
        self.engine.close()
