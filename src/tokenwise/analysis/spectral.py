"""Spectral view of the prediction head ("A Markov Categorical Framework for Language
Modeling": NLL training as implicit spectral contrastive learning).

Contexts ``c`` occur with probability ``pi(c)`` and are followed by token ``v`` with probability
``P(v | c)``; the next-token marginal is ``p(v) = sum_c pi(c) P(v | c)``. Two tokens are similar
when the same contexts predict them. The **predictive similarity operator** on the ``V`` tokens
is the normalised co-prediction matrix::

    S(v, w) = sum_c pi(c) P(v | c) P(w | c) / sqrt(p(v) p(w))      (S = M^T M,
    M(c, v) = sqrt(pi(c)) P(v | c) / sqrt(p(v)))

the normalised adjacency of the graph that joins two independent draws of the next token from
the same context (the "positive pairs" of spectral contrastive learning, HaoChen et al. 2021).
``S`` is symmetric positive semi-definite with eigenvalues in [0, 1]; its top eigenvector is the
trivial ``sqrt(p)`` (eigenvalue 1). The spectral contrastive optimum embeds token ``v`` by the
next ``k`` eigenvectors, scaled by ``1 / sqrt(p(v))``.

The head side: the rows ``w_v`` of the output embedding (lm_head weight, ``V x D``). Logits are
unchanged when one vector is added to every row, so the rows are centred at their
``p``-weighted mean and weighted like ``M``'s columns::

    A = diag(sqrt(p)) (W - 1 p^T W)

``A``'s columns are orthogonal to ``sqrt(p)``, as the non-trivial eigenvectors are. The
**alignment** at ``k`` compares the span ``U_k`` of ``A``'s top-``k`` left singular vectors with
the span ``E_k`` of ``S``'s top-``k`` non-trivial eigenvectors: the principal cosines are the
singular values of ``U_k^T E_k``, and the overlap is their mean square::

    overlap_k = ||U_k^T E_k||_F^2 / k      (1: the same subspace, 0: orthogonal)

Two random subspaces of the ``(V - 1)``-dimensional complement of ``sqrt(p)`` have expected
overlap ``k / (V - 1)``; a random head of the same shape, weighted by the same ``p``, is the
fairer baseline (:func:`random_head_overlaps`), since the weighting alone pulls both spans
towards frequent tokens.

For the testbed's Markov source everything is exact (:func:`markov_contexts`): the contexts are
the line start and the previous symbol, ``P`` is the initial distribution and the transition
matrix, ``pi`` their position-averaged probabilities over a line. On real text ``P`` is
estimated by a model's own predictions (:func:`model_contexts`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tokenwise.errors import TokenwiseError


@dataclass(frozen=True)
class PredictiveOperator:
    """The predictive similarity operator ``S`` and the marginal it is normalised by.

    Attributes:
        matrix: ``(V, V)`` ``S(v, w)``.
        marginal: ``(V,)`` next-token marginal ``p(v)``.
    """

    matrix: np.ndarray
    marginal: np.ndarray

    def eigen(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The top ``k`` non-trivial eigenvalues ``(k,)`` and eigenvectors ``(V, k)`` of ``S``.

        The trivial direction ``sqrt(p)`` is projected out first, so it is never returned.
        """
        v = len(self.marginal)
        if not 1 <= k <= v - 1:
            raise TokenwiseError(f"k={k}: allowed 1..{v - 1} (tokens - 1)")
        q = np.sqrt(self.marginal)[:, None]
        proj = np.eye(v) - q @ q.T
        vals, vecs = np.linalg.eigh(proj @ self.matrix @ proj)
        order = np.argsort(vals)[::-1][:k]
        return vals[order], vecs[:, order]


@dataclass(frozen=True)
class SpectralAlignment:
    """Alignment of a head's singular subspaces with the operator's eigenspaces.

    Attributes:
        ks: the subspace dimensions compared.
        overlap: ``overlap_k`` for each ``k``.
        chance: ``k / (V - 1)``, the expected overlap of random subspaces.
        cosines: principal cosines at each ``k`` (descending).
        eigenvalues: ``S``'s top non-trivial eigenvalues (``max(ks)`` of them).
        singular_values: ``A``'s top singular values (``max(ks)`` of them).
    """

    ks: tuple[int, ...]
    overlap: tuple[float, ...]
    chance: tuple[float, ...]
    cosines: tuple[np.ndarray, ...]
    eigenvalues: np.ndarray
    singular_values: np.ndarray


def _check_contexts(probs: Any, weights: Any | None) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] < 1 or p.shape[1] < 2:
        raise TokenwiseError(f"probs shape {p.shape}: allowed (contexts, tokens >= 2)")
    if (p < 0).any() or not np.allclose(p.sum(1), 1.0, atol=1e-6):
        raise TokenwiseError("probs: allowed rows of non-negative numbers summing to 1")
    w = np.full(len(p), 1.0 / len(p)) if weights is None else np.asarray(weights, np.float64)
    if w.shape != (len(p),) or (w < 0).any() or not abs(w.sum() - 1.0) < 1e-6:
        raise TokenwiseError(f"weights shape {w.shape}: allowed {len(p)} non-negative numbers "
                             "summing to 1 (one per context)")
    return p, w


