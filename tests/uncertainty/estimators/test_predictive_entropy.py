"""Predictive entropy: closed form, length normalisation, order, bad input."""

from __future__ import annotations

import pytest

from tokenwise.errors import TokenwiseError
from tokenwise.uncertainty import SampleSet, get
from tokenwise.uncertainty.estimators.predictive_entropy import PredictiveEntropy


def test_closed_form():
    s = SampleSet.from_texts("Q?", ["a", "b", "c"], logprobs=[[-1.0, -2.0], [-0.5], [-3.0, 0.0]])
    assert PredictiveEntropy()(s) == pytest.approx((3.0 + 0.5 + 3.0) / 3)
    assert get("predictive_entropy_normalised")(s) == pytest.approx((1.5 + 0.5 + 1.5) / 3)


def test_order_does_not_matter_and_duplicates_are_samples():
    lps = [[-1.0], [-2.0], [-4.0]]
    a = SampleSet.from_texts("Q?", ["x", "y", "z"], logprobs=lps)
    b = SampleSet.from_texts("Q?", ["z", "x", "y"], logprobs=[lps[2], lps[0], lps[1]])
    assert PredictiveEntropy()(a) == pytest.approx(PredictiveEntropy()(b))
    dup = SampleSet.from_texts("Q?", ["x", "x"], logprobs=[[-1.0], [-1.0]])
    assert PredictiveEntropy()(dup) == pytest.approx(1.0)


def test_needs_logprobs():
    with pytest.raises(TokenwiseError, match="needs token log-probabilities"):
        PredictiveEntropy()(SampleSet.from_texts("Q?", ["a", "b"]))
    with pytest.raises(TokenwiseError, match="expected a SampleSet"):
        PredictiveEntropy()(["a", "b"])
