"""Mean token entropy: reference and samples, missing entropies."""

from __future__ import annotations

import pytest

from tokenwise.errors import TokenwiseError
from tokenwise.uncertainty import Answer, SampleSet
from tokenwise.uncertainty.estimators.mean_token_entropy import MeanTokenEntropy


def test_closed_form():
    a = Answer("a", (-1.0, -1.0, -1.0), (0.3, 0.6, 0.9))
    b = Answer("b", (-1.0,), (2.0,))
    s = SampleSet("Q?", (a, b), reference=a)
    assert MeanTokenEntropy()(s) == pytest.approx(0.6)
    assert MeanTokenEntropy("samples")(s) == pytest.approx((0.6 + 2.0) / 2)


def test_missing_entropies():
    s = SampleSet.from_texts("Q?", ["a", "b"], logprobs=[-1.0, -1.0], reference="a")
    with pytest.raises(TokenwiseError, match="no token entropies"):
        MeanTokenEntropy()(s)
    with pytest.raises(TokenwiseError, match="no token entropies"):
        MeanTokenEntropy("samples")(s)
    with pytest.raises(TokenwiseError, match="needs a reference"):
        MeanTokenEntropy()(SampleSet.from_texts("Q?", ["a", "b"]))
