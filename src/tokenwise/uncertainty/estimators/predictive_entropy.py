"""Predictive entropy: the Monte-Carlo estimate of the entropy of the answer distribution."""

from __future__ import annotations

import numpy as np

from tokenwise.uncertainty.estimators.base import Estimator
from tokenwise.uncertainty.samples import SampleSet


class PredictiveEntropy(Estimator):
    """``-mean_i log p(a_i)`` over the sampled answers (Kadavath et al.; Kuhn et al. 2023).

    Every sample counts, duplicates included: they are draws of a Monte-Carlo average.

    Args:
        length_normalised: use each answer's mean token log-probability instead of its
            total log-likelihood (the reference's default "regular entropy").

    Example:
        >>> from tokenwise.uncertainty import SampleSet
        >>> s = SampleSet.from_texts("Q?", ["a", "b"], logprobs=[[-1.0, -1.0], [-4.0]])
        >>> PredictiveEntropy()(s), PredictiveEntropy(length_normalised=True)(s)
        (3.0, 2.5)
    """

    name = "predictive_entropy"
    needs_logprobs = True

    def __init__(self, length_normalised: bool = False):
        self.length_normalised = bool(length_normalised)

    def estimate(self, samples: SampleSet) -> float:
        return float(-np.mean(samples.log_likelihoods(self.length_normalised)))
