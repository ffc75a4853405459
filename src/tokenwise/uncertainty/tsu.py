"""TSU, temperature sensitivity of uncertainty (Inv-Entropy paper): judging an estimator
without correctness labels.

Sampling at a higher temperature makes a model's answers more random, so a sound
uncertainty estimator should score them higher. The paper proposes this check as TSU; its
public code does not include it. Our definition: for every question and every pair of
temperatures ``t < t'``, a pair is concordant when the score at ``t'`` is higher than at
``t``; TSU is the share of concordant pairs, a tie counting one half. 1 = uncertainty
always grows with temperature, 0.5 = no relation, 0 = always shrinks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tokenwise.errors import TokenwiseError

if TYPE_CHECKING:
    from tokenwise.models import LanguageModel
    from tokenwise.uncertainty.samples import SampleSet


def temperature_sensitivity(scores: Sequence[Sequence[float]] | np.ndarray,
                            temperatures: Sequence[float]) -> float:
    """TSU of an estimator's ``scores[question, temperature]``.

    Args:
        scores: ``(Q, T)`` uncertainty scores, column j sampled at ``temperatures[j]``.
        temperatures: ``T >= 2`` distinct temperatures (any order).

    Example:
        >>> temperature_sensitivity([[0.1, 0.5, 0.9], [0.2, 0.2, 0.1]], [0.5, 1.0, 1.5])
        0.5833333333333334
    """
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(temperatures, dtype=np.float64)
    if s.ndim != 2 or t.ndim != 1 or s.shape[1] != t.shape[0] or s.shape[0] < 1:
        raise TokenwiseError(f"scores of shape {s.shape} and {t.shape[0] if t.ndim else 0} "
                             "temperatures: expected (Q >= 1, T) scores for T temperatures")
    if len(t) < 2 or len(set(t.tolist())) != len(t) or not (t > 0).all():
        raise TokenwiseError(f"temperatures={list(temperatures)}: allowed >= 2 distinct "
                             "values > 0")
    if not np.isfinite(s).all():
        raise TokenwiseError("scores contain NaN or inf")
    s = s[:, np.argsort(t)]  # (Q, T) by rising temperature
    i, j = np.triu_indices(s.shape[1], k=1)  # every pair t_i < t_j
    diff = s[:, j] - s[:, i]  # (Q, P)
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


@dataclass
class TSUResult:
    """What :func:`tsu` measured.

    Attributes:
        value: the TSU (share of concordant question/temperature pairs).
        scores: ``(Q, T)`` scores, columns in the order of ``temperatures``.
        temperatures: the temperatures.
    """

    value: float
    scores: np.ndarray
    temperatures: tuple[float, ...]


def tsu(model: LanguageModel | str, questions: Sequence[str],
        estimator: Callable[[SampleSet], float],
        temperatures: Sequence[float] = (0.5, 1.0, 1.5), *, n: int = 10,
        seed: int = 0, progress: bool = False, **sample_kwargs: object) -> TSUResult:
    """Sample every question at every temperature, score each set, and compute TSU.

    Args:
        model: the model.
        questions: the questions (no labels needed).
        estimator: any ``SampleSet -> float`` (e.g. ``estimators.get("semantic_entropy")``).
        temperatures: >= 2 distinct sampling temperatures.
        n: answers per set.
        seed: base seed (question q at temperature j uses ``seed + 1000 * (q * T + j)``).
        progress: show a progress bar.
        sample_kwargs: passed to :func:`~tokenwise.uncertainty.samples.sample_answers`.

    Example:
        >>> from tokenwise.uncertainty.estimators import get
        >>> r = tsu("tw-large", ["What is 2+3?"], get("predictive_entropy"), (0.5, 2.0), n=2,
        ...         max_new_tokens=3)
        >>> r.scores.shape
        (1, 2)
    """
    from tokenwise.models import LanguageModel, load
    from tokenwise.uncertainty.samples import sample_answers

    temps = tuple(float(t) for t in temperatures)
    if isinstance(questions, str) or not questions:
        raise TokenwiseError("questions: allowed a non-empty list of questions")
    lm = model if isinstance(model, LanguageModel) else load(model)
    scores = np.zeros((len(questions), len(temps)))
    cells = [(q, j) for q in range(len(questions)) for j in range(len(temps))]
    if progress:
        from tokenwise.progress import progress_bar

        cells = progress_bar(cells, desc="TSU", unit="cell")
    for q, j in cells:
        s = sample_answers(lm, questions[q], n=n, temperature=temps[j],
                           seed=seed + 1000 * (q * len(temps) + j),
                           reference_temperature=None, **sample_kwargs)  # type: ignore[arg-type]
        scores[q, j] = estimator(s)
    return TSUResult(temperature_sensitivity(scores, temps), scores, temps)
