"""Discrete semantic entropy: frequencies, no log-probs needed."""

from __future__ import annotations

import numpy as np
import pytest

from tokenwise.uncertainty import SampleSet
from tokenwise.uncertainty.estimators.discrete_semantic_entropy import DiscreteSemanticEntropy

from .helpers import FIRST_LETTER


def test_closed_form_and_order():
    texts = ["apple", "avocado", "banana", "cherry", "apricot", "blueberry"]
    f = np.array([3, 2, 1]) / 6
    want = float(-(f * np.log(f)).sum())
    assert DiscreteSemanticEntropy(FIRST_LETTER)(SampleSet.from_texts("Q?", texts)) \
        == pytest.approx(want)
    assert DiscreteSemanticEntropy(FIRST_LETTER)(SampleSet.from_texts("Q?", texts[::-1])) \
        == pytest.approx(want)


def test_extremes():
    same = SampleSet.from_texts("Q?", ["a1", "a2", "a3"])
    assert DiscreteSemanticEntropy(FIRST_LETTER)(same) == pytest.approx(0.0, abs=1e-12)
    apart = SampleSet.from_texts("Q?", ["a", "b", "c", "d"])
    assert DiscreteSemanticEntropy(FIRST_LETTER)(apart) == pytest.approx(np.log(4))
