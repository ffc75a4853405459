"""Number of semantic sets (Lin et al. 2023): how many distinct meanings were sampled."""

from __future__ import annotations

from collections.abc import Callable

from tokenwise.uncertainty.equivalence import Equivalence, equivalence_or_default
from tokenwise.uncertainty.estimators.base import Estimator
from tokenwise.uncertainty.samples import SampleSet


class NumSemanticSets(Estimator):
    """The number of meaning clusters among the n samples (1..n).

    Args:
        equivalence: meaning relation; None = the shared default.

    Example:
        >>> from tokenwise.uncertainty import SampleSet, ExactEquivalence
        >>> NumSemanticSets(ExactEquivalence())(SampleSet.from_texts("Q?", ["a", "A", "b"]))
        2.0
    """

    name = "num_semantic_sets"

    def __init__(self, equivalence: Equivalence | Callable[[str, str, str], bool] | None = None):
        self.equivalence = equivalence_or_default(equivalence)

    def estimate(self, samples: SampleSet) -> float:
        return float(samples.stats.clusters(self.equivalence).n_clusters)
