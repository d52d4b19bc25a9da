"""Shared test set-up: one thread per process, offline, vLLM in-process; tiny models built once per session."""

from rlkit.runtime_env import apply_defaults  # noqa: E402  (before torch/vLLM/Ray)

apply_defaults()

import sys  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def vqa_texts():
    from rlkit.data.easy_vqa import load_easy_vqa

    ds = load_easy_vqa("train", limit=2000, seed=0)
    return list(ds["prompt"]) + list(ds["answer"])


@pytest.fixture(scope="session")
def tiny_vlm_path(tmp_path_factory, vqa_texts):
    from rlkit.models.loading import build_tiny

    return str(build_tiny("vlm", tmp_path_factory.mktemp("tiny_vlm"), texts=vqa_texts))


@pytest.fixture(scope="session")
def tiny_text_path(tmp_path_factory):
    from rlkit.data.arithmetic import load_arithmetic
    from rlkit.models.loading import build_tiny

    ds = load_arithmetic("train", limit=500)
    return str(build_tiny("text", tmp_path_factory.mktemp("tiny_text"), texts=list(ds["prompt"]) + list(ds["answer"])))


@pytest.fixture
def ray_stopped():
    """No Ray in this process when the test starts (an earlier in-process run may have left its local Ray up), so
    a test that asserts Ray was never started checks the code under test, not the tests before it."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        from rlkit.distributed.orchestration import shutdown

        shutdown()  # not ray.shutdown(): what rlkit holds of Ray goes first (else the process may exit)
