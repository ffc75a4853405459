"""TSU: concordance over temperature pairs, ties, order of temperatures, sampling driver."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tokenwise.errors import TokenwiseError
from tokenwise.uncertainty import get, temperature_sensitivity, tsu


def naive(scores, temps):
    pairs = 0.0
    total = 0
    for row in scores:
        for i, j in itertools.combinations(range(len(temps)), 2):
            lo, hi = (i, j) if temps[i] < temps[j] else (j, i)
            total += 1
            pairs += 1.0 if row[hi] > row[lo] else 0.5 if row[hi] == row[lo] else 0.0
    return pairs / total


def test_matches_naive_and_ignores_column_order():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 3, size=(7, 4)).astype(float)  # ties on purpose
    temps = [1.5, 0.3, 1.0, 0.7]
    assert temperature_sensitivity(scores, temps) == pytest.approx(naive(scores, temps))
    perm = [2, 0, 3, 1]
    assert temperature_sensitivity(scores[:, perm], [temps[p] for p in perm]) \
        == pytest.approx(naive(scores, temps))


def test_extremes():
    assert temperature_sensitivity([[1, 2, 3]], [0.1, 0.5, 1.0]) == 1.0
    assert temperature_sensitivity([[3, 2, 1]], [0.1, 0.5, 1.0]) == 0.0
    assert temperature_sensitivity([[1, 1, 1]], [0.1, 0.5, 1.0]) == 0.5


def test_bad_input():
    with pytest.raises(TokenwiseError, match="distinct"):
        temperature_sensitivity([[1, 2]], [1.0, 1.0])
    with pytest.raises(TokenwiseError, match="expected"):
        temperature_sensitivity([[1, 2, 3]], [1.0, 2.0])
    with pytest.raises(TokenwiseError, match="NaN"):
        temperature_sensitivity([[1, float("nan")]], [1.0, 2.0])


def test_driver_on_tw_large(large, testbed):
    qs = [q.question for q in testbed.fact_world.questions(("unseen",))[:2]]
    result = tsu(large, qs, get("predictive_entropy"), (0.3, 2.0), n=3, max_new_tokens=12)
    assert result.scores.shape == (2, 2) and np.isfinite(result.scores).all()
    assert result.value == temperature_sensitivity(result.scores, (0.3, 2.0))
