"""The GRPO loop's helpers: the phase timer, and a teardown that closes whatever set-up got to."""
import time

import pytest

from rlkit.config import GRPOConfig
from rlkit.drivers.grpo import Run, cleanup
from rlkit.run.timing import timed


def test_timed_adds_into_one_dict_also_when_the_block_raises():
    phases = {}
    with timed(phases, "update"):
        time.sleep(0.01)
    with pytest.raises(RuntimeError), timed(phases, "update"):
        time.sleep(0.01)
        raise RuntimeError("x")
    with timed(phases, "sync"):
        pass
    assert set(phases) == {"update", "sync"} and phases["update"] >= 0.02 and phases["sync"] < phases["update"]


def test_cleanup_closes_what_setup_got_to_newest_first():
    closed = []

    class Part:
        def __init__(self, name):
            self.name = name

        def close(self):
            closed.append(self.name)

        remove = close

    run = Run(GRPOConfig())
    cleanup(run)  # set-up failed before anything was opened: nothing to close
    run.log, run.policy, run.placement = Part("log"), Part("policy"), Part("placement")
    cleanup(run)  # set-up failed after the policy ranks started (no engines, no bar)
    assert closed == ["log", "policy", "placement"]
