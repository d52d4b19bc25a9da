"""The process environment rlkit runs with by default, in one place (scripts, the CLI and the tests apply it).

Imported before torch/vLLM/Ray so the values take effect; each is only a default (`setdefault`), so a user's
own setting wins. Why each one: docs/install.md ("Environment variables").
"""
import os

DEFAULTS = {
    "OMP_NUM_THREADS": "1",  # one torch thread per process: 2 threads on 2 cores were 10-30x slower
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",  # defaults never touch the network
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # engine core in-process: faster start, less memory
    "RAY_AUTH_MODE": "disabled",  # local Ray without a token file in the home folder
    "RAY_USAGE_STATS_ENABLED": "0",
    # Ray starts its workers 15 nice levels below the driver: the rollout and policy actors, which do all of a
    # step's work, then lose the CPU to any other process (docs/performance.md)
    "RAY_worker_niceness": "0",
}


def apply_defaults(**extra: str) -> None:
    """`os.environ.setdefault` for DEFAULTS (and `extra`)."""
    for k, v in {**DEFAULTS, **extra}.items():
        os.environ.setdefault(k, v)
