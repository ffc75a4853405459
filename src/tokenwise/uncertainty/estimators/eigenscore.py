"""EigenScore (Chen et al. 2024, INSIDE): log-determinant of the embeddings' covariance."""

from __future__ import annotations

import numpy as np

from tokenwise.errors import TokenwiseError
from tokenwise.uncertainty.embedding import Embedder, default_embedder
from tokenwise.uncertainty.estimators.base import Estimator
from tokenwise.uncertainty.estimators.semantic_volume import check_eps, log_det_psd
from tokenwise.uncertainty.samples import SampleSet


def eigenscore(vectors: np.ndarray, alpha: float = 1e-3, center: str = "samples") -> float:
    """``(1/n) log det(C + alpha I)`` with ``C`` the ``n × n`` centred covariance of the
    embeddings: the mean log-eigenvalue of the regularised covariance.

    ``center="samples"`` subtracts the mean embedding (``C = Zc Zc^T / d`` with
    ``Zc = Z - mean_rows(Z)``): the spread of the answers around their centre, so
    identical answers give the floor ``log alpha``. ``center="features"`` follows the
    formula printed in INSIDE (``Z^T J_d Z`` with ``J_d`` centring each embedding over its
    own ``d`` features). Unlike :func:`~tokenwise.uncertainty.estimators.semantic_volume.
    semantic_volume` the rows are not normalised here; the estimator passes normalised
    sentence embeddings.

    Args:
        vectors: ``(n, d)`` embeddings.
        alpha: ridge (INSIDE uses 1e-3).
        center: ``"samples"`` or ``"features"``.

    Example:
        >>> bool(np.isclose(eigenscore(np.ones((4, 3))), np.log(1e-3)))
        True
    """
    alpha = check_eps(alpha)
    z = np.asarray(vectors, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] < 2:
        raise TokenwiseError(f"vectors of shape {z.shape}: expected (n >= 2, d)")
    n, d = z.shape
    if center == "samples":
        zc = z - z.mean(0, keepdims=True)  # (n, d)
    elif center == "features":
        zc = z - z.mean(1, keepdims=True)  # (n, d)
    else:
        raise TokenwiseError(f"center={center!r}: allowed 'samples' or 'features'")
    cov = zc @ zc.T / d  # (n, n)
    return log_det_psd(cov + alpha * np.eye(n)) / n


class EigenScore(Estimator):
    """:func:`eigenscore` of the sampled answers' sentence embeddings.

    INSIDE embeds with the generating model's own middle-layer state; any
    :class:`~tokenwise.uncertainty.embedding.Embedder` can be passed (MiniLM by default).

    Args:
        embedder: the embedder; None = MiniLM.
        alpha: ridge.
        center: ``"samples"`` (covariance) or ``"features"`` (INSIDE's printed formula).

    Example:
        >>> from tokenwise.uncertainty import SampleSet, FunctionEmbedder
        >>> emb = FunctionEmbedder(lambda ts: [[1.0, 0.0]] * len(ts))
        >>> round(EigenScore(emb)(SampleSet.from_texts("Q?", ["x", "y"])), 4)
        -6.9078
    """

    name = "eigenscore"

    def __init__(self, embedder: Embedder | None = None, alpha: float = 1e-3,
                 center: str = "samples"):
        if center not in ("samples", "features"):
            raise TokenwiseError(f"center={center!r}: allowed 'samples' or 'features'")
        self.embedder = default_embedder() if embedder is None else embedder
        self.alpha = check_eps(alpha)
        self.center = center

    def estimate(self, samples: SampleSet) -> float:
        return eigenscore(samples.stats.embeddings(self.embedder, "answers"), self.alpha,
                          self.center)
