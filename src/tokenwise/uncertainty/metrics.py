"""How well an uncertainty score flags wrong answers: AUROC, AUPRC, PRR, AURAC, ECE, Brier.

Every metric takes ``scores`` (one float per answer, **higher = less certain**, as every
estimator in :mod:`tokenwise.uncertainty` returns) and ``incorrect`` (one bool per answer,
True when the answer is wrong). A good score ranks the wrong answers above the right ones.

Conventions shared by all functions:

* **Positive class.** "Answer incorrect" is the positive class of AUROC and AUPRC: an AUROC of
  1 means every wrong answer scored above every right one, 0.5 is chance.
* **Ties are exact.** Equal scores are never broken by position. AUROC uses average ranks
  (the Mann-Whitney statistic, equal to :func:`sklearn.metrics.roc_auc_score`); AUPRC makes one
  threshold per distinct score (equal to :func:`sklearn.metrics.average_precision_score`);
  the rejection curve is the *expected* curve over every order of the tied answers. So a
  constant score has AUROC exactly 0.5 and PRR exactly 0, whatever the order of the input.
* **Rejection curve.** With ``n`` answers, reject the ``k`` most uncertain for
  ``k = 0, 1, ..., n - 1`` and measure the accuracy (share of right answers) of the ``n - k``
  kept; the curve is that accuracy against the rejection rate ``k / n``. AURAC is its area,
  the mean of those ``n`` accuracies (a left Riemann sum over rates 0 .. (n-1)/n, the grid of
  lm-polygraph's ``PredictionRejectionArea`` with ``max_rejection=1``). The *random* curve is
  flat at the overall accuracy (the expected curve of a random order), the *oracle* curve
  rejects every wrong answer first. PRR = (AURAC - random) / (oracle - random): 1 for a
  perfect ranking, 0 for chance, negative when worse than chance.
* **Calibration.** ECE and Brier judge a probability that the answer is right. A raw
  uncertainty score is no probability, so it is first mapped to one by isotonic regression
  (our own pool-adjacent-violators, :func:`isotonic_fit`), fitted so that the probability of
  being right never rises with the score. The map is **cross-fitted**: the answers are split
  into ``folds`` seeded folds and every answer's probability comes from a map fitted on the
  other folds, so ECE measures calibration on unseen answers (an in-sample isotonic fit is
  calibrated almost by construction). ``folds=1`` fits and scores in-sample, which is
  optimistic and stated as such.
* **When every label agrees.** AUROC, AUPRC and PRR compare right with wrong answers, so with
  only one kind they are undefined: they return ``nan`` and emit an
  :class:`UndefinedMetricWarning` (a ``UserWarning``), never a number that looks meaningful.
  AURAC, ECE and Brier stay defined (the curve is flat at 0 or 1; the calibrated probability
  equals the label). :func:`bootstrap_ci` drops resamples where the metric is undefined and
  reports how many it kept.
* **Bad input** (NaN or infinite scores, labels other than booleans or 0/1, mismatched or
  empty arrays) raises :class:`~tokenwise.errors.TokenwiseError` naming the bad value.

Example:
    >>> scores = [0.1, 0.4, 0.35, 0.8]
    >>> incorrect = [False, False, True, True]
    >>> auroc(scores, incorrect)
    0.75
    >>> round(prr(scores, incorrect), 4)
    0.5714
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from tokenwise.errors import TokenwiseError

__all__ = [
    "METRICS",
    "ConfidenceInterval",
    "RejectionCurve",
    "UndefinedMetricWarning",
    "auprc",
    "aurac",
    "auroc",
    "bootstrap_ci",
    "brier",
    "calibrated_probabilities",
    "ece",
    "isotonic_fit",
    "paired_bootstrap_ci",
    "prr",
    "rejection_curve",
]

ArrayLike = Sequence[float] | np.ndarray


class UndefinedMetricWarning(UserWarning):
    """A metric that needs both right and wrong answers got only one kind; it returned NaN."""


# --------------------------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------------------------


def _check(scores: ArrayLike, incorrect: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validated float64 scores and bool labels of equal, non-zero length."""
    s = np.asarray(scores)
    y = np.asarray(incorrect)
    if s.ndim != 1 or y.ndim != 1:
        raise TokenwiseError(
            f"scores and incorrect must be 1-D, got shapes {s.shape} and {y.shape}"
        )
    if len(s) != len(y):
        raise TokenwiseError(f"{len(s)} scores but {len(y)} labels: one label per score")
    if len(s) == 0:
        raise TokenwiseError("no scores: the metrics need at least one answer")
    if not (np.issubdtype(s.dtype, np.number) and not np.iscomplexobj(s)):
        raise TokenwiseError(f"scores must be real numbers, got dtype {s.dtype}")
    s = s.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(s))
    if bad.size:
        raise TokenwiseError(
            f"score {s[bad[0]]} at position {bad[0]} is not finite; every score must be a "
            "finite float (an estimator that returns NaN has a bug or bad input upstream)"
        )
    if y.dtype != np.bool_:
        if not np.issubdtype(y.dtype, np.number) or np.iscomplexobj(y):
            raise TokenwiseError(f"incorrect must be booleans or 0/1, got dtype {y.dtype}")
        odd = np.flatnonzero((y != 0) & (y != 1))
        if odd.size:
            raise TokenwiseError(
                f"label {y[odd[0]].item()!r} at position {odd[0]}: incorrect must be "
                "booleans or 0/1"
            )
        y = y.astype(bool)
    return s, y


