"""Number of semantic sets."""

from __future__ import annotations

from tokenwise.uncertainty import SampleSet
from tokenwise.uncertainty.estimators.num_semantic_sets import NumSemanticSets

from .helpers import FIRST_LETTER


def test_counts_meanings_with_empty_answers_as_one():
    s = SampleSet.from_texts("Q?", ["apple", "avocado", "", "banana", " "])
    assert NumSemanticSets(FIRST_LETTER)(s) == 3.0
