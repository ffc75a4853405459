"""Semantic Volume (arXiv 2502.21239): the volume spanned by the answers' (or questions')
embeddings."""

from __future__ import annotations

import numbers

import numpy as np

from tokenwise.errors import TokenwiseError
from tokenwise.uncertainty.embedding import Embedder, default_embedder
from tokenwise.uncertainty.estimators.base import Estimator
from tokenwise.uncertainty.samples import SampleSet


def log_det_psd(matrix: np.ndarray) -> float:
    """``log det`` of a symmetric positive-definite matrix, in float64 (Cholesky; slogdet
    when Cholesky fails on round-off)."""
    m = np.asarray(matrix, dtype=np.float64)
    try:
        chol = np.linalg.cholesky(m)
        return float(2.0 * np.log(np.diag(chol)).sum())
    except np.linalg.LinAlgError:
        sign, value = np.linalg.slogdet(m)
        if sign <= 0:
            raise TokenwiseError("the regularised Gram matrix is not positive definite; "
                                 "use a larger eps") from None
        return float(value)


def check_eps(eps: object) -> float:
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not eps > 0 \
            or not np.isfinite(eps):
        raise TokenwiseError(f"eps={eps!r}: allowed a finite number > 0")
    return float(eps)


def semantic_volume(vectors: np.ndarray, eps: float = 1e-3) -> float:
    """``log det(V V^T + eps I)`` for the L2-normalised rows of ``vectors`` ``(n, d)``.

    The ``n × n`` Gram matrix of unit vectors has ones on its diagonal, so the score is
    at most ``n log(1 + eps)`` (orthogonal vectors) and at least about
    ``log n + (n-1) log eps`` (identical vectors): eps sets the floor, and dominates
    when the spread is small. When ``d < n`` the Gram matrix has rank at most ``d``,
    so ``n - d`` eigenvalues are exactly eps: the value stays finite and well defined
    (the eps regulariser is what makes it so), but it can no longer grow in those
    directions; compare scores only across sets of the same ``n`` and ``d``.

    Args:
        vectors: ``(n, d)`` embeddings (normalised here).
        eps: the ridge added to the Gram matrix (> 0).

    Example:
        >>> bool(np.isclose(semantic_volume(np.eye(3)), 3 * np.log(1 + 1e-3)))
        True
    """
    eps = check_eps(eps)
    v = np.asarray(vectors, dtype=np.float64)
    if v.ndim != 2 or v.shape[0] < 1:
        raise TokenwiseError(f"vectors of shape {v.shape}: expected (n >= 1, d)")
    norms = np.linalg.norm(v, axis=1, keepdims=True)  # (n, 1)
    if not np.isfinite(v).all() or (norms == 0).any():
        raise TokenwiseError("embeddings must be finite and non-zero")
    v = v / norms
    gram = v @ v.T  # (n, n)
    return log_det_psd(gram + eps * np.eye(v.shape[0]))


class SemanticVolume(Estimator):
    """Semantic Volume of the sampled answers (internal uncertainty) or of the perturbed
    questions (external uncertainty): :func:`semantic_volume` of their embeddings.

    Repeated answers are repeated rows (a repeat makes the volume smaller: the samples
    are more concentrated).

    Args:
        embedder: any :class:`~tokenwise.uncertainty.embedding.Embedder`; None = MiniLM.
        source: ``"answers"`` (the sampled answers) or ``"questions"`` (the question and
            its paraphrases: needs at least one paraphrase group).
        eps: ridge added to the Gram matrix.
        condition_on_question: embed ``"question answer"`` (answers only).

    Example:
        >>> from tokenwise.uncertainty import SampleSet, FunctionEmbedder
        >>> emb = FunctionEmbedder(lambda ts: [[1.0, 0.0] if t == "x" else [0.0, 1.0] for t in ts])
        >>> s = SampleSet.from_texts("Q?", ["x", "y"])
        >>> bool(np.isclose(SemanticVolume(emb, eps=0.5)(s), 2 * np.log(1.5)))
        True
    """

    name = "semantic_volume"

    def __init__(self, embedder: Embedder | None = None, source: str = "answers",
                 eps: float = 1e-3, condition_on_question: bool = False):
        if source not in ("answers", "questions"):
            raise TokenwiseError(f"source={source!r}: allowed 'answers' or 'questions'")
        self.embedder = default_embedder() if embedder is None else embedder
        self.source = source
        self.eps = check_eps(eps)
        self.condition_on_question = bool(condition_on_question)

    def vectors(self, samples: SampleSet) -> np.ndarray:
        """The ``(n, d)`` embeddings the score is computed on."""
        if self.source == "questions":
            if not samples.paraphrases:
                raise TokenwiseError(f"{self.name} over questions needs paraphrase groups "
                                     "(see tokenwise.uncertainty.perturbation)")
            return samples.stats.embeddings(self.embedder, "questions")
        if self.condition_on_question:
            texts = [f"{samples.question} {t}" for t in samples.texts]
            return samples.stats.get("embeddings_with_question", id(self.embedder),
                                     lambda: self.embedder.embed(texts))
        return samples.stats.embeddings(self.embedder, "answers")

    def estimate(self, samples: SampleSet) -> float:
        return semantic_volume(self.vectors(samples), self.eps)
