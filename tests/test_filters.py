"""Group filters (rlkit/step/filters.py): the std-EMA filter against hand-derived numbers, refill calls within a
step, the state round trip, dynamic sampling's all-equal rule, and the registry."""
import json
import pickle

import pytest

from rlkit.step.filters import FILTERS, AllEqualFilter, StdFilter, get_filter, group_stds


def trio(std):
    """Three rewards whose sample std is exactly `std`: (x-d, x, x+d) has sample std d."""
    return [1.0 - std, 1.0, 1.0 + std]


def test_group_stds_are_sample_stds():
    assert group_stds([[0.0, 0.4, 0.8], [2.0, 2.0], [7.0]]) == pytest.approx([0.4, 0.0, 0.0])
    assert group_stds([[0.0, 1.0]]) == pytest.approx([2 ** -0.5])


def run_hand_example(f):
    """ema_start 2, filter_start 4, beta 0.5, ema 0.9; returns the masks of steps 1..4."""
    masks = [f.update_and_mask([trio(1.0), trio(0.0)], 1)]  # before ema_start: not collected
    assert f.metrics()["filter/active"] == 0.0
    masks.append(f.update_and_mask([trio(0.4), trio(0.2)], 2))  # step mean 0.3
    masks.append(f.update_and_mask([trio(0.6), trio(0.2)], 3))  # step mean 0.4
    # step 4: EMA starts as mean(0.3, 0.4) = 0.35 -> threshold 0.175
    masks.append(f.update_and_mask([trio(0.1), trio(0.5)], 4))
    assert f.metrics()["filter/threshold"] == pytest.approx(0.175)
    assert f.metrics()["filter/ema"] == pytest.approx(0.35)
    assert f.metrics()["filter/filtered_frac"] == pytest.approx(0.5)
    # a refill batch in the same step: same threshold, its std joins step 4's mean (0.1 + 0.5 + 0.2) / 3
    masks.append(f.update_and_mask([trio(0.2)], 4))
    assert f.metrics()["filter/threshold"] == pytest.approx(0.175)
    return masks


def test_std_filter_hand_derived():
    f = StdFilter(beta=0.5, ema=0.9, ema_start_step=2, filter_start_step=4)
    masks = run_hand_example(f)
    assert masks == [[True, True], [True, True], [True, True], [False, True], [True]]
    # step 5: EMA = 0.9 * 0.35 + 0.1 * (0.8 / 3) = 0.341667 -> threshold 0.170833
    keep = f.update_and_mask([trio(0.17), trio(0.2), [3.0]], 5)
    assert f.metrics()["filter/ema"] == pytest.approx(0.9 * 0.35 + 0.1 * 0.8 / 3)
    assert f.metrics()["filter/threshold"] == pytest.approx(0.5 * (0.9 * 0.35 + 0.1 * 0.8 / 3))
    assert keep == [False, True, False]  # a group of one has std 0
    assert f.metrics()["filter/filtered_frac"] == pytest.approx(2 / 3)


def test_std_filter_state_round_trip_mid_run():
    a = StdFilter(beta=0.5, ema=0.9, ema_start_step=2, filter_start_step=4)
    run_hand_example(a)
    state = json.loads(json.dumps(a.state_dict()))  # what a checkpoint holds
    b = StdFilter(beta=0.5, ema=0.9, ema_start_step=2, filter_start_step=4)
    b.load_state_dict(state)
    c = pickle.loads(pickle.dumps(a))
    groups = [trio(0.17), trio(0.2), trio(0.9)]
    assert a.update_and_mask(groups, 5) == b.update_and_mask(groups, 5) == c.update_and_mask(groups, 5)
    assert a.metrics() == pytest.approx(b.metrics()) and a.state_dict() == b.state_dict()


def test_std_filter_reference_defaults():
    f = StdFilter()  # beta 0.5, ema 0.99, EMA from step 6, filter from step 11
    for step in range(1, 11):
        assert f.update_and_mask([trio(0.1 * step), trio(0.0)], step) == [True, True]
    # step means of steps 6..10: 0.05 * step -> EMA starts at 0.05 * 8 = 0.4, threshold 0.2
    assert f.update_and_mask([trio(0.19), trio(0.21)], 11) == [False, True]
    assert f.metrics()["filter/ema"] == pytest.approx(0.4)
    f.update_and_mask([trio(0.0)], 12)
    assert f.metrics()["filter/ema"] == pytest.approx(0.99 * 0.4 + 0.01 * 0.2)


def test_std_filter_inactive_until_ema_exists():
    f = StdFilter(ema_start_step=5, filter_start_step=1)
    assert f.update_and_mask([trio(0.0)], 1) == [True]  # no statistics yet: nothing is dropped
    f.update_and_mask([trio(0.4)], 5)
    assert f.update_and_mask([trio(0.1), trio(0.3)], 6) == [False, True]  # EMA starts from step 5's 0.4


def test_std_filter_rejects_bad_options():
    with pytest.raises(ValueError, match="ema"):
        StdFilter(ema=1.0)
    with pytest.raises(ValueError, match="beta"):
        StdFilter(beta=-1)
    with pytest.raises(ValueError, match="numbers"):
        StdFilter(beta="high")
    assert StdFilter(beta="1.0e9").beta == 1e9  # YAML 1.1 reads 1.0e9 as a string
    with pytest.raises(ValueError, match="at least one"):
        StdFilter().update_and_mask([[]], 1)


def test_all_equal_filter():
    f = AllEqualFilter()
    assert f.update_and_mask([[1.0, 1.0], [1.0, 2.0], [3.0], [0.5, 0.5, 0.5000001]], 1) == [False, True, False, True]
    assert f.metrics()["filter/filtered_frac"] == pytest.approx(0.5)
    late = AllEqualFilter(start_step=3)
    assert late.update_and_mask([[1.0, 1.0]], 2) == [True]
    assert late.update_and_mask([[1.0, 1.0]], 3) == [False]
    late.load_state_dict(late.state_dict())


def test_registry():
    assert {"std_ema", "all_equal", "none"} <= set(FILTERS.names())
    assert isinstance(get_filter("std_ema", beta=0.3), StdFilter) and get_filter("std_ema", beta=0.3).beta == 0.3
    assert get_filter("none").update_and_mask([[1.0, 1.0]], 100) == [True]
    with pytest.raises(ValueError, match="std_ema"):
        get_filter("stdema")
    with pytest.raises(ValueError, match="already registered"):
        FILTERS.register("std_ema")(StdFilter)


def test_doctests():
    import doctest

    import rlkit.step.filters

    result = doctest.testmod(rlkit.step.filters)
    assert result.attempted > 0 and result.failed == 0
