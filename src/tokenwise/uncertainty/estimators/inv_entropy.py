"""Inv-Entropy (ref: UMDataScienceLab/Uncertainty-Quantification-for-LLMs): how spread the
questions are that could have led to the answers, by a dual random walk."""

from __future__ import annotations

import itertools
import math
import numbers
import random

import numpy as np

from tokenwise.errors import TokenwiseError
from tokenwise.uncertainty.embedding import Embedder, default_embedder
from tokenwise.uncertainty.estimators.base import Estimator
from tokenwise.uncertainty.samples import SampleSet


def _row_normalised_abs_cosine(vectors: np.ndarray) -> np.ndarray:
    v = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)  # (m, d)
    sim = np.abs(v @ v.T)  # (m, m); diagonal 1, so every row sum is >= 1
    return sim / sim.sum(1, keepdims=True)


def inv_entropy_once(question_vectors: np.ndarray, answer_vectors: np.ndarray) -> float:
    """Inv-Entropy of one draw: question ``i`` paired with answer ``i``.

    ``P_x`` and ``P_y`` are the row-normalised ``|cosine|`` similarity matrices of the
    questions and of the answers (transition matrices of two random walks);
    ``p(x|y) = P_y P_x`` and the score is ``-Σ_i q_i log q_i`` with ``q = diag(p(x|y))``
    (natural log), as in the reference's ``entropy_x_y``.

    Args:
        question_vectors: ``(m, d)`` embeddings of the m questions.
        answer_vectors: ``(m, d)`` embeddings of one answer to each question.

    Example:
        >>> abs(inv_entropy_once(np.eye(3), np.eye(3)))  # q_i = 1: nothing spread
        0.0
    """
    qv = np.asarray(question_vectors, dtype=np.float64)
    av = np.asarray(answer_vectors, dtype=np.float64)
    if qv.ndim != 2 or av.ndim != 2 or qv.shape[0] != av.shape[0] or qv.shape[0] < 2:
        raise TokenwiseError(f"question vectors {qv.shape} and answer vectors {av.shape}: "
                             "expected (m, d) and (m, d') with the same m >= 2")
    p_x = _row_normalised_abs_cosine(qv)  # (m, m)
    p_y = _row_normalised_abs_cosine(av)  # (m, m)
    q = np.diag(p_y @ p_x)  # (m,) all > 0: p_y, p_x have positive diagonals
    return float(-(q * np.log(q)).sum())


class InvEntropy(Estimator):
    """Inv-Entropy over the paraphrase groups of a sample set, averaged over draws.

    The set's paraphrase groups (the original question first, as
    :func:`~tokenwise.uncertainty.perturbation.add_paraphrases` builds them: the
    reference uses the original + 9 paraphrases, 5 answers each at T = 0.7) give m
    questions. Each draw keeps one answer per question and scores
    :func:`inv_entropy_once`; the result is the mean over ``draws`` distinct draws (the
    reference: 20). When there are no more distinct draws than ``draws``, every one is
    used once (the exact mean), so groups of one answer each give one draw. Draws are
    seeded, so the score is reproducible.

    Args:
        embedder: embeds questions and answers; None = MiniLM (the reference used
            all-mpnet-base-v2, which tokenwise cannot download).
        draws: number of draws (>= 1).
        seed: seed of the draws.

    Example:
        >>> from tokenwise.uncertainty import SampleSet, ParaphraseGroup, FunctionEmbedder
        >>> emb = FunctionEmbedder(lambda ts: [[1.0, float(len(t))] for t in ts])
        >>> groups = [ParaphraseGroup("Q one?", ("a",)), ParaphraseGroup("Q two??", ("bb",))]
        >>> s = SampleSet.from_texts("Q one?", ["a", "b"], paraphrases=groups)
        >>> InvEntropy(emb)(s) > 0
        True
    """

    name = "inv_entropy"

    def __init__(self, embedder: Embedder | None = None, draws: int = 20, seed: int = 333):
        if isinstance(draws, bool) or not isinstance(draws, numbers.Integral) or draws < 1:
            raise TokenwiseError(f"draws={draws!r}: allowed an integer >= 1")
        self.embedder = default_embedder() if embedder is None else embedder
        self.draws = int(draws)
        self.seed = seed

    def choices(self, sizes: list[int]) -> list[tuple[int, ...]]:
        """The draws: for each, the answer index kept in each group."""
        total = math.prod(sizes)
        if total <= self.draws:
            return list(itertools.product(*(range(s) for s in sizes)))
        rng = random.Random(self.seed)
        picked: dict[tuple[int, ...], None] = {}
        while len(picked) < self.draws:
            picked.setdefault(tuple(rng.randrange(s) for s in sizes), None)
        return list(picked)

    def estimate(self, samples: SampleSet) -> float:
        groups = samples.paraphrases
        if len(groups) < 2:
            raise TokenwiseError(
                f"{self.name} needs at least 2 question forms (paraphrase groups), got "
                f"{len(groups)}; build them with tokenwise.uncertainty.perturbation."
                "add_paraphrases")
        q_vectors = self.embedder.embed([g.question for g in groups])  # (m, d)
        flat = [t for g in groups for t in g.texts]
        a_vectors = self.embedder.embed(flat)  # (sum sizes, d)
        offsets = np.cumsum([0] + [len(g.answers) for g in groups[:-1]])
        scores = [inv_entropy_once(q_vectors, a_vectors[offsets + np.array(choice)])
                  for choice in self.choices([len(g.answers) for g in groups])]
        return float(np.mean(scores))
