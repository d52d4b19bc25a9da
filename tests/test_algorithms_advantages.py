"""Advantage estimators and group statistics against hand-derived numbers.

Std is the sample (Bessel-corrected) std throughout, as in TRL and verl.
"""

import math

import pytest
import torch

from rlkit.algorithms import (
    ADVANTAGES,
    Registry,
    advantage_groups,
    combine_group_ids,
    get_advantage_fn,
    group_index,
    group_std,
    informative_groups,
)

T = torch.tensor
# Group 0: [1, 0, 0, 1] (ties); group 1: [2, 2] (all equal); group 2: [5] (a group of one).
REWARDS = T([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 5.0])
GROUPS = T([0, 0, 0, 0, 1, 1, 2])


def close(a, b, tol=1e-5):
    torch.testing.assert_close(a, T(b, dtype=a.dtype), atol=tol, rtol=0)


def test_grpo_ties_all_equal_and_singleton():
    # Group 0: mean 0.5, deviations +-0.5, sum sq 1.0, sample var 1/3, std 0.57735;
    # A = +-0.5 / 0.57735 = +-0.866025 (= sqrt(3)/2). Group 1: std 0 -> 0 / eps = 0. Group 2: size 1 -> 0.
    s = math.sqrt(3) / 2
    close(get_advantage_fn("grpo")(REWARDS, GROUPS), [s, -s, -s, s, 0, 0, 0])


def test_grpo_unequal_groups_interleaved_noncontiguous_ids():
    # Group 7: [0, 1, 2] mean 1, sample std sqrt((1+0+1)/2) = 1 -> [-1, 0, 1].
    # Group 3: [1, 1, 0] mean 2/3, devs [1/3, 1/3, -2/3], sum sq 2/3, var 1/3, std 0.57735
    #   -> [0.57735, 0.57735, -1.154701] (tied rewards get equal advantages).
    r = T([0.0, 1.0, 1.0, 1.0, 2.0, 0.0])
    g = T([7, 3, 7, 3, 7, 3])
    close(get_advantage_fn("grpo")(r, g), [-1.0, 0.57735, 0.0, 0.57735, 1.0, -1.154701])


def test_grpo_without_std_is_dr_grpo():
    # Group 0 mean 0.5 -> [0.5, -0.5, -0.5, 0.5]; groups 1 and 2 -> 0.
    expected = [0.5, -0.5, -0.5, 0.5, 0, 0, 0]
    close(get_advantage_fn("dr_grpo")(REWARDS, GROUPS), expected)
    close(get_advantage_fn("grpo")(REWARDS, GROUPS, std_normalize=False), expected)


def test_all_equal_non_representable_rewards_give_zero():
    # 0.1 is not exact in binary; the mean may differ by ~1e-17, and (1e-17) / (1e-17 + eps) ~ 1e-11.
    r = torch.full((4,), 0.1)
    g = T([0, 0, 0, 0])
    for name in ADVANTAGES.names():
        close(get_advantage_fn(name)(r, g), [0.0] * 4, tol=1e-6)


def test_batch_std():
    # Rewards [0, 2, 1, 1], groups [0, 0, 1, 1]. Group means 1 and 1.
    # Batch: mean 1, devs [-1, 1, 0, 0], sum sq 2, sample var 2/3, std 0.816497
    #   -> [-1/0.816497, 1/0.816497, 0, 0] = [-1.224745, 1.224745, 0, 0].
    adv = get_advantage_fn("batch_std")(T([0.0, 2.0, 1.0, 1.0]), T([0, 0, 1, 1]))
    close(adv, [-1.224745, 1.224745, 0.0, 0.0])
    # On the shared batch [1,0,0,1,2,2,5]: mean 11/7 = 1.571429,
    # sum sq = 2*0.571429^2 + 2*1.571429^2 + 2*0.428571^2 + 3.428571^2 = 17.714286, var /6 = 2.952381,
    # std 1.718249 -> group 0: +-0.5 / 1.718249 = +-0.290994; others 0.
    a = 0.5 / 1.718249
    close(get_advantage_fn("batch_std")(REWARDS, GROUPS), [a, -a, -a, a, 0, 0, 0])


def test_rloo():
    # r=1 in [1,0,0,1]: others [0,0,1] mean 1/3 -> 2/3; r=0: others [1,0,1] mean 2/3 -> -2/3.
    # Group 7 [0, 1, 2]: 0 - 1.5 = -1.5, 1 - 1 = 0, 2 - 0.5 = 1.5.
    t = 2 / 3
    close(get_advantage_fn("rloo")(REWARDS, GROUPS), [t, -t, -t, t, 0, 0, 0])
    close(get_advantage_fn("rloo")(T([0.0, 1.0, 2.0]), T([7, 7, 7])), [-1.5, 0.0, 1.5])


def test_subgroups_via_combined_key():
    # Prompt 0 has fast (mode 0) samples [1, 0] and deep (mode 1) samples [3, 3].
    # Within mode: fast mean 0.5 -> [0.5, -0.5]; deep all equal -> [0, 0].
    # Across the whole group: mean 7/4 = 1.75 -> [-0.75, -1.75, 1.25, 1.25].
    r = T([1.0, 0.0, 3.0, 3.0])
    prompt, mode = T([0, 0, 0, 0]), T([0, 0, 1, 1])
    close(get_advantage_fn("dr_grpo")(r, combine_group_ids(prompt, mode)), [0.5, -0.5, 0.0, 0.0])
    close(get_advantage_fn("dr_grpo")(r, prompt), [-0.75, -1.75, 1.25, 1.25])


