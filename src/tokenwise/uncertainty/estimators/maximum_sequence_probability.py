"""Maximum sequence probability: how unlikely the model's own best answer is."""

from __future__ import annotations

from tokenwise.errors import TokenwiseError
from tokenwise.uncertainty.estimators.base import Estimator
from tokenwise.uncertainty.samples import SampleSet


class MaximumSequenceProbability(Estimator):
    """``-log p(answer)`` of the low-temperature reference answer (lm-polygraph's MSP).

    Args:
        source: ``"reference"`` (the low-temperature answer, the one whose correctness
            is judged; an error if the set has none or it has no log-probabilities) or
            ``"samples"`` (the most likely sampled answer: ``-max_i log p(a_i)``).
        length_normalised: use the mean token log-probability.

    Example:
        >>> from tokenwise.uncertainty import Answer, SampleSet
        >>> s = SampleSet.from_texts("Q?", ["a", "b"], logprobs=[-1.0, -3.0],
        ...                          reference=Answer("a", token_logprobs=(-0.5, -0.25)))
        >>> MaximumSequenceProbability()(s), MaximumSequenceProbability("samples")(s)
        (0.75, 1.0)
    """

    name = "maximum_sequence_probability"

    def __init__(self, source: str = "reference", length_normalised: bool = False):
        if source not in ("reference", "samples"):
            raise TokenwiseError(f"source={source!r}: allowed 'reference' or 'samples'")
        self.source = source
        self.length_normalised = bool(length_normalised)

    def estimate(self, samples: SampleSet) -> float:
        if self.source == "samples":
            if not samples.has_logprobs:
                raise TokenwiseError(f"{self.name}: the sampled answers have no log-probs")
            return float(-samples.log_likelihoods(self.length_normalised).max())
        ref = samples.reference
        if ref is None or not ref.has_logprobs:
            raise TokenwiseError(
                f"{self.name} with source='reference' needs a reference answer with token "
                "log-probabilities (sample_answers makes one); or use source='samples'")
        return -(ref.mean_logprob if self.length_normalised else ref.log_likelihood)
