"""Semantic entropy (Kuhn et al. 2023; Farquhar et al., Nature 2024): entropy over meanings."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import numpy as np

from tokenwise.errors import TokenwiseError
from tokenwise.uncertainty.equivalence import Equivalence, equivalence_or_default
from tokenwise.uncertainty.estimators.base import Estimator
from tokenwise.uncertainty.samples import SampleSet


def logsumexp(values: np.ndarray | list[float]) -> float:
    """``log Σ exp(v)`` without overflow; -inf when every value is -inf (numpy only)."""
    v = np.asarray(values, dtype=np.float64)
    top = v.max()
    if not np.isfinite(top):
        return float(top)
    return float(top + np.log(np.exp(v - top).sum()))


def cluster_log_masses(samples: SampleSet, equivalence: Equivalence,
                       length_normalised: bool = False, unique: bool = True) -> np.ndarray:
    """``(k,)`` un-normalised log-mass of each meaning cluster (by cluster id).

    With ``unique=True`` a cluster's mass is the probability of the distinct sequences
    sampled in it: answers with the same text and the same log-likelihood (to 1e-9) are
    one sequence drawn several times and count once; the same text with a different
    log-likelihood is a different token sequence (another tokenisation) and adds its
    own mass. So ``log p(c) = logsumexp`` over the distinct (text, log-likelihood) pairs
    in ``c``; the result does not depend on the order of the answers. With
    ``unique=False`` every sample adds its mass (the reference code and lm-polygraph).

    Args:
        samples: the sample set (with log-probabilities).
        equivalence: the meaning relation.
        length_normalised: use mean token log-probabilities (the reference's default).
        unique: count repeated sequences once.
    """
    ids = samples.stats.clusters(equivalence).ids
    lls = samples.log_likelihoods(length_normalised)
    members: dict[int, list[float]] = defaultdict(list)
    seen: set[tuple[str, float]] = set()
    for cid, text, ll in zip(ids, samples.texts, lls, strict=True):
        key = (text, round(float(ll), 9))
        if unique and key in seen:
            continue
        seen.add(key)
        members[cid].append(float(ll))
    return np.array([logsumexp(members[c]) for c in range(len(members))])


def entropy_of_log_masses(log_masses: np.ndarray) -> float:
    """``-Σ p log p`` of the normalised masses (0 terms contribute 0, never NaN)."""
    finite = np.isfinite(log_masses)
    if not finite.any():
        raise TokenwiseError("every answer has log-probability -inf: the cluster masses are "
                             "all zero and the entropy is undefined")
    logp = log_masses[finite] - logsumexp(log_masses[finite])
    return float(-(np.exp(logp) * logp).sum()) + 0.0  # + 0.0: no -0.0 for one cluster


class SemanticEntropy(Estimator):
    """Entropy of the distribution over meaning clusters, weighted by the model's likelihoods.

    ``p(c) = Σ_{a in c} p(a) / Σ_a p(a)`` over the distinct sampled answers (see
    :func:`cluster_log_masses` for how repeats are counted), and
    ``SE = -Σ_c p(c) log p(c)`` (``estimator="rao"``, the Nature paper's code). The
    Monte-Carlo form ``SE = -1/n Σ_i log p(c(a_i))`` over the n samples
    (``estimator="mc"``, Kuhn et al. 2023 and lm-polygraph) is also offered; lm-polygraph
    uses it with un-normalised masses (``normalise=False``) and ``unique=False``.

    Args:
        equivalence: meaning relation (an :class:`~tokenwise.uncertainty.Equivalence` or
            a callable ``(question, a, b) -> bool``); None = the shared
            :func:`~tokenwise.uncertainty.equivalence.default_equivalence`.
        length_normalised: weight each answer by its mean token log-probability (the
            default, as the reference code of the Nature paper does: its answers' lengths
            then do not decide its cluster's mass), or with False by its sequence
            log-likelihood. How the two compare on the fact world: see BENCHMARKS.md,
            section "Uncertainty of answers on the fact world".
        unique: count a repeated sequence once in its cluster's mass.
        estimator: ``"rao"`` or ``"mc"``.
        normalise: divide the cluster masses by their sum (always True for "rao").

    Example:
        >>> from tokenwise.uncertainty import SampleSet, ExactEquivalence
        >>> import math
        >>> s = SampleSet.from_texts("Q?", ["a dog", "a dog", "a cat"],
        ...                          logprobs=[math.log(.3), math.log(.3), math.log(.1)])
        >>> round(SemanticEntropy(ExactEquivalence())(s), 4)  # repeat counted once: p = (.75, .25)
        0.5623
    """

    name = "semantic_entropy"
    needs_logprobs = True

    def __init__(self, equivalence: Equivalence | Callable[[str, str, str], bool] | None = None,
                 length_normalised: bool = True, unique: bool = True, estimator: str = "rao",
                 normalise: bool = True):
        if estimator not in ("rao", "mc"):
            raise TokenwiseError(f"estimator={estimator!r}: allowed 'rao' or 'mc'")
        if estimator == "rao" and not normalise:
            raise TokenwiseError("estimator='rao' needs normalise=True (an entropy of "
                                 "un-normalised masses is not an entropy)")
        self.equivalence = equivalence_or_default(equivalence)
        self.length_normalised = bool(length_normalised)
        self.unique = bool(unique)
        self.estimator = estimator
        self.normalise = bool(normalise)

    def estimate(self, samples: SampleSet) -> float:
        masses = cluster_log_masses(samples, self.equivalence, self.length_normalised,
                                    self.unique)
        if self.estimator == "rao":
            return entropy_of_log_masses(masses)
        if self.normalise:
            masses = masses - logsumexp(masses)
        ids = samples.stats.clusters(self.equivalence).ids
        return float(-np.mean([masses[c] for c in ids]))