def _undefined(name: str, y: np.ndarray) -> bool:
    """Warn and say so when ``y`` has a single class (``name`` is then undefined)."""
    if y.all() or not y.any():
        kind = "incorrect" if y.all() else "correct"
        warnings.warn(
            f"{name} is undefined when every answer is {kind} ({len(y)} answers); "
            "returning nan",
            UndefinedMetricWarning,
            stacklevel=3,
        )
        return True
    return False


def _tie_groups(sorted_scores: np.ndarray) -> np.ndarray:
    """End index (exclusive) of each run of equal values in an already sorted array."""
    change = np.flatnonzero(np.diff(sorted_scores)) + 1
    return np.append(change, len(sorted_scores))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="mergesort")
    ends = _tie_groups(values[order])
    starts = np.concatenate(([0], ends[:-1]))
    mean_rank = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


# --------------------------------------------------------------------------------------------
# ranking metrics
# --------------------------------------------------------------------------------------------


def auroc(scores: ArrayLike, incorrect: ArrayLike) -> float:
    """Area under the ROC curve for flagging incorrect answers by their uncertainty score.

    The Mann-Whitney statistic with average ranks: the probability that a random wrong
    answer scores above a random right one, ties counting one half.

    Args:
        scores: one uncertainty score per answer, higher = less certain.
        incorrect: one label per answer, True (or 1) when the answer is wrong.

    Returns:
        The AUROC in [0, 1]; ``nan`` (with an :class:`UndefinedMetricWarning`) when every
        answer is right or every answer is wrong.

    Example:
        >>> auroc([0.2, 0.9, 0.5, 0.5], [False, True, True, False])
        0.875
    """
    s, y = _check(scores, incorrect)
    if _undefined("AUROC", y):
        return math.nan
    ranks = _average_ranks(s)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def auprc(scores: ArrayLike, incorrect: ArrayLike) -> float:
    """Area under the precision-recall curve for flagging incorrect answers (average precision).

    ``AP = sum_t (R_t - R_{t-1}) P_t`` over the distinct score thresholds ``t`` taken from
    the highest down, with precision ``P_t`` and recall ``R_t`` of "flag every answer
    scoring >= t": the step-wise sum, not a trapezoid (which overstates the area).

    Args:
        scores: one uncertainty score per answer, higher = less certain.
        incorrect: one label per answer, True (or 1) when the answer is wrong.

    Returns:
        The AUPRC in (0, 1]; chance level is the share of wrong answers. ``nan`` (with an
        :class:`UndefinedMetricWarning`) when every label agrees.

    Example:
        >>> auprc([0.9, 0.8, 0.3, 0.1], [True, False, True, False])
        0.8333333333333333
    """
    s, y = _check(scores, incorrect)
    if _undefined("AUPRC", y):
        return math.nan
    order = np.argsort(-s, kind="mergesort")
    ends = _tie_groups(-s[order]) - 1  # last index of each tie group
    tp = np.cumsum(y[order])[ends].astype(np.float64)  # (G,)
    flagged = ends + 1.0  # (G,)
    precision = tp / flagged
    recall = tp / tp[-1]
    gained = np.diff(np.concatenate(([0.0], recall)))
    return float(np.sum(gained * precision))


