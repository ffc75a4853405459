"""Discrete semantic entropy (Farquhar et al. 2024): meaning entropy from cluster counts."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tokenwise.uncertainty.equivalence import Equivalence, equivalence_or_default
from tokenwise.uncertainty.estimators.base import Estimator
from tokenwise.uncertainty.samples import SampleSet


class DiscreteSemanticEntropy(Estimator):
    """``-Σ_c f(c) log f(c)`` with ``f(c)`` the share of the n samples in cluster ``c``.

    Needs no log-probabilities (works on API answers). Every sample counts, repeats
    included: frequencies are how this estimator sees the answer distribution.

    Args:
        equivalence: meaning relation; None = the shared default.

    Example:
        >>> from tokenwise.uncertainty import SampleSet, ExactEquivalence
        >>> s = SampleSet.from_texts("Q?", ["dog", "Dog", "cat", "owl"])
        >>> round(DiscreteSemanticEntropy(ExactEquivalence())(s), 4)  # f = (.5, .25, .25)
        1.0397
    """

    name = "discrete_semantic_entropy"

    def __init__(self, equivalence: Equivalence | Callable[[str, str, str], bool] | None = None):
        self.equivalence = equivalence_or_default(equivalence)

    def estimate(self, samples: SampleSet) -> float:
        sizes = np.array(samples.stats.clusters(self.equivalence).sizes, dtype=np.float64)
        f = sizes / sizes.sum()
        return float(-(f * np.log(f)).sum()) + 0.0  # no -0.0 for one cluster