def predictive_similarity(probs: Any, weights: Any | None = None) -> PredictiveOperator:
    """``S(v, w) = sum_c pi(c) P(v|c) P(w|c) / sqrt(p(v) p(w))`` from the contexts' rows.

    Args:
        probs: ``(C, V)`` next-token distributions ``P(. | c)``, rows summing to 1.
        weights: ``(C,)`` context probabilities ``pi(c)`` summing to 1 (default uniform).

    Returns:
        The operator and the marginal ``p``. Every token needs ``p(v) > 0``.

    Example:
        >>> op = predictive_similarity([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]])
        >>> bool(np.allclose(op.matrix @ np.sqrt(op.marginal), np.sqrt(op.marginal)))
        True
    """
    p, w = _check_contexts(probs, weights)
    marginal = w @ p
    dead = np.flatnonzero(marginal <= 0)
    if len(dead):
        raise TokenwiseError(f"token {int(dead[0])} has marginal probability 0: allowed only "
                             "tokens some context predicts")
    m = np.sqrt(w)[:, None] * p / np.sqrt(marginal)[None, :]
    return PredictiveOperator(m.T @ m, marginal)


def head_matrix(head: Any, marginal: np.ndarray) -> np.ndarray:
    """``A = diag(sqrt(p)) (W - 1 p^T W)``: the head's rows, centred and weighted.

    Args:
        head: ``(V, D)`` output-embedding rows of the operator's tokens.
        marginal: ``(V,)`` the marginal ``p``.

    Example:
        >>> a = head_matrix(np.eye(2), np.array([0.5, 0.5]))
        >>> bool(np.allclose(np.sqrt([0.5, 0.5]) @ a, 0))
        True
    """
    w = np.asarray(head, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] != len(marginal):
        raise TokenwiseError(f"head shape {w.shape}: allowed ({len(marginal)}, D), one row per "
                             "token of the operator")
    return np.sqrt(marginal)[:, None] * (w - marginal @ w)