def test_mode_groups_with_mixed_modes():
    """algorithm.mode_groups through the driver's path: advantage_groups -> grpo (sample std, eps 1e-6).

    Prompt 0: fast [1, 0], deep [1, 1]. Prompt 1: fast [1] (a subgroup of one), deep [0, 1].
    "prompt": prompt 0 mean 3/4, std sqrt((3 * 1/16 + 9/16) / 3) = 1/2 -> [1/2, -3/2, 1/2, 1/2];
              prompt 1 mean 2/3, std sqrt((1/9 + 4/9 + 1/9) / 2) = 1/sqrt(3) -> [sqrt(3)/3, -2 sqrt(3)/3, sqrt(3)/3].
    "mode":   prompt 0 fast mean 1/2, std 1/sqrt(2) -> [+-1/sqrt(2)]; deep all equal -> [0, 0];
              prompt 1 fast alone -> 0 (no baseline); deep [0, 1] -> [-1/sqrt(2), 1/sqrt(2)].
    """
    r = T([1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0])
    prompt, mode = T([0, 0, 0, 0, 1, 1, 1]), T([0, 0, 1, 1, 0, 1, 1])
    grpo = get_advantage_fn("grpo")
    s3, h = math.sqrt(3), 1 / math.sqrt(2)
    close(grpo(r, advantage_groups(prompt, mode, "prompt")), [0.5, -1.5, 0.5, 0.5, s3 / 3, -2 * s3 / 3, s3 / 3])
    close(grpo(r, advantage_groups(prompt, mode, "mode")), [h, -h, 0.0, 0.0, 0.0, -h, h])
    # fast samples of different prompts never share a subgroup: a prompt-blind key would pool fast [1, 0, 1]
    # (mean 2/3, std 1/sqrt(3)) and deep [1, 1, 0, 1] (mean 3/4, std 1/2), giving prompt 1's lone fast sample sqrt(3)/3
    close(grpo(r, mode), [s3 / 3, -2 * s3 / 3, 0.5, 0.5, s3 / 3, -1.5, 0.5])
    # a step whose groups are single-mode (modes.per: prompt): both choices give the same advantages
    single = T([0, 0, 0, 0, 1, 1, 1])
    close(grpo(r, advantage_groups(prompt, single, "mode")), grpo(r, advantage_groups(prompt, single, "prompt")).tolist())
    with pytest.raises(ValueError, match="mode groups must be one of prompt, mode"):
        advantage_groups(prompt, mode, "modes")
    with pytest.raises(ValueError, match="shape"):
        advantage_groups(prompt, mode[:3], "mode")


def test_combine_group_ids_distinct_tuples():
    ids = combine_group_ids(T([0, 0, 1, 1, 0]), T([0, 1, 0, 1, 1]))
    assert ids[1] == ids[4]
    assert len(set(ids.tolist())) == 4


def test_group_std_and_informative_groups():
    # Group 0 [1,0,0,1]: sample std 0.57735, population std 0.5. Group 1 [2,2]: 0. Group 2 [5]: 0.
    close(group_std(REWARDS, GROUPS), [0.57735, 0.0, 0.0])
    close(group_std(REWARDS, GROUPS, unbiased=False), [0.5, 0.0, 0.0])
    keep = informative_groups(REWARDS, GROUPS)
    assert keep.tolist() == [True, False, False]
    # Per-sample mask for dynamic sampling, via the group positions.
    unique, inverse = group_index(GROUPS)
    assert unique.tolist() == [0, 1, 2]
    assert keep[inverse].tolist() == [True] * 4 + [False] * 3


def test_informative_groups_order_follows_ascending_ids():
    # Ids 9 (rewards [1, 1]) and 4 (rewards [0, 1]) -> unique order [4, 9] -> [True, False].
    assert informative_groups(T([1.0, 0.0, 1.0, 1.0]), T([9, 4, 9, 4])).tolist() == [True, False]


def test_integer_rewards_and_float64_are_accepted():
    close(get_advantage_fn("dr_grpo")(T([1, 0]), T([0, 0])), [0.5, -0.5])
    out = get_advantage_fn("grpo")(REWARDS.double(), GROUPS)
    assert out.dtype == torch.float64


def test_empty_batch():
    for name in ADVANTAGES.names():
        assert get_advantage_fn(name)(torch.zeros(0), torch.zeros(0, dtype=torch.long)).shape == (0,)
    assert informative_groups(torch.zeros(0), torch.zeros(0, dtype=torch.long)).shape == (0,)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="rewards must have shape"):
        get_advantage_fn("grpo")(torch.zeros(2, 1), T([0, 0]))
    with pytest.raises(ValueError, match="group_ids must have the shape"):
        get_advantage_fn("grpo")(torch.zeros(3), T([0, 0]))
    with pytest.raises(ValueError, match="integer"):
        get_advantage_fn("grpo")(torch.zeros(2), T([0.0, 0.0]))
    with pytest.raises(TypeError):  # a misspelt option is not silently ignored
        get_advantage_fn("grpo")(REWARDS, GROUPS, std_normalise=False)


def test_registry_refuses_duplicates_and_lists_names():
    reg = Registry("thing")
    reg.register("a")(lambda: 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(lambda: 2)
    assert reg.get("a")() == 1  # the first registration survives
    with pytest.raises(ValueError, match="already registered"):
        ADVANTAGES.register("grpo")(lambda r, g: r)
    with pytest.raises(ValueError) as err:
        get_advantage_fn("gpro")
    for name in ("batch_std", "dr_grpo", "grpo", "rloo"):
        assert name in str(err.value)
    assert "gpro" in str(err.value)
