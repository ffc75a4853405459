"""Maximum sequence probability: reference vs samples, missing reference."""

from __future__ import annotations

import pytest

from tokenwise.errors import TokenwiseError
from tokenwise.uncertainty import Answer, SampleSet
from tokenwise.uncertainty.estimators.maximum_sequence_probability import (
    MaximumSequenceProbability,
)


def test_reference_and_samples():
    ref = Answer("a", token_logprobs=(-0.2, -0.4))
    s = SampleSet.from_texts("Q?", ["a", "b"], logprobs=[[-0.3], [-2.0, -1.0]], reference=ref)
    assert MaximumSequenceProbability()(s) == pytest.approx(0.6)
    assert MaximumSequenceProbability(length_normalised=True)(s) == pytest.approx(0.3)
    assert MaximumSequenceProbability("samples")(s) == pytest.approx(0.3)
    assert MaximumSequenceProbability("samples", length_normalised=True)(s) == pytest.approx(0.3)


def test_missing_reference_or_logprobs():
    s = SampleSet.from_texts("Q?", ["a", "b"], logprobs=[-1.0, -2.0])
    with pytest.raises(TokenwiseError, match="source='samples'"):
        MaximumSequenceProbability()(s)
    s2 = SampleSet.from_texts("Q?", ["a", "b"], reference="a")
    with pytest.raises(TokenwiseError, match="reference answer with token"):
        MaximumSequenceProbability()(s2)
    with pytest.raises(TokenwiseError, match="no log-probs"):
        MaximumSequenceProbability("samples")(s2)
    with pytest.raises(TokenwiseError, match="source="):
        MaximumSequenceProbability("greedy")
