"""What every estimator is: a callable ``SampleSet -> float``, higher = less certain."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar

from tokenwise.errors import TokenwiseError
from tokenwise.uncertainty.samples import SampleSet


class Estimator(ABC):
    """An uncertainty estimator: ``estimator(sample_set) -> float``, higher = less certain.

    Subclasses set :attr:`name` and :attr:`needs_logprobs` and implement :meth:`estimate`;
    calling the object checks the input and that the score is a number (never NaN).
    Statistics (clusters, embeddings) come from ``sample_set.stats`` so estimators that
    share an equivalence or embedder compute them once.
    """

    #: the registry name.
    name: ClassVar[str] = ""
    #: whether the estimator reads token log-probabilities.
    needs_logprobs: ClassVar[bool] = False

    def __call__(self, samples: SampleSet) -> float:
        if not isinstance(samples, SampleSet):
            raise TokenwiseError(f"{self.name}: expected a SampleSet, got {type(samples).__name__}"
                                 " (build one with sample_answers or SampleSet.from_texts)")
        if self.needs_logprobs and not samples.has_logprobs:
            raise TokenwiseError(
                f"{self.name} needs token log-probabilities and the answers have none; "
                "sample with sample_answers or pass logprobs= to SampleSet.from_texts")
        value = float(self.estimate(samples))
        if math.isnan(value):
            raise TokenwiseError(f"{self.name} gave NaN on question {samples.question!r}")
        return value

    @abstractmethod
    def estimate(self, samples: SampleSet) -> float:
        """The uncertainty score of ``samples`` (inputs already checked)."""

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"
