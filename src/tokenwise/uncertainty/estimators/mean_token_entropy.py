"""Mean token entropy: how spread the model's next-token distribution was while answering."""

from __future__ import annotations

import math

from tokenwise.errors import TokenwiseError
from tokenwise.uncertainty.estimators.base import Estimator
from tokenwise.uncertainty.samples import Answer, SampleSet


def _mean_entropy(answer: Answer, what: str) -> float:
    ents = answer.token_entropies
    if not ents:
        raise TokenwiseError(f"mean_token_entropy: the {what} has no token entropies "
                             "(sample_answers records them; API answers usually lack them)")
    return math.fsum(ents) / len(ents)


class MeanTokenEntropy(Estimator):
    """Mean over the answer's tokens of the model's next-token entropy (nats).

    Args:
        source: ``"reference"`` (the low-temperature answer, as lm-polygraph scores its
            greedy output) or ``"samples"`` (the mean over sampled answers of each
            answer's mean token entropy).

    Example:
        >>> from tokenwise.uncertainty import Answer, SampleSet
        >>> a = Answer("x", token_logprobs=(-1.0, -1.0), token_entropies=(1.0, 2.0))
        >>> b = Answer("y", token_logprobs=(-1.0,), token_entropies=(0.5,))
        >>> s = SampleSet("Q?", (a, b), reference=b)
        >>> MeanTokenEntropy()(s), MeanTokenEntropy("samples")(s)
        (0.5, 1.0)
    """

    name = "mean_token_entropy"

    def __init__(self, source: str = "reference"):
        if source not in ("reference", "samples"):
            raise TokenwiseError(f"source={source!r}: allowed 'reference' or 'samples'")
        self.source = source

    def estimate(self, samples: SampleSet) -> float:
        if self.source == "samples":
            return math.fsum(_mean_entropy(a, f"answer {a.text!r}")
                             for a in samples.answers) / samples.n
        if samples.reference is None:
            raise TokenwiseError(f"{self.name} with source='reference' needs a reference "
                                 "answer; or use source='samples'")
        return _mean_entropy(samples.reference, "reference answer")
