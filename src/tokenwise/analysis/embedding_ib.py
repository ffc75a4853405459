"""Compression vs meaning of embeddings ("From Tokens to Thoughts"): cluster word embeddings
and score each clustering by the information-bottleneck objective and by its agreement with
human categories.

For ``N`` words with embeddings ``x_i`` (each word equally likely, ``p(x) = 1/N``) and a hard
clustering ``c(i)``:

- complexity (rate) ``I(X; C) = H(C) = -sum_c (n_c/N) log(n_c/N)`` nats: with a deterministic
  assignment, the information the clusters keep about the words is the entropy of the
  cluster sizes;
- distortion ``D = sum_i |x_i - mu_c(i)|^2 / sum_i |x_i - mu|^2``: the share of the embeddings'
  variance the clusters lose (1 - R^2; 0 when every word is its own cluster, 1 with one);
- the IB objective ``L = I(X; C) + beta * D`` (lower is better: few bits, little distortion);
- meaning: adjusted mutual information ``AMI(C, Y)`` with human categories ``Y`` (0 for
  chance, 1 for the same partition; Vinh, Epps & Bailey 2010, arithmetic-mean normalisation).

The human categories are themselves a clustering, scored the same way
(:func:`score_partition`): the paper's finding is that LLM clusterings reach lower ``L``
(they compress harder) while the categories keep more distortion, that is more nuance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tokenwise.errors import TokenwiseError


@dataclass(frozen=True)
class PartitionScore:
    """One clustering of the words, scored.

    Attributes:
        k: clusters.
        complexity: ``I(X; C) = H(C)``, nats.
        distortion: within-cluster share of the variance (1 - R^2).
        objective: ``complexity + beta * distortion``.
        ami: adjusted mutual information with the categories (None without them).
        labels: the cluster of each word.
    """

    k: int
    complexity: float
    distortion: float
    objective: float
    ami: float | None
    labels: np.ndarray


def gammaln(x: Any) -> np.ndarray:
    """log Gamma(x), elementwise (torch's, so scipy is not needed)."""
    return torch.special.gammaln(torch.as_tensor(x, dtype=torch.float64)).numpy()


def _codes(labels: Sequence[Any]) -> np.ndarray:
    _, codes = np.unique(np.asarray(labels), return_inverse=True)
    return codes.reshape(-1)


def entropy(labels: Sequence[Any]) -> float:
    """Entropy (nats) of the label frequencies.

    Example:
        >>> round(entropy([0, 0, 1, 1]), 4)  # log 2
        0.6931
    """
    counts = np.bincount(_codes(labels)).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def mutual_information(a: Sequence[Any], b: Sequence[Any]) -> float:
    """Mutual information (nats) of two labelings of the same items.

    Example:
        >>> round(mutual_information([0, 0, 1, 1], ["x", "x", "y", "y"]), 4)
        0.6931
    """
    ca, cb = _codes(a), _codes(b)
    if len(ca) != len(cb):
        raise TokenwiseError(f"labelings of {len(ca)} and {len(cb)} items: allowed equal lengths")
    table = np.zeros((ca.max() + 1, cb.max() + 1))
    np.add.at(table, (ca, cb), 1.0)
    n = table.sum()
    pa, pb = table.sum(1, keepdims=True), table.sum(0, keepdims=True)
    nz = table > 0
    return float((table[nz] / n * np.log(table[nz] * n / (pa @ pb)[nz])).sum())


def expected_mutual_information(a: Sequence[Any], b: Sequence[Any]) -> float:
    """Expected MI of two labelings with these cluster sizes under random permutation.

    ``E[MI] = sum_ij sum_nij (nij/N) log(N nij / (a_i b_j)) P(nij)``, ``P`` hypergeometric.

    Example:
        >>> # 2 of the 6 orderings of [0, 0, 1, 1] align (MI = log 2), the others give 0
        >>> round(expected_mutual_information([0, 0, 1, 1], [0, 0, 1, 1]), 4)
        0.231
    """
    ca, cb = _codes(a), _codes(b)
    n = len(ca)
    sa, sb = np.bincount(ca), np.bincount(cb)
    out = 0.0
    for ai in sa:
        for bj in sb:
            lo, hi = max(1, ai + bj - n), min(ai, bj)
            if lo > hi:
                continue
            nij = np.arange(lo, hi + 1, dtype=np.float64)
            log_p = (gammaln(ai + 1) + gammaln(bj + 1) + gammaln(n - ai + 1)
                     + gammaln(n - bj + 1) - gammaln(n + 1) - gammaln(nij + 1)
                     - gammaln(ai - nij + 1) - gammaln(bj - nij + 1)
                     - gammaln(n - ai - bj + nij + 1))
            out += float((nij / n * np.log(n * nij / (ai * bj)) * np.exp(log_p)).sum())
    return out


def adjusted_mutual_information(a: Sequence[Any], b: Sequence[Any]) -> float:
    """``AMI = (MI - E[MI]) / (mean(H(a), H(b)) - E[MI])``: 1 for equal partitions, ~0 for
    independent ones (the arithmetic-mean form, scikit-learn's default).

    Example:
        >>> adjusted_mutual_information([0, 0, 1, 1], [5, 5, 7, 7])
        1.0
    """
    mi, emi = mutual_information(a, b), expected_mutual_information(a, b)
    ha, hb = entropy(a), entropy(b)
    if ha == hb == 0.0:
        return 1.0  # both one cluster: the same partition
    denom = (ha + hb) / 2 - emi
    return float((mi - emi) / denom) if denom > 1e-15 else 0.0


def distortion(x: np.ndarray, labels: Sequence[Any]) -> float:
    """Within-cluster sum of squares over the total (1 - R^2).

    Example:
        >>> distortion(np.array([[0.0], [0.0], [2.0], [2.0]]), [0, 0, 1, 1])
        0.0
    """
    x = np.asarray(x, dtype=np.float64)
    codes = _codes(labels)
    total = ((x - x.mean(0)) ** 2).sum()
    if total == 0:
        return 0.0
    within = 0.0
    for c in range(codes.max() + 1):
        members = x[codes == c]
        within += ((members - members.mean(0)) ** 2).sum()
    return float(within / total)


def score_partition(x: np.ndarray, labels: Sequence[Any], categories: Sequence[Any] | None = None,
                    beta: float = 1.0) -> PartitionScore:
    """Complexity, distortion, IB objective and AMI of one partition of the words.

    Args:
        x: ``(N, D)`` embeddings.
        labels: the cluster of each word.
        categories: the human category of each word (None: no AMI).
        beta: weight of the distortion in the objective.

    Example:
        >>> s = score_partition(np.eye(4), [0, 0, 1, 1], ["a", "a", "b", "b"])
        >>> round(s.complexity, 4), s.ami
        (0.6931, 1.0)
    """
    codes = _codes(labels)
    if len(codes) != len(x):
        raise TokenwiseError(f"{len(codes)} labels for {len(x)} embeddings: allowed one each")
    h = entropy(codes)
    d = distortion(x, codes)
    ami = None if categories is None else adjusted_mutual_information(codes, categories)
    return PartitionScore(k=int(codes.max() + 1), complexity=h, distortion=d,
                          objective=h + beta * d, ami=ami, labels=codes)


def kmeans(x: np.ndarray, k: int, *, seed: int = 0, n_init: int = 4, iters: int = 100
           ) -> np.ndarray:
    """k-means (k-means++ starts, Lloyd steps), the best of ``n_init`` runs by inertia.

    Args:
        x: ``(N, D)`` points.
        k: clusters, 1..N.
        seed: seeds the starts.
        n_init: independent starts.
        iters: Lloyd steps at most per start.

    Returns:
        ``(N,)`` cluster of each point.

    Example:
        >>> x = np.array([[0.0], [0.1], [5.0], [5.1]])
        >>> labels = kmeans(x, 2)
        >>> bool(labels[0] == labels[1] != labels[2] == labels[3])
        True
    """
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if not 1 <= k <= n:
        raise TokenwiseError(f"k={k}: allowed 1..{n} (the number of points)")
    rng = np.random.default_rng(seed)
    best, best_inertia = np.zeros(n, dtype=np.int64), np.inf
    sq = (x * x).sum(1)
    for _ in range(n_init):
        centres = [x[rng.integers(n)]]
        d2 = ((x - centres[0]) ** 2).sum(1)
        for _ in range(1, k):
            p = d2 / d2.sum() if d2.sum() > 0 else np.full(n, 1 / n)
            centres.append(x[rng.choice(n, p=p)])
            d2 = np.minimum(d2, ((x - centres[-1]) ** 2).sum(1))
        c = np.array(centres)
        labels = np.full(n, -1)
        for _ in range(iters):
            dist = sq[:, None] - 2 * x @ c.T + (c * c).sum(1)[None]  # (N, k)
            new = dist.argmin(1)
            if np.array_equal(new, labels):
                break
            labels = new
            for j in range(k):
                members = x[labels == j]
                c[j] = members.mean(0) if len(members) else x[rng.integers(n)]
        inertia = float(((x - c[labels]) ** 2).sum())
        if inertia < best_inertia:
            best, best_inertia = labels.copy(), inertia
    return best


def ib_curve(x: np.ndarray, categories: Sequence[Any] | None = None,
             ks: Sequence[int] = (2, 4, 8, 16, 32, 64), *, beta: float = 1.0, seed: int = 0
             ) -> list[PartitionScore]:
    """k-means clusterings of the embeddings at each ``k``, scored (one point per ``k``).

    Args:
        x: ``(N, D)`` embeddings.
        categories: the human category of each word (None: no AMI).
        ks: cluster counts (each 1..N).
        beta: weight of the distortion in the objective.
        seed: seeds k-means.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> x = np.repeat(np.eye(3) * 10, 5, axis=0) + rng.normal(size=(15, 3))
        >>> [round(p.ami, 3) for p in ib_curve(x, np.repeat([0, 1, 2], 5), ks=[3])]
        [1.0]
    """
    return [score_partition(x, kmeans(x, k, seed=seed), categories, beta) for k in ks]


def word_embeddings(model: Any, words: Sequence[str], *, prefix: str = " "
                    ) -> tuple[np.ndarray, list[int]]:
    """Input-embedding vector of each word: the mean of its tokens' rows.

    Args:
        model: a :class:`~tokenwise.models.LanguageModel`.
        words: the words.
        prefix: put in front of each word before encoding (a word inside a sentence
            starts with a space).

    Returns:
        ``(N, D)`` embeddings and the token count of each word.

    Example:
        >>> from tokenwise.models import load
        >>> x, counts = word_embeddings(load("tw-small"), ["doctor", "dog"])
        >>> x.shape[0], counts[1] >= 1
        (2, True)
    """
    table = model.hf_model.get_input_embeddings().weight.detach().float().cpu().numpy()
    rows, counts = [], []
    for w in words:
        ids = model.encode(prefix + w)
        if not ids:
            raise TokenwiseError(f"word {w!r} encodes to no tokens")
        rows.append(table[ids].mean(0))
        counts.append(len(ids))
    return np.stack(rows), counts
