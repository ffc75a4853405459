"""Uncertainty of answers: sample sets, meaning clusters, estimators.

Sample answers once (:func:`sample_answers`, or :meth:`SampleSet.from_texts` for answers
generated elsewhere); every estimator reads the same :class:`SampleSet` and its shared
statistics (clusters, embeddings). Higher scores mean less certain.

Example:
    >>> from tokenwise.uncertainty import SampleSet, ExactEquivalence, get
    >>> s = SampleSet.from_texts("Where?", ["Velmora", "velmora.", "Kastrin", "Velmora"])
    >>> s.stats.clusters(ExactEquivalence()).ids
    (0, 0, 1, 0)
    >>> round(get("discrete_semantic_entropy", equivalence=ExactEquivalence())(s), 4)
    0.5623
"""

from tokenwise.uncertainty import metrics
from tokenwise.uncertainty.embedding import Embedder, FunctionEmbedder, HFEmbedder
from tokenwise.uncertainty.equivalence import (
    Clustering,
    EmbeddingEquivalence,
    Equivalence,
    ExactEquivalence,
    FunctionEquivalence,
    as_equivalence,
    cluster,
    default_equivalence,
    normalise_text,
)
from tokenwise.uncertainty.estimators import Estimator, get, names
from tokenwise.uncertainty.gaap import gaap
from tokenwise.uncertainty.nli import NLIEquivalence
from tokenwise.uncertainty.perturbation import add_paraphrases, paraphrase_questions
from tokenwise.uncertainty.samples import (
    Answer,
    ParaphraseGroup,
    SampleSet,
    SampleStats,
    sample_answers,
)
from tokenwise.uncertainty.seed_grpo import scale_advantages
from tokenwise.uncertainty.tsu import temperature_sensitivity, tsu

__all__ = [
    "Answer",
    "Clustering",
    "Embedder",
    "EmbeddingEquivalence",
    "Equivalence",
    "Estimator",
    "ExactEquivalence",
    "FunctionEmbedder",
    "FunctionEquivalence",
    "HFEmbedder",
    "NLIEquivalence",
    "ParaphraseGroup",
    "SampleSet",
    "SampleStats",
    "add_paraphrases",
    "as_equivalence",
    "cluster",
    "default_equivalence",
    "gaap",
    "get",
    "metrics",
    "names",
    "normalise_text",
    "paraphrase_questions",
    "sample_answers",
    "scale_advantages",
    "temperature_sensitivity",
    "tsu",
]
