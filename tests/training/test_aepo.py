"""AEPO rewards: buckets, per-bucket targets, the shaped reward and the KL coefficient."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenwise.errors import TokenwiseError
from tokenwise.training import (
    DEFAULT_SHAPING,
    ShapingCoefficients,
    adaptive_kl_coef,
    aepo_rewards,
    bucket_targets,
    difficulty_buckets,
)

# ---------------------------------------------------------------- difficulty_buckets


def test_buckets_at_and_around_the_thresholds():
    # >= 2/3 easy, < 1/3 hard, else medium; 2/3 and 1/3 themselves: easy and medium
    accs = [1.0, 2 / 3, 0.6, 0.5, 1 / 3, 0.3, 0.0]
    assert difficulty_buckets(accs) == ["easy", "easy", "medium", "medium", "medium", "hard",
                                        "hard"]


def test_buckets_custom_thresholds_tensor_and_empty():
    assert difficulty_buckets(torch.tensor([0.9, 0.5, 0.1]), easy=0.8, hard=0.2) == [
        "easy", "medium", "hard"]
    assert difficulty_buckets([]) == []


@pytest.mark.parametrize("bad", [[1.5], [-0.1], [float("nan")], ["x"]])
def test_buckets_reject_bad_accuracy(bad):
    with pytest.raises(TokenwiseError, match="accuracies"):
        difficulty_buckets(bad)


def test_buckets_reject_crossed_thresholds():
    with pytest.raises(TokenwiseError, match="hard <= easy"):
        difficulty_buckets([0.5], easy=0.3, hard=0.6)


# ---------------------------------------------------------------- bucket_targets


def test_targets_are_scaled_bucket_means():
    # easy: mean(10, 30) = 20, * 0.8 = 16; hard: mean(20, 40) = 30, * 1.2 = 36
    assert bucket_targets([10, 30, 20, 40], ["easy", "easy", "hard", "hard"]) == pytest.approx(
        {"easy": 16.0, "hard": 36.0})
    # with lengths: fractions 10/100 = 0.1 and 30/100 = 0.3, mean 0.2, scale 1.0 -> 0.2
    assert bucket_targets([10, 30], ["medium", "medium"], lengths=[100, 100]) == pytest.approx(
        {"medium": 0.2})


def test_targets_reject_missing_scale():
    with pytest.raises(TokenwiseError, match="'odd' has no scale"):
        bucket_targets([1], ["odd"])


# ---------------------------------------------------------------- aepo_rewards, by hand

TARGETS = {"easy": 10.0, "medium": 20.0, "hard": 20.0}


def test_hand_computed_two_groups():
    # group 0: 2/3 correct -> easy (T = 10); group 1: 1/3 correct -> medium (T = 20)
    correct = [1, 1, 0, 0, 0, 1]
    hwe = [10, 15, 30, 20, 40, 10]
    got = aepo_rewards(correct, hwe, TARGETS, groups=[0, 0, 0, 1, 1, 1])
    assert got == pytest.approx([
        1.0,          # correct, d = 0                 -> 1 + 0
        0.75,         # correct, d = 5/10 = 0.5        -> 1 - 0.5 * 0.5
        0.1,          # wrong,   d = 20/10 = 2 -> 1    -> 0.1 * 1
        0.0,          # wrong, medium, d = 0           -> 0 (no bonus at the target)
        0.2,          # wrong,   d = 20/20 = 1         -> 0.2 * 1
        0.875,        # correct, d = -10/20 = -0.5     -> 1 - 0.25 * 0.5
    ])


def test_hand_computed_hard_bucket_rewards_exploration():
    # 1 of 4 correct -> 0.25 < 1/3 -> hard, T = 20: above = +0.5, below = -0.25, wrong = 0.4
    correct = [1, 0, 0, 0]
    hwe = [30, 10, 20, 25]
    got = aepo_rewards(correct, hwe, TARGETS, groups=["p"] * 4)
    assert got == pytest.approx([
        1.25,   # correct, d = 10/20 = 0.5  -> 1 + 0.5 * 0.5
        0.0,    # wrong,   d = -0.5         -> 0 (under target: no bonus, no penalty)
        0.0,    # wrong,   d = 0            -> 0
        0.1,    # wrong,   d = 5/20 = 0.25  -> 0.4 * 0.25
    ])


def test_all_correct_group_is_easy_and_all_wrong_is_hard():
    # all correct: accuracy 1 -> easy, T = 10; d = 0, 1, -1 -> 1, 1 - 0.5, 1 + 0 * 1
    assert aepo_rewards([1, 1, 1], [10, 20, 0], TARGETS, groups=[7, 7, 7]) == pytest.approx(
        [1.0, 0.5, 1.0])
    # all wrong: accuracy 0 -> hard, T = 20; d = -1, 0, 0.5, 3 -> 0, 0, 0.4 * 0.5, 0.4 * 1
    assert aepo_rewards([0, 0, 0, 0], [0, 20, 30, 80], TARGETS, groups=[1] * 4) == pytest.approx(
        [0.0, 0.0, 0.2, 0.4])


def test_one_rollout_per_prompt():
    # k = 1: a correct prompt is easy (T = 10), a wrong one hard (T = 20)
    # correct, d = 0.5 -> 1 - 0.25; wrong, d = 1 -> 0.4
    assert aepo_rewards([True, False], [15, 40], TARGETS, groups=["a", "b"]) == pytest.approx(
        [0.75, 0.4])


def test_empty_batch():
    assert aepo_rewards([], [], TARGETS, groups=[]) == []
    out = aepo_rewards(torch.tensor([], dtype=torch.bool), torch.tensor([]), TARGETS,
                       buckets=[])
    assert isinstance(out, torch.Tensor) and out.shape == (0,)


def test_tensor_in_tensor_out_and_explicit_buckets():
    out = aepo_rewards(torch.tensor([True, False]), torch.tensor([15.0, 40.0]), TARGETS,
                       buckets=["easy", "hard"])
    assert out.dtype == torch.float32
    assert out.tolist() == pytest.approx([0.75, 0.4])


def test_lengths_turn_counts_into_fractions():
    # usage 30/100 = 0.3 against T = 0.2 -> d = 0.5; correct medium -> 1 - 0.25 * 0.5
    assert aepo_rewards([1], [30], {"medium": 0.2}, buckets=["medium"],
                        lengths=[100]) == pytest.approx([0.875])


def test_custom_coefficients():
    c = {"easy": ShapingCoefficients(above=-0.2, below=0.1, wrong=0.0)}
    # correct d = -0.5 -> 1 + 0.1 * 0.5; wrong d = 1 -> 0
    assert aepo_rewards([1, 0], [5, 20], TARGETS, buckets=["easy", "easy"],
                        coefficients=c) == pytest.approx([1.05, 0.0])


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"groups": [0], "buckets": ["easy"]}, "exactly one"),
    ({}, "exactly one"),
    ({"buckets": ["odd"]}, "'odd' has no target"),
    ({"buckets": ["easy", "easy"]}, "buckets has 2 values"),
    ({"buckets": ["easy"], "lengths": [5]}, "lengths"),
    ({"buckets": ["easy"], "coefficients": {
        "easy": ShapingCoefficients(above=-0.6, below=0.0, wrong=0.5)}}, "wrong answer"),
])
def test_rejects_bad_arguments(kwargs, match):
    with pytest.raises(TokenwiseError, match=match):
        aepo_rewards([1], [10], TARGETS, **kwargs)


@pytest.mark.parametrize(("correct", "hwe", "targets", "match"), [
    ([0.5], [1], TARGETS, r"correct\[0\]"),
    ([1], [-1], TARGETS, r"hwe_counts\[0\]"),
    ([1], [float("inf")], TARGETS, r"hwe_counts\[0\]"),
    ([1], [1], {"easy": 0.0}, "targets"),
])
def test_rejects_bad_values(correct, hwe, targets, match):
    with pytest.raises(TokenwiseError, match=match):
        aepo_rewards(correct, hwe, targets, buckets=["easy"])


# ---------------------------------------------------------------- aepo_rewards, invariants

usage = st.floats(min_value=0, max_value=1000, allow_nan=False)
target = st.floats(min_value=0.1, max_value=500, allow_nan=False)
weight = st.floats(min_value=-2, max_value=2, allow_nan=False)


@st.composite
def valid_shaping(draw):
    above, below, wrong = draw(weight), draw(weight), draw(weight)
    if max(0.0, wrong) - min(0.0, above, below) >= 1.0:  # scale into the allowed region
        s = 0.99 / (max(0.0, wrong) - min(0.0, above, below))
        above, below, wrong = above * s, below * s, wrong * s
    return ShapingCoefficients(above=above, below=below, wrong=wrong)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), usage), min_size=1, max_size=12), target,
       st.none() | valid_shaping())
def test_wrong_never_reaches_correct_within_a_group(rollouts, t, shaping):
    # one group, so one bucket (from its accuracy); default or random allowed coefficients
    correct = [c for c, _ in rollouts]
    hwe = [u for _, u in rollouts]
    names = ["easy", "medium", "hard"]
    coefs = DEFAULT_SHAPING if shaping is None else dict.fromkeys(names, shaping)
    r = aepo_rewards(correct, hwe, dict.fromkeys(names, t), groups=[0] * len(correct),
                     coefficients=coefs)
    right = [x for x, c in zip(r, correct, strict=True) if c]
    wrong = [x for x, c in zip(r, correct, strict=True) if not c]
    if right and wrong:
        assert max(wrong) < min(right)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["easy", "medium", "hard"]), target, usage)
def test_wrong_at_or_below_target_gets_nothing(bucket, t, u):
    u = min(u, t)
    assert aepo_rewards([0], [u], {bucket: t}, buckets=[bucket]) == [0.0]


@settings(max_examples=200, deadline=None)
@given(target, usage, usage)
def test_monotone_in_usage(t, u1, u2):
    lo, hi = sorted((u1, u2))
    targets = dict.fromkeys(["easy", "medium", "hard"], t)

    def r(ok, u, b):
        return aepo_rewards([ok], [u], targets, buckets=[b])[0]

    assert r(1, hi, "easy") <= r(1, lo, "easy")      # easy: more HWE never pays
    assert r(1, hi, "hard") >= r(1, lo, "hard")      # hard: more HWE never costs
    for b in ("easy", "medium", "hard"):             # wrong: exploring never costs
        assert r(0, hi, b) >= r(0, lo, b)
    # medium: closer to the target (on one side) is never worse
    if lo >= t:
        assert r(1, lo, "medium") >= r(1, hi, "medium")
    if hi <= t:
        assert r(1, hi, "medium") >= r(1, lo, "medium")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.booleans(), usage), min_size=1, max_size=8), target)
def test_correct_is_always_rewarded_more_than_its_own_wrong_twin(rollouts, t):
    # flipping one rollout from wrong to right (same usage, same bucket) raises its reward
    for b in ("easy", "medium", "hard"):
        for _, u in rollouts:
            right, wrong = aepo_rewards([1, 0], [u, u], {b: t}, buckets=[b, b])
            assert right > wrong


# ---------------------------------------------------------------- adaptive_kl_coef


def test_kl_coef_by_hand():
    assert adaptive_kl_coef(0.1, 0.1, 0.01) == pytest.approx(0.01)     # e = 0
    assert adaptive_kl_coef(0.15, 0.1, 0.01) == pytest.approx(0.015)   # e = 0.5: 0.01 * 1.5
    assert adaptive_kl_coef(0.05, 0.1, 0.01) == pytest.approx(0.005)   # e = -0.5: 0.01 * 0.5
    assert adaptive_kl_coef(1.0, 0.1, 0.01) == pytest.approx(0.02)     # e = 9 -> 1: 0.01 * 2
    # gain 0.5, e = 0.5: 0.01 * 1.25; then clipped to beta_max = 0.012
    assert adaptive_kl_coef(0.15, 0.1, 0.01, gain=0.5) == pytest.approx(0.0125)
    assert adaptive_kl_coef(0.15, 0.1, 0.01, gain=0.5, beta_max=0.012) == pytest.approx(0.012)
    # e = -1: 0.01 * 0 = 0, raised to beta_min = 0.001
    assert adaptive_kl_coef(0.0, 0.1, 0.01, beta_min=0.001) == pytest.approx(0.001)


def test_kl_coef_same_kl_no_drift_over_many_steps():
    # ARES's controller would give 0.01 * 1.5**N here; ours is 0.015 at every step
    betas = [adaptive_kl_coef(0.15, 0.1, 0.01) for _ in range(1000)]
    assert len(set(betas)) == 1 and betas[0] == pytest.approx(0.015)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=100, allow_nan=False), min_size=1,
                max_size=50),
       st.floats(min_value=1e-4, max_value=10), st.floats(min_value=0, max_value=1),
       st.floats(min_value=0, max_value=5), st.floats(min_value=0, max_value=1),
       st.floats(min_value=0, max_value=1))
def test_kl_coef_in_bounds_and_history_free(kls, t, init, gain, lo, width):
    hi = lo + width
    betas = [adaptive_kl_coef(k, t, init, gain=gain, beta_min=lo, beta_max=hi) for k in kls]
    assert all(lo <= b <= hi for b in betas)
    # the coefficient depends only on the current KL: replaying the last KL alone gives the
    # same value as at the end of the sequence, and repeating it never moves it
    last = adaptive_kl_coef(kls[-1], t, init, gain=gain, beta_min=lo, beta_max=hi)
    assert betas[-1] == last
    assert all(adaptive_kl_coef(kls[-1], t, init, gain=gain, beta_min=lo, beta_max=hi) == last
               for _ in range(20))


@pytest.mark.parametrize(("args", "kwargs", "match"), [
    ((-0.1, 0.1, 0.01), {}, "kl"),
    ((float("nan"), 0.1, 0.01), {}, "kl"),
    ((0.1, 0.0, 0.01), {}, "target"),
    ((0.1, 0.1, -1.0), {}, "init_coef"),
    ((0.1, 0.1, 0.01), {"beta_min": 0.5, "beta_max": 0.1}, "beta_max"),
    ((0.1, 0.1, 0.01), {"max_error": 0.0}, "max_error"),
])
def test_kl_coef_rejects_bad_input(args, kwargs, match):
    with pytest.raises(TokenwiseError, match=match):
        adaptive_kl_coef(*args, **kwargs)


def test_kl_coef_matches_formula():
    e = min(max(0.37 / 0.2 - 1, -1.0), 1.0)  # 0.85
    assert adaptive_kl_coef(0.37, 0.2, 0.003) == pytest.approx(0.003 * (1 + e))
    assert math.isclose(adaptive_kl_coef(0.37, 0.2, 0.003), 0.00555)