def principal_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosines of the principal angles between the spans of two orthonormal bases, descending.

    Example:
        >>> principal_cosines(np.eye(3)[:, :2], np.eye(3)[:, 1:]).round(6).tolist()
        [1.0, 0.0]
    """
    return np.clip(np.linalg.svd(a.T @ b, compute_uv=False), 0.0, 1.0)


def subspace_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """``||a^T b||_F^2 / k`` for orthonormal ``(n, k)`` bases: the mean squared principal cosine.

    Example:
        >>> subspace_overlap(np.eye(3)[:, :2], np.eye(3)[:, 1:])
        0.5
    """
    if a.shape != b.shape:
        raise TokenwiseError(f"bases of shapes {a.shape} and {b.shape}: allowed equal shapes")
    return float(np.sum((a.T @ b) ** 2) / a.shape[1])


def spectral_alignment(head: Any, probs: Any, weights: Any | None = None,
                       ks: Sequence[int] = (1, 2, 4, 8)) -> SpectralAlignment:
    """Overlap of the head's top-``k`` singular subspace with ``S``'s top-``k`` eigenspace.

    Args:
        head: ``(V, D)`` output-embedding rows, in the order of ``probs``' columns.
        probs: ``(C, V)`` next-token distributions of the contexts.
        weights: ``(C,)`` context probabilities (default uniform).
        ks: subspace dimensions, each in ``1..min(V - 1, D)``.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> probs = rng.dirichlet(np.ones(6), size=10)
        >>> op = predictive_similarity(probs)
        >>> _, e = op.eigen(3)
        >>> head = e / np.sqrt(op.marginal)[:, None]  # the spectral-contrastive embedding
        >>> spectral_alignment(head, probs, ks=(3,)).overlap[0]  # doctest: +ELLIPSIS
        1.0...
    """
    op = predictive_similarity(probs, weights)
    a = head_matrix(head, op.marginal)
    v, d = a.shape
    ks = tuple(int(k) for k in ks)
    bad = [k for k in ks if not 1 <= k <= min(v - 1, d)]
    if not ks or bad:
        raise TokenwiseError(f"ks={list(ks)}: allowed 1..{min(v - 1, d)} (tokens - 1, head "
                             "width)")
    kmax = max(ks)
    vals, e = op.eigen(kmax)
    u, s, _ = np.linalg.svd(a, full_matrices=False)
    overlap, cos = [], []
    for k in ks:
        overlap.append(subspace_overlap(u[:, :k], e[:, :k]))
        cos.append(principal_cosines(u[:, :k], e[:, :k]))
    return SpectralAlignment(ks, tuple(overlap), tuple(k / (v - 1) for k in ks), tuple(cos),
                             vals, s[:kmax])


def random_head_overlaps(shape: tuple[int, int], probs: Any, weights: Any | None = None,
                         ks: Sequence[int] = (1, 2, 4, 8), n: int = 200, seed: int = 0
                         ) -> np.ndarray:
    """Overlaps of ``n`` Gaussian heads of ``shape`` with the same operator: ``(n, len(ks))``.

    Args:
        shape: ``(V, D)`` of the head they stand in for.
        probs: as in :func:`spectral_alignment`.
        weights: as in :func:`spectral_alignment`.
        ks: as in :func:`spectral_alignment`.
        n: random heads.
        seed: their seed.

    Example:
        >>> probs = np.random.default_rng(0).dirichlet(np.ones(5), size=8)
        >>> random_head_overlaps((5, 4), probs, ks=(1, 2), n=3).shape
        (3, 2)
    """
    rng = np.random.default_rng(seed)
    return np.array([spectral_alignment(rng.standard_normal(shape), probs, weights, ks).overlap
                     for _ in range(n)])


def markov_contexts(source: Any) -> tuple[np.ndarray, np.ndarray]:
    """The exact contexts of a :class:`~tokenwise.testbed.MarkovSource` line.

    Context 0 is the line start (``P`` = the initial distribution), context ``1 + s`` the
    previous symbol ``s`` (``P`` = transition row ``s``); ``pi`` is each context's probability
    at a uniformly chosen one of the line's ``length`` symbol positions.

    Returns:
        ``(K + 1, K)`` probs and ``(K + 1,)`` weights.

    Example:
        >>> from tokenwise.testbed import MarkovSource
        >>> probs, w = markov_contexts(MarkovSource(0, length=1))
        >>> w.tolist()[:2], probs.shape
        ([1.0, 0.0], (17, 16))
    """
    k = len(source.initial)
    w = np.zeros(k + 1)
    w[0] = 1.0
    dist = np.asarray(source.initial, dtype=np.float64)
    for _ in range(source.length - 1):
        w[1:] += dist
        dist = dist @ source.transition
    probs = np.vstack([source.initial, source.transition]).astype(np.float64)
    return probs, w / source.length


def head_rows(model: Any, token_ids: Sequence[int]) -> np.ndarray:
    """The output-embedding (lm_head weight) rows of ``token_ids`` as float64, ``(n, D)``.

    Example:
        >>> from tokenwise.models import load
        >>> head_rows(load("tw-small"), [5, 6]).shape
        (2, 128)
    """
    weight = model.hf_model.get_output_embeddings().weight
    ids = torch.as_tensor(list(token_ids), dtype=torch.long)
    if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= weight.shape[0]):
        raise TokenwiseError(f"token ids {int(ids.min())}..{int(ids.max())}: allowed "
                             f"0..{weight.shape[0] - 1}")
    return weight.detach()[ids].double().cpu().numpy()


@torch.inference_mode()
def model_contexts(model: Any, texts: Sequence[str], token_ids: Sequence[int],
                   chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Contexts estimated by a model's own predictions on real text, over a token subset.

    Every position ``t`` of every text is a context; ``P(v | c)`` is the model's next-token
    distribution conditioned on the next token lying in ``token_ids`` (``P(v|c) / m(c)`` with
    ``m(c) = sum_{u in token_ids} P(u|c)``), and ``pi(c)`` is proportional to ``m(c)``:
    together the model's joint ``P(c, v)`` restricted to the subset. Texts longer than
    ``chunk`` tokens are read in independent chunks.

    Args:
        model: a :class:`~tokenwise.models.LanguageModel`.
        texts: the texts.
        token_ids: the tokens of the operator (distinct).
        chunk: tokens per forward pass.

    Returns:
        ``(N, len(token_ids))`` probs and ``(N,)`` weights.

    Example:
        >>> from tokenwise.models import load
        >>> probs, w = model_contexts(load("tw-small"), ["markov: ka lo mi"], [353, 312])
        >>> probs.shape[1], bool(np.isclose(w.sum(), 1.0))
        (2, True)
    """
    ids_sel = torch.as_tensor(list(token_ids), dtype=torch.long)
    if len(set(ids_sel.tolist())) != len(ids_sel) or len(ids_sel) < 2:
        raise TokenwiseError("token_ids: allowed at least 2 distinct ids")
    if chunk < 2:
        raise TokenwiseError(f"chunk={chunk}: allowed >= 2")
    rows, mass = [], []
    for text in texts:
        ids = model.encode(text, add_bos=True)
        for start in range(0, max(len(ids) - 1, 1), chunk):
            piece = ids[start:start + chunk]
            if not piece:
                continue
            logits = model.forward(torch.tensor([piece])).logits[0].float()
            logp = torch.log_softmax(logits, -1)[:, ids_sel].double()
            m = torch.logsumexp(logp, -1)
            rows.append((logp - m[:, None]).exp().numpy())
            mass.append(m.exp().numpy())
    if not rows:
        raise TokenwiseError("texts: allowed at least one non-empty text")
    probs = np.vstack(rows)
    w = np.concatenate(mass)
    return probs / probs.sum(1, keepdims=True), w / w.sum()
