"""Uncertainty of answers: sample sets, meaning clusters, estimators.

Sample answers once (:func:`sample_answers`, or :meth:`SampleSet.from_texts` for answers
generated elsewhere); every estimator reads the same :class:`SampleSet` and its shared
statistics (clusters, embeddings). Higher scores mean less certain.

Example:
    >>> from tokenwise.uncertainty import SampleSet, cluster, ExactEquivalence
    >>> s = SampleSet.from_texts("Where?", ["Velmora", "velmora.", "Kastrin"])
    >>> s.stats.clusters(ExactEquivalence()).ids
    (0, 0, 1)
"""

from tokenwise.uncertainty.embedding import Embedder, FunctionEmbedder, HFEmbedder
from tokenwise.uncertainty.equivalence import (
    Clustering,
    EmbeddingEquivalence,
    Equivalence,
    ExactEquivalence,
    FunctionEquivalence,
    cluster,
    normalise_text,
)
from tokenwise.uncertainty.nli import NLIEquivalence
from tokenwise.uncertainty.samples import (
    Answer,
    ParaphraseGroup,
    SampleSet,
    SampleStats,
    sample_answers,
)

__all__ = [
    "Answer",
    "Clustering",
    "Embedder",
    "EmbeddingEquivalence",
    "Equivalence",
    "ExactEquivalence",
    "FunctionEmbedder",
    "FunctionEquivalence",
    "HFEmbedder",
    "NLIEquivalence",
    "ParaphraseGroup",
    "SampleSet",
    "SampleStats",
    "cluster",
    "normalise_text",
    "sample_answers",
]
