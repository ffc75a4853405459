"""Semantic information of answers (Lu's G theory, "A Semantic Generalization of Shannon's
Information Theory"): truth functions as a semantic channel.

A state ``x`` (the true meaning: a person's real profession) has prior ``P(x)``. An answer
``y_j`` is read by a listener through its **truth function** ``T(theta_j | x)`` in [0, 1]: how
true ``y_j`` is when the state is ``x`` (the membership of ``x`` in the fuzzy set ``theta_j``).
Its **logical probability** is the prior's mass on the states it holds true of::

    T(theta_j) = sum_x P(x) T(theta_j | x)

and the **semantic information** it conveys about the state ``x_i``::

    I(x_i; theta_j) = log( T(theta_j | x_i) / T(theta_j) )           (nats)

the log of how much the answer raises the listener's belief in ``x_i``: the semantic Bayes
posterior is ``P(x | theta_j) = P(x) T(theta_j | x) / T(theta_j)``. A true answer that rules out
much (small ``T(theta_j)``) tells much, a tautology tells 0, and a false one tells a negative
amount (minus infinity under crisp truth, where ``T(theta_j | x_i) = 0``).

Averaged over a channel ``P(y | x)`` (e.g. a model answering questions about states ``x``)::

    I(X; Theta) = sum_ij P(x_i) P(y_j | x_i) log( T(theta_j | x_i) / T(theta_j) )

never exceeds Shannon's ``I(X; Y) = sum_ij P(x_i, y_j) log( P(x_i | y_j) / P(x_i) )``; the
**semantic information loss** is their difference::

    L = I(X; Y) - I(X; Theta) = sum_j P(y_j) KL( P(x | y_j) || P(x | theta_j) ) >= 0

zero exactly when every ``P(x | theta_j)`` matches the true posterior ``P(x | y_j)``
(e.g. ``T(theta_j | x) = P(y_j | x) / max_x P(y_j | x)``).

Truth functions from the testbed's meaning equivalence (:func:`meaning_truth`): an answer is
true of the state it means, with ``floor`` (default 0: crisp) for every other state; a floor
above 0 is a listener who gives a wrong answer some credit, which keeps the information of false
answers finite. Beside it the Shannon surprisal ``-log p(y | question)`` of the answer text
counts its surface form too, which no truth function sees.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tokenwise.errors import TokenwiseError


@dataclass(frozen=True)
class GInformation:
    """Semantic and Shannon mutual information of a channel, in nats.

    Attributes:
        semantic: ``I(X; Theta)``.
        shannon: ``I(X; Y)``.
        loss: ``shannon - semantic``.
        per_answer: ``(J,)`` ``I(X; theta_j) = sum_x P(x | y_j) I(x; theta_j)``, the semantic
            information answer ``j`` conveys on average when it is given (NaN for answers
            never given).
        answer_probs: ``(J,)`` ``P(y_j)``.
    """

    semantic: float
    shannon: float
    loss: float
    per_answer: np.ndarray
    answer_probs: np.ndarray


def _check(truth: Any, prior: Any) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(truth, dtype=np.float64)
    p = np.asarray(prior, dtype=np.float64)
    if t.ndim != 2 or p.ndim != 1 or t.shape[1] != len(p):
        raise TokenwiseError(f"truth shape {t.shape} and prior shape {p.shape}: allowed "
                             "(answers, states) and (states,)")
    if (t < 0).any() or (t > 1).any():
        raise TokenwiseError("truth: allowed values in [0, 1]")
    if (p < 0).any() or not abs(p.sum() - 1.0) < 1e-6:
        raise TokenwiseError("prior: allowed non-negative numbers summing to 1")
    return t, p


def logical_probability(truth: Any, prior: Any) -> np.ndarray:
    """``T(theta_j) = sum_x P(x) T(theta_j | x)`` for each answer, ``(J,)``.

    Args:
        truth: ``(J, X)`` truth values ``T(theta_j | x)`` in [0, 1].
        prior: ``(X,)`` state probabilities.

    Example:
        >>> logical_probability([[1, 1, 0], [1, 1, 1]], [0.5, 0.25, 0.25]).tolist()
        [0.75, 1.0]
    """
    t, p = _check(truth, prior)
    return t @ p


def semantic_information(truth: Any, prior: Any) -> np.ndarray:
    """``I(x_i; theta_j) = log(T(theta_j | x_i) / T(theta_j))``, ``(J, X)`` nats.

    Minus infinity where an answer is false of a state (truth 0); an answer with logical
    probability 0 (true of nothing the prior allows) is an error.

    Args:
        truth: ``(J, X)`` truth values.
        prior: ``(X,)`` state probabilities.

    Example:
        >>> semantic_information([[1, 0, 0]], [0.5, 0.25, 0.25]).round(4).tolist()
        [[0.6931, -inf, -inf]]
    """
    t, p = _check(truth, prior)
    lp = t @ p
    empty = np.flatnonzero(lp <= 0)
    if len(empty):
        raise TokenwiseError(f"answer {int(empty[0])} has logical probability 0: allowed only "
                             "answers true of some state the prior allows")
    with np.errstate(divide="ignore"):
        return np.log(t) - np.log(lp)[:, None]


def semantic_posterior(truth: Any, prior: Any) -> np.ndarray:
    """``P(x | theta_j) = P(x) T(theta_j | x) / T(theta_j)``, ``(J, X)``.

    Example:
        >>> semantic_posterior([[1, 1, 0]], [0.5, 0.25, 0.25]).round(4).tolist()
        [[0.6667, 0.3333, 0.0]]
    """
    t, p = _check(truth, prior)
    lp = t @ p
    if (lp <= 0).any():
        raise TokenwiseError("an answer has logical probability 0")
    return t * p[None, :] / lp[:, None]


def g_information(truth: Any, prior: Any, channel: Any) -> GInformation:
    """Semantic ``I(X; Theta)``, Shannon ``I(X; Y)`` and the loss between them.

    Args:
        truth: ``(J, X)`` truth functions of the ``J`` answers.
        prior: ``(X,)`` state probabilities.
        channel: ``(X, J)`` ``P(y_j | x_i)``, rows summing to 1 (how states are answered).

    Returns:
        The measures; ``semantic`` is minus infinity when some answer is given in a state
        it is false of under crisp truth.

    Example:
        >>> g = g_information([[1, 0], [0, 1]], [0.5, 0.5], [[1, 0], [0, 1]])
        >>> round(g.semantic, 4), round(g.shannon, 4), round(g.loss, 4)
        (0.6931, 0.6931, 0.0)
    """
    t, p = _check(truth, prior)
    c = np.asarray(channel, dtype=np.float64)
    if c.shape != (len(p), len(t)):
        raise TokenwiseError(f"channel shape {c.shape}: allowed ({len(p)}, {len(t)}) = "
                             "(states, answers)")
    if (c < 0).any() or not np.allclose(c.sum(1), 1.0, atol=1e-6):
        raise TokenwiseError("channel: allowed rows of non-negative numbers summing to 1")
    info = semantic_information(t, p)  # (J, X)
    joint = p[:, None] * c  # (X, J)
    py = joint.sum(0)
    used = joint > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        post = np.where(py > 0, joint / py, 0.0)  # P(x | y_j), (X, J)
        ratio = np.where(used, post / p[:, None], 1.0)
        shannon = float(np.sum(np.where(used, joint * np.log(ratio), 0.0)))
        # a pair that never occurs adds nothing, even where the answer is false (-inf)
        semantic = float(np.where(used, joint * info.T, 0.0).sum())
        per = np.where(py > 0, np.where(used, post * info.T, 0.0).sum(0), np.nan)
    return GInformation(semantic, shannon, shannon - semantic, per, py)


def meaning_truth(answers: Sequence[str], states: Sequence[str],
                  meaning_of: Callable[[str], str | None], floor: float = 0.0) -> np.ndarray:
    """Truth functions from a meaning equivalence: ``T(theta_y | x) = 1`` if answer ``y`` means
    ``x``, else ``floor``.

    Args:
        answers: the answer texts (rows).
        states: the meanings (columns).
        meaning_of: the meaning an answer stands for, or None (e.g.
            ``lambda a: world.meaning_of("pet", a)``); an answer meaning nothing is false of
            every state (its row is ``floor``).
        floor: truth of an answer in a state it does not mean, in [0, 1).

    Example:
        >>> meaning_truth(["a hound", "a cat"], ["dog", "cat"],
        ...               {"a hound": "dog", "a cat": "cat"}.get, floor=0.1).tolist()
        [[1.0, 0.1], [0.1, 1.0]]
    """
    if not 0.0 <= floor < 1.0:
        raise TokenwiseError(f"floor={floor}: allowed 0 <= floor < 1")
    index = {s: i for i, s in enumerate(states)}
    out = np.full((len(answers), len(states)), floor)
    for j, a in enumerate(answers):
        m = meaning_of(a)
        if m is not None and m in index:
            out[j, index[m]] = 1.0
    return out