# --------------------------------------------------------------------------------------------
# rejection curves
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RejectionCurve:
    """Accuracy of the kept answers as the most uncertain ones are rejected.

    Attributes:
        rates: rejection rates ``k / n`` for ``k = 0 .. n-1``.
        accuracy: accuracy of the ``n - k`` kept answers, ordered by the score (expected
            value over the orders of tied scores).
        oracle: the same when the wrong answers are rejected first.
        random: the expected curve of a random order: flat at the overall accuracy.
    """

    rates: np.ndarray
    accuracy: np.ndarray
    oracle: np.ndarray
    random: np.ndarray

    @property
    def area(self) -> float:
        """AURAC: the mean kept accuracy over the rejection grid."""
        return float(self.accuracy.mean())

    @property
    def prr(self) -> float:
        """(area - random area) / (oracle area - random area); nan when they coincide."""
        random_area = float(self.random.mean())
        gap = float(self.oracle.mean()) - random_area
        return (self.area - random_area) / gap if gap > 0 else math.nan


def _kept_accuracy(s: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """Expected accuracy of the n-k most certain answers, k = 0..n-1, ties averaged."""
    n = len(s)
    order = np.argsort(s, kind="mergesort")  # most certain first
    ends = _tie_groups(s[order])
    starts = np.concatenate(([0], ends[:-1]))
    group_correct = np.add.reduceat(correct[order].astype(np.float64), starts)  # (G,)
    group_size = (ends - starts).astype(np.float64)
    # Kept m answers: every group that ends by m whole, plus a share of the group cut at m.
    # Under a random order inside that group the kept part holds, on average, its share of
    # the group's right answers: linearity of expectation makes the curve exact.
    m = np.arange(n, 0, -1)  # kept sizes for k = 0..n-1
    g = np.searchsorted(ends, m, side="left")  # group containing position m-1
    before = np.concatenate(([0.0], np.cumsum(group_correct)))[g]
    taken = m - starts[g]
    expected = before + group_correct[g] * taken / group_size[g]
    return expected / m


def rejection_curve(scores: ArrayLike, incorrect: ArrayLike) -> RejectionCurve:
    """The rejection-accuracy curve of ``scores``, with its oracle and random curves.

    Args:
        scores: one uncertainty score per answer, higher = less certain.
        incorrect: one label per answer, True (or 1) when the answer is wrong.

    Example:
        >>> curve = rejection_curve([4, 3, 2, 1], [True, False, True, False])
        >>> curve.accuracy.round(3).tolist()
        [0.5, 0.667, 0.5, 1.0]
        >>> curve.oracle.round(3).tolist()
        [0.5, 0.667, 1.0, 1.0]
    """
    s, y = _check(scores, incorrect)
    correct = ~y
    n = len(s)
    rates = np.arange(n) / n
    accuracy = _kept_accuracy(s, correct)
    # Oracle: rank by the label itself (wrong answers most "uncertain"), no ties broken.
    oracle = _kept_accuracy(y.astype(np.float64), correct)
    random = np.full(n, correct.mean())
    return RejectionCurve(rates, accuracy, oracle, random)


def aurac(scores: ArrayLike, incorrect: ArrayLike) -> float:
    """Area under the rejection-accuracy curve (see the module docstring for the grid).

    Args:
        scores: one uncertainty score per answer, higher = less certain.
        incorrect: one label per answer, True (or 1) when the answer is wrong.

    Returns:
        The mean accuracy of the kept answers over rejection rates 0, 1/n, ..., (n-1)/n;
        defined for any labels (equal to the accuracy when they all agree).

    Example:
        >>> aurac([4, 3, 2, 1], [True, False, True, False])
        0.6666666666666666
    """
    return rejection_curve(scores, incorrect).area


def prr(scores: ArrayLike, incorrect: ArrayLike) -> float:
    """Prediction-rejection ratio: (AURAC - random) / (oracle - random).

    Args:
        scores: one uncertainty score per answer, higher = less certain.
        incorrect: one label per answer, True (or 1) when the answer is wrong.

    Returns:
        1 for a perfect ranking, 0 for chance (or a constant score), negative when worse
        than chance; ``nan`` (with an :class:`UndefinedMetricWarning`) when every label
        agrees, since then the oracle is no better than random.

    Example:
        >>> prr([4, 3, 2, 1], [True, True, False, False])
        1.0
    """
    s, y = _check(scores, incorrect)
    if _undefined("PRR", y):
        return math.nan
    return rejection_curve(s, y).prr


# --------------------------------------------------------------------------------------------
# calibration
# --------------------------------------------------------------------------------------------


def isotonic_fit(x: ArrayLike, y: ArrayLike, increasing: bool = True) -> tuple[np.ndarray,
                                                                                 np.ndarray]:
    """Least-squares isotonic regression by pool-adjacent-violators.

    Equal ``x`` are pooled first (their mean ``y`` weighted by count), then adjacent blocks
    that break the order are merged until the fitted values are monotone.

    Args:
        x: inputs (finite floats).
        y: targets (finite floats), one per input.
        increasing: whether the fit rises with ``x`` (else it falls).

    Returns:
        ``(knots, values)``: the distinct sorted ``x`` and the fitted value at each; predict
        elsewhere with :func:`numpy.interp` (linear between knots, flat outside), as
        scikit-learn's ``IsotonicRegression(out_of_bounds="clip")`` does.

    Example:
        >>> knots, values = isotonic_fit([1, 2, 3, 4], [1, 3, 2, 4])
        >>> values.tolist()
        [1.0, 2.5, 2.5, 4.0]
    """
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    if xs.ndim != 1 or ys.shape != xs.shape or len(xs) == 0:
        raise TokenwiseError(
            f"isotonic_fit needs 1-D x and y of one equal, non-zero length, got shapes "
            f"{xs.shape} and {ys.shape}"
        )
    if not (np.isfinite(xs).all() and np.isfinite(ys).all()):
        raise TokenwiseError("isotonic_fit needs finite x and y; found NaN or inf")
    order = np.argsort(xs, kind="mergesort")
    xs, ys = xs[order], ys[order]
    ends = _tie_groups(xs)
    starts = np.concatenate(([0], ends[:-1]))
    knots = xs[starts]
    sums = np.add.reduceat(ys, starts)
    weights = (ends - starts).astype(np.float64)
    sign = 1.0 if increasing else -1.0
    # Stack of blocks (sum, weight, how many knots); merge while the last two violate order.
    block_sum: list[float] = []
    block_w: list[float] = []
    block_len: list[int] = []
    for s_i, w_i in zip(sums.tolist(), weights.tolist(), strict=True):
        block_sum.append(s_i)
        block_w.append(w_i)
        block_len.append(1)
        while len(block_sum) > 1 and (
            sign * block_sum[-2] / block_w[-2] >= sign * block_sum[-1] / block_w[-1]
        ):
            s_last, w_last, n_last = block_sum.pop(), block_w.pop(), block_len.pop()
            block_sum[-1] += s_last
            block_w[-1] += w_last
            block_len[-1] += n_last
    values = np.repeat(np.array(block_sum) / np.array(block_w), block_len)
    return knots, values


def calibrated_probabilities(scores: ArrayLike, incorrect: ArrayLike, folds: int = 5,
                             seed: int = 0) -> np.ndarray:
    """P(answer right) for each answer, from an isotonic map of the score (cross-fitted).

    Args:
        scores: one uncertainty score per answer, higher = less certain.
        incorrect: one label per answer, True (or 1) when the answer is wrong.
        folds: number of seeded folds; each answer is mapped by a fit on the other folds.
            ``1`` fits and predicts on the same answers (optimistic). At most the number
            of answers.
        seed: seed of the fold split.

    Example:
        >>> p = calibrated_probabilities([0.1, 0.2, 0.8, 0.9], [False, False, True, True],
        ...                              folds=1)
        >>> p.tolist()
        [1.0, 1.0, 0.0, 0.0]
    """
    s, y = _check(scores, incorrect)
    if isinstance(folds, bool) or not isinstance(folds, int) or not 1 <= folds <= len(s):
        raise TokenwiseError(
            f"folds={folds!r}: allowed an integer from 1 to the number of answers ({len(s)})"
        )
    correct = (~y).astype(np.float64)
    if folds == 1:
        knots, values = isotonic_fit(s, correct, increasing=False)
        return np.interp(s, knots, values)
    fold_of = np.random.default_rng(seed).permutation(len(s)) % folds
    out = np.empty(len(s), dtype=np.float64)
    for f in range(folds):
        held = fold_of == f
        knots, values = isotonic_fit(s[~held], correct[~held], increasing=False)
        out[held] = np.interp(s[held], knots, values)
    return out


def ece(scores: ArrayLike, incorrect: ArrayLike, bins: int = 10, folds: int = 5,
        seed: int = 0) -> float:
    """Expected calibration error of the isotonic-calibrated P(answer right).

    ``ECE = sum_b |B_b| / n * |acc(B_b) - conf(B_b)|`` over ``bins`` equal-width bins of
    the calibrated probability (the last bin closed at 1).

    Args:
        scores: one uncertainty score per answer, higher = less certain.
        incorrect: one label per answer, True (or 1) when the answer is wrong.
        bins: number of probability bins (>= 1).
        folds: folds of the cross-fitted calibration (see :func:`calibrated_probabilities`).
        seed: seed of the fold split.

    Example:
        >>> ece([0.1, 0.2, 0.8, 0.9], [False, False, True, True], folds=1)
        0.0
    """
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise TokenwiseError(f"bins={bins!r}: allowed an integer >= 1")
    s, y = _check(scores, incorrect)
    p = calibrated_probabilities(s, y, folds=folds, seed=seed)
    correct = (~y).astype(np.float64)
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    # |B| * |acc(B) - conf(B)| = |sum of labels - sum of probabilities| within the bin.
    gap = np.abs(np.bincount(which, correct, bins) - np.bincount(which, p, bins))
    return float(gap.sum() / len(s))


def brier(scores: ArrayLike, incorrect: ArrayLike, folds: int = 5, seed: int = 0) -> float:
    """Brier score of the isotonic-calibrated P(answer right): mean squared error to the label.

    Args:
        scores: one uncertainty score per answer, higher = less certain.
        incorrect: one label per answer, True (or 1) when the answer is wrong.
        folds: folds of the cross-fitted calibration (see :func:`calibrated_probabilities`).
        seed: seed of the fold split.

    Example:
        >>> brier([0.1, 0.2, 0.8, 0.9], [False, True, False, True], folds=1)
        0.125
    """
    s, y = _check(scores, incorrect)
    p = calibrated_probabilities(s, y, folds=folds, seed=seed)
    return float(np.mean((p - (~y)) ** 2))


# --------------------------------------------------------------------------------------------
# bootstrap
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfidenceInterval:
    """A metric's value on the data and its percentile-bootstrap interval.

    Attributes:
        estimate: the metric on the data itself.
        low: lower end of the interval.
        high: upper end of the interval.
        level: coverage, e.g. 0.95.
        resamples: resamples on which the metric was defined (those where every label
            agreed are dropped for AUROC, AUPRC and PRR).
    """

    estimate: float
    low: float
    high: float
    level: float
    resamples: int

    def __str__(self) -> str:
        return f"{self.estimate:.3f} [{self.low:.3f}, {self.high:.3f}]"


def bootstrap_ci(metric: Callable[[np.ndarray, np.ndarray], float], scores: ArrayLike,
                 labels: ArrayLike, n: int = 1000, seed: int = 0,
                 level: float = 0.95) -> ConfidenceInterval:
    """Percentile-bootstrap interval of ``metric(scores, labels)``.

    Answers are resampled with replacement ``n`` times (seeded). Resamples on which the
    metric is undefined (nan: every label agreed) are dropped, and ``resamples`` says how
    many remained; with none left the interval is ``(nan, nan)``.

    Args:
        metric: a function of ``(scores, incorrect)``, e.g. :func:`auroc`.
        scores: one uncertainty score per answer, higher = less certain.
        labels: one label per answer, True (or 1) when the answer is wrong.
        n: number of resamples (>= 1).
        seed: seed of the resampling.
        level: coverage of the interval, in (0, 1).

    Example:
        >>> ci = bootstrap_ci(auroc, [0.1, 0.4, 0.35, 0.8, 0.2, 0.7],
        ...                   [False, False, True, True, False, True], n=200)
        >>> ci.low <= ci.estimate <= ci.high
        True
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise TokenwiseError(f"n={n!r}: allowed an integer >= 1 (number of resamples)")
    if not 0.0 < level < 1.0:
        raise TokenwiseError(f"level={level!r}: allowed 0 < level < 1")
    s, y = _check(scores, labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        estimate = float(metric(s, y))
        rng = np.random.default_rng(seed)
        picks = rng.integers(0, len(s), size=(n, len(s)))  # (n, N)
        values = np.array([metric(s[p], y[p]) for p in picks], dtype=np.float64)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return ConfidenceInterval(estimate, math.nan, math.nan, level, 0)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return ConfidenceInterval(estimate, float(low), float(high), level, int(values.size))


def paired_bootstrap_ci(metric: Callable[[np.ndarray, np.ndarray], float], scores_a: ArrayLike,
                        scores_b: ArrayLike, labels: ArrayLike, n: int = 1000, seed: int = 0,
                        level: float = 0.95) -> ConfidenceInterval:
    """Percentile-bootstrap interval of ``metric(a) - metric(b)`` on the same questions.

    Both scores are evaluated on the *same* resample each time, so the interval reflects
    the difference between two estimators on one set of answers (much narrower than two
    separate intervals would suggest). Undefined resamples are dropped as in
    :func:`bootstrap_ci`.

    Args:
        metric: a function of ``(scores, incorrect)``, e.g. :func:`auroc`.
        scores_a: the first estimator's scores.
        scores_b: the second estimator's scores, one per answer as well.
        labels: one label per answer, True (or 1) when the answer is wrong.
        n: number of resamples (>= 1).
        seed: seed of the resampling.
        level: coverage of the interval, in (0, 1).

    Example:
        >>> ci = paired_bootstrap_ci(auroc, [0.1, 0.9, 0.2, 0.8], [0.5, 0.5, 0.5, 0.5],
        ...                          [False, True, False, True], n=100)
        >>> ci.estimate
        0.5
    """
    a, y = _check(scores_a, labels)
    b, _ = _check(scores_b, labels)

    def difference(idx: np.ndarray, labels_: np.ndarray) -> float:
        i = idx.astype(np.int64)
        return float(metric(a[i], labels_)) - float(metric(b[i], labels_))

    # Resample indices, so both estimators see the same answers in every resample.
    return bootstrap_ci(difference, np.arange(len(a), dtype=np.float64), y, n=n, seed=seed,
                        level=level)


#: The metrics by name, as the evaluation harness reports them.
METRICS: dict[str, Callable[..., float]] = {
    "auroc": auroc,
    "auprc": auprc,
    "prr": prr,
    "aurac": aurac,
    "ece": ece,
    "brier": brier,
}
