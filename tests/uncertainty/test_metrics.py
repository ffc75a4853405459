"""Metrics against scikit-learn, closed forms, brute-force tie averaging and invariants."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import average_precision_score, roc_auc_score

from tokenwise.errors import TokenwiseError
from tokenwise.uncertainty import metrics
from tokenwise.uncertainty.metrics import (
    UndefinedMetricWarning,
    auprc,
    aurac,
    auroc,
    bootstrap_ci,
    brier,
    calibrated_probabilities,
    ece,
    isotonic_fit,
    prr,
    rejection_curve,
)

HYP = settings(max_examples=60, deadline=None)


def labelled(draw_scores):
    """Strategy: (scores, labels) of one length with at least one of each label."""
    return st.integers(2, 14).flatmap(
        lambda n: st.tuples(
            st.lists(draw_scores, min_size=n, max_size=n),
            st.lists(st.booleans(), min_size=n, max_size=n).filter(
                lambda y: any(y) and not all(y)
            ),
        )
    )


# Few distinct values so ties are common.
TIED = labelled(st.sampled_from([0.0, 0.5, 1.0, 2.0]))
# Quarter-integers: distinct values stay distinct under the monotone maps the tests apply.
FREE = labelled(st.integers(-4000, 4000).map(lambda i: i / 4))


# ------------------------------------------------------------------------ AUROC / AUPRC


@pytest.mark.parametrize("seed", range(5))
def test_auroc_auprc_match_sklearn_on_random_data(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 300))
    y = rng.random(n) < 0.3 + 0.4 * rng.random()
    s = rng.normal(size=n) + 0.8 * y
    assert auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert auprc(s, y) == pytest.approx(average_precision_score(y, s), abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_auroc_auprc_match_sklearn_with_heavy_ties(seed):
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(10, 200))
    s = rng.integers(0, 4, size=n).astype(float)  # only 4 distinct scores
    y = rng.random(n) < 0.5
    y[0], y[1] = True, False
    assert auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert auprc(s, y) == pytest.approx(average_precision_score(y, s), abs=1e-12)


@HYP
@given(TIED)
def test_auroc_equals_pairwise_count(data):
    scores, labels = data
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    assert auroc(scores, labels) == pytest.approx(wins / (len(pos) * len(neg)), abs=1e-12)


def test_constant_scores_are_chance_whatever_the_order():
    y = [True, False, False, True, False]
    assert auroc([1.0] * 5, y) == 0.5
    assert prr([1.0] * 5, y) == 0.0
    assert aurac([1.0] * 5, y) == pytest.approx(0.6)
    assert auprc([1.0] * 5, y) == pytest.approx(0.4)  # the share of positives


# ------------------------------------------------------------------------ rejection curves


def test_rejection_curve_closed_form():
    # Scores rank the answers wrong, right, wrong, right (most uncertain first).
    curve = rejection_curve([4.0, 3.0, 2.0, 1.0], [True, False, True, False])
    np.testing.assert_allclose(curve.rates, [0, 0.25, 0.5, 0.75])
    np.testing.assert_allclose(curve.accuracy, [1 / 2, 2 / 3, 1 / 2, 1])
    np.testing.assert_allclose(curve.oracle, [1 / 2, 2 / 3, 1, 1])
    np.testing.assert_allclose(curve.random, [1 / 2] * 4)
    assert aurac([4.0, 3.0, 2.0, 1.0], [True, False, True, False]) == pytest.approx(2 / 3)
    # (2/3 - 1/2) / (19/24 - 1/2) = (1/6) / (7/24) = 4/7
    assert prr([4.0, 3.0, 2.0, 1.0], [True, False, True, False]) == pytest.approx(4 / 7)


def test_prr_perfect_and_reversed():
    y = [True, True, False, False, False]
    assert prr([5, 4, 3, 2, 1], y) == pytest.approx(1.0)
    # Reversed: the right answers are rejected first.
    worst = np.mean([3 / 5, 2 / 4, 1 / 3, 0 / 2, 0 / 1])
    oracle = np.mean([3 / 5, 3 / 4, 1, 1, 1])
    assert prr([1, 2, 3, 4, 5], y) == pytest.approx((worst - 0.6) / (oracle - 0.6))
    assert prr([1, 2, 3, 4, 5], y) < 0


def brute_force_curve(scores, labels):
    """Mean over every order of tied answers of the kept-accuracy curve (no shortcuts)."""
    n = len(scores)
    groups = {}
    for i, s in enumerate(scores):
        groups.setdefault(s, []).append(i)
    keys = sorted(groups)  # ascending score = most certain first
    curves = []
    for perms in itertools.product(*(itertools.permutations(groups[k]) for k in keys)):
        order = [i for p in perms for i in p]
        correct = [not labels[i] for i in order]
        curves.append([np.mean(correct[: n - k]) for k in range(n)])
    return np.mean(curves, axis=0)


@settings(max_examples=40, deadline=None)
@given(labelled(st.sampled_from([0.0, 1.0, 2.0])).filter(lambda d: len(d[0]) <= 7))
def test_rejection_curve_averages_tied_orders_exactly(data):
    scores, labels = data
    np.testing.assert_allclose(
        rejection_curve(scores, labels).accuracy, brute_force_curve(scores, labels), atol=1e-12
    )


@HYP
@given(FREE)
def test_rejection_bounds_and_prr_range(data):
    scores, labels = data
    curve = rejection_curve(scores, labels)
    assert np.all(curve.accuracy <= curve.oracle + 1e-12)
    assert curve.area <= curve.oracle.mean() + 1e-12
    assert prr(scores, labels) <= 1 + 1e-12
    assert curve.accuracy[0] == pytest.approx(1 - np.mean(labels))


# ------------------------------------------------------------------------ invariants


@HYP
@given(TIED, st.randoms(use_true_random=False))
def test_metrics_ignore_input_order(data, rnd):
    scores, labels = data
    idx = list(range(len(scores)))
    rnd.shuffle(idx)
    s2 = [scores[i] for i in idx]
    y2 = [labels[i] for i in idx]
    for name in ("auroc", "auprc", "prr", "aurac"):
        fn = metrics.METRICS[name]
        assert fn(s2, y2) == pytest.approx(fn(scores, labels), abs=1e-12), name


@HYP
@given(FREE)
def test_auroc_flips_and_monotone_invariance(data):
    scores, labels = data
    s = np.array(scores)
    y = np.array(labels)
    a = auroc(s, y)
    assert auroc(-s, y) == pytest.approx(1 - a, abs=1e-12)
    assert auroc(s, ~y) == pytest.approx(1 - a, abs=1e-12)
    assert auroc(np.arctan(s / 100) * 3 + 7, y) == pytest.approx(a, abs=1e-12)
    assert prr(np.exp(s / 1e3), y) == pytest.approx(prr(s, y), abs=1e-9)


# ------------------------------------------------------------------------ calibration


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("increasing", [True, False])
def test_isotonic_fit_matches_sklearn(seed, increasing):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 30, size=80).astype(float)  # ties in x
    y = rng.random(80) + (0.02 if increasing else -0.02) * x
    knots, values = isotonic_fit(x, y, increasing=increasing)
    ref = IsotonicRegression(increasing=increasing, out_of_bounds="clip").fit(x, y)
    grid = np.linspace(-3, 33, 200)
    np.testing.assert_allclose(np.interp(grid, knots, values), ref.predict(grid), atol=1e-12)


@HYP
@given(st.lists(st.tuples(st.floats(-5, 5), st.floats(0, 1)), min_size=1, max_size=30))
def test_isotonic_fit_is_monotone_and_keeps_the_mean(pairs):
    x = np.array([p[0] for p in pairs])
    y = np.array([p[1] for p in pairs])
    knots, values = isotonic_fit(x, y)
    assert np.all(np.diff(values) >= -1e-12)
    assert np.all(np.diff(knots) > 0)
    fitted = np.interp(x, knots, values)
    assert fitted.mean() == pytest.approx(y.mean(), abs=1e-9)


def test_calibration_cross_fit_uses_other_folds_only():
    # With 2 answers and 2 folds each is predicted from the other alone: the other's label.
    p = calibrated_probabilities([0.0, 1.0], [False, True], folds=2)
    np.testing.assert_allclose(p, [0.0, 1.0])  # each sees only the opposite label
    p_in = calibrated_probabilities([0.0, 1.0], [False, True], folds=1)
    np.testing.assert_allclose(p_in, [1.0, 0.0])


def naive_ece(p, correct, bins):
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = [(pi, ci) for pi, ci in zip(p, correct, strict=True)
                  if lo <= pi < hi or (b == bins - 1 and pi == 1.0)]
        if inside:
            conf = np.mean([i[0] for i in inside])
            acc = np.mean([i[1] for i in inside])
            total += len(inside) / len(p) * abs(acc - conf)
    return total


@pytest.mark.parametrize("folds", [1, 3, 5])
def test_ece_and_brier_against_naive(folds):
    rng = np.random.default_rng(7)
    s = rng.normal(size=120)
    y = rng.random(120) < 1 / (1 + np.exp(-2 * s))
    p = calibrated_probabilities(s, y, folds=folds, seed=3)
    correct = (~y).astype(float)
    assert ece(s, y, bins=10, folds=folds, seed=3) == pytest.approx(naive_ece(p, correct, 10))
    assert brier(s, y, folds=folds, seed=3) == pytest.approx(np.mean((p - correct) ** 2))
    assert np.all(np.diff(calibrated_probabilities(s, y, folds=1)[np.argsort(s)]) <= 1e-12)


def test_a_perfectly_separating_score_calibrates_to_zero_error():
    s = [0.1, 0.2, 0.3, 0.7, 0.8, 0.9]
    y = [False, False, False, True, True, True]
    assert ece(s, y, folds=1) == 0.0
    assert brier(s, y, folds=1) == 0.0


# ------------------------------------------------------------------------ all labels agree


@pytest.mark.parametrize("fn", [auroc, auprc, prr])
@pytest.mark.parametrize("value", [True, False])
def test_single_class_is_nan_with_warning(fn, value):
    with pytest.warns(UndefinedMetricWarning, match="undefined"):
        assert math.isnan(fn([0.1, 0.5, 0.9], [value] * 3))


def test_single_class_defined_metrics():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert aurac([0.1, 0.5, 0.9], [False] * 3) == 1.0
        assert aurac([0.1, 0.5, 0.9], [True] * 3) == 0.0
        assert brier([0.1, 0.5, 0.9], [True] * 3, folds=1) == 0.0
        assert ece([0.1, 0.5, 0.9], [False] * 3, folds=3) == 0.0


# ------------------------------------------------------------------------ bootstrap


def test_bootstrap_ci_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.4
    s = rng.normal(size=200) + y
    a = bootstrap_ci(auroc, s, y, n=300, seed=1)
    b = bootstrap_ci(auroc, s, y, n=300, seed=1)
    assert a == b
    assert a.low < a.estimate < a.high
    assert a.estimate == auroc(s, y)
    assert a.resamples == 300
    assert 0.05 < a.high - a.low < 0.3


def test_bootstrap_matches_a_naive_loop():
    rng = np.random.default_rng(5)
    y = rng.random(40) < 0.5
    s = rng.normal(size=40) + y
    ci = bootstrap_ci(prr, s, y, n=100, seed=9, level=0.9)
    picks = np.random.default_rng(9).integers(0, 40, size=(100, 40))
    vals = []
    for p in picks:
        if y[p].all() or not y[p].any():
            continue
        vals.append(prr(s[p], y[p]))
    assert ci.resamples == len(vals)
    assert (ci.low, ci.high) == pytest.approx(tuple(np.quantile(vals, [0.05, 0.95])))


def test_bootstrap_drops_undefined_resamples_and_reports_none_left():
    # 1 wrong answer in 30: many resamples miss it and AUROC is undefined there.
    y = np.zeros(30, dtype=bool)
    y[0] = True
    s = np.arange(30.0)[::-1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the harness must not leak warnings per resample
        ci = bootstrap_ci(auroc, s, y, n=200, seed=0)
    assert 0 < ci.resamples < 200
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        none = bootstrap_ci(auroc, [1.0, 2.0], [True, True], n=20)
    assert none.resamples == 0 and math.isnan(none.low) and math.isnan(none.estimate)


# ------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("scores", "labels", "match"),
    [
        ([0.1, float("nan")], [True, False], "position 1 is not finite"),
        ([0.1, float("inf")], [True, False], "not finite"),
        ([0.1, 0.2], [True], "2 scores but 1 labels"),
        ([], [], "at least one answer"),
        ([0.1, 0.2], [0, 2], "label 2 at position 1"),
        ([0.1, 0.2], ["yes", "no"], "booleans or 0/1"),
        ([[0.1], [0.2]], [True, False], "1-D"),
    ],
)
def test_bad_input_is_named(scores, labels, match):
    for fn in (auroc, auprc, prr, aurac, ece, brier):
        with pytest.raises(TokenwiseError, match=match):
            fn(scores, labels)


def test_bad_parameters_are_named():
    with pytest.raises(TokenwiseError, match="folds=7"):
        calibrated_probabilities([0.1, 0.2], [True, False], folds=7)
    with pytest.raises(TokenwiseError, match="bins=0"):
        ece([0.1, 0.2], [True, False], bins=0)
    with pytest.raises(TokenwiseError, match="n=0"):
        bootstrap_ci(auroc, [0.1, 0.2], [True, False], n=0)
    with pytest.raises(TokenwiseError, match=r"level=1\.5"):
        bootstrap_ci(auroc, [0.1, 0.2], [True, False], level=1.5)
    with pytest.raises(TokenwiseError, match="finite"):
        isotonic_fit([0.0, 1.0], [0.0, float("nan")])


def test_paired_bootstrap_uses_the_same_resamples_for_both():
    rng = np.random.default_rng(3)
    y = rng.random(60) < 0.5
    a = rng.normal(size=60) + 1.5 * y
    b = rng.normal(size=60) + 0.5 * y
    ci = metrics.paired_bootstrap_ci(auroc, a, b, y, n=150, seed=4)
    assert ci.estimate == pytest.approx(auroc(a, y) - auroc(b, y))
    picks = np.random.default_rng(4).integers(0, 60, size=(150, 60))
    diffs = [auroc(a[p], y[p]) - auroc(b[p], y[p]) for p in picks
             if y[p].any() and not y[p].all()]
    assert (ci.low, ci.high) == pytest.approx(tuple(np.quantile(diffs, [0.025, 0.975])))
    # An estimator against itself differs by exactly 0 on every resample.
    same = metrics.paired_bootstrap_ci(auroc, a, a, y, n=50)
    assert same.low == same.high == same.estimate == 0.0
