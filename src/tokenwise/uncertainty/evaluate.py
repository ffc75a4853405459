"""Evaluate uncertainty estimators on questions with known answers: one table, one set of curves.

The harness samples every question **once** (:func:`sample_items`: ``n`` answers plus the
low-temperature reference answer whose correctness is the label), then scores the same
:class:`~tokenwise.uncertainty.SampleSet` objects with every estimator
(:func:`evaluate_samples`), so estimators that share an equivalence or embedder share the
clusters and embeddings too, and differences between rows are differences between
estimators, never between samples. :func:`evaluate` does both.

Each row reports AUROC with its bootstrap interval, AUPRC, PRR, AURAC, ECE and Brier
(:mod:`tokenwise.uncertainty.metrics` defines them, positive class = incorrect answer) and
keeps the rejection curve for plotting (:func:`plot_rejection_curves`).

Example:
    >>> from tokenwise.uncertainty import SampleSet
    >>> sets = [SampleSet.from_texts("Q?", ["a", "a"], logprobs=[-0.1, -0.2]),
    ...         SampleSet.from_texts("Q?", ["b", "c"], logprobs=[-2.0, -3.0]),
    ...         SampleSet.from_texts("Q?", ["d", "d"], logprobs=[-0.3, -0.3]),
    ...         SampleSet.from_texts("Q?", ["e", "f"], logprobs=[-2.5, -1.5])]
    >>> ev = evaluate_samples(sets, [False, True, False, True], ["predictive_entropy"],
    ...                       bootstrap=50, progress=False)
    >>> ev.results[0].auroc.estimate
    1.0
"""

from __future__ import annotations

import inspect
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tokenwise.errors import TokenwiseError
from tokenwise.progress import progress_bar
from tokenwise.uncertainty import metrics
from tokenwise.uncertainty.estimators import Estimator, get
from tokenwise.uncertainty.estimators.registry import estimator_class
from tokenwise.uncertainty.samples import SampleSet, sample_answers

__all__ = [
    "EstimatorResult",
    "EvalItem",
    "Evaluation",
    "build_estimators",
    "evaluate",
    "evaluate_samples",
    "label_samples",
    "plot_rejection_curves",
    "sample_items",
]


@dataclass(frozen=True)
class EvalItem:
    """A question whose answers can be judged.

    Attributes:
        question: the question (the prompt is built by ``sample_answers``'s template).
        is_correct: ``is_correct(answer_text) -> bool``.
        group: an optional label (e.g. the testbed's frequency bucket) for breakdowns.

    Example:
        >>> item = EvalItem("What is 2+2?", lambda a: a.strip() == "4")
        >>> item.is_correct(" 4")
        True
    """

    question: str
    is_correct: Callable[[str], bool]
    group: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.question, str) or not self.question.strip():
            raise TokenwiseError(f"question is {self.question!r}: allowed a non-empty string")
        if not callable(self.is_correct):
            raise TokenwiseError(f"is_correct is {self.is_correct!r}: allowed a callable "
                                 "(answer_text) -> bool")


@dataclass(frozen=True)
class EstimatorResult:
    """One estimator's scores and metrics on the evaluation set.

    Attributes:
        name: the row label.
        scores: one score per question (higher = less certain).
        auroc: AUROC with its percentile-bootstrap interval.
        auprc: area under the precision-recall curve (positive = incorrect).
        prr: prediction-rejection ratio.
        aurac: area under the rejection-accuracy curve.
        ece: expected calibration error after cross-fitted isotonic calibration.
        brier: Brier score after the same calibration.
        curve: the rejection curve (with its oracle and random curves).
        seconds: wall time spent scoring (informational; generation excluded).
    """

    name: str
    scores: np.ndarray
    auroc: metrics.ConfidenceInterval
    auprc: float
    prr: float
    aurac: float
    ece: float
    brier: float
    curve: metrics.RejectionCurve
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (NaN becomes None)."""

        def num(x: float) -> float | None:
            return None if math.isnan(x) else round(float(x), 4)

        return {"estimator": self.name, "auroc": num(self.auroc.estimate),
                "auroc_ci": [num(self.auroc.low), num(self.auroc.high)],
                "auprc": num(self.auprc), "prr": num(self.prr), "aurac": num(self.aurac),
                "ece": num(self.ece), "brier": num(self.brier),
                "seconds": round(self.seconds, 3)}


@dataclass
class Evaluation:
    """The result of an evaluation: one :class:`EstimatorResult` per estimator.

    Attributes:
        results: the rows, in the order the estimators were given.
        incorrect: the labels (True = the reference answer is wrong).
        samples: the sample sets that every estimator scored.
        groups: each question's group label (or None).
        level: coverage of the AUROC intervals.
    """

    results: list[EstimatorResult]
    incorrect: np.ndarray
    samples: list[SampleSet]
    groups: list[str | None] = field(default_factory=list)
    level: float = 0.95

    @property
    def accuracy(self) -> float:
        """Share of questions whose reference answer is right."""
        return float(1.0 - self.incorrect.mean())

    def result(self, name: str) -> EstimatorResult:
        """The row called ``name``."""
        for r in self.results:
            if r.name == name:
                return r
        raise TokenwiseError(f"no estimator {name!r} in this evaluation; rows: "
                             f"{', '.join(r.name for r in self.results)}")

    def accuracy_by_group(self) -> dict[str, tuple[int, int]]:
        """``group -> (right, total)`` in first-seen order (needs group labels)."""
        out: dict[str, list[int]] = {}
        for g, wrong in zip(self.groups, self.incorrect.tolist(), strict=True):
            cell = out.setdefault(str(g), [0, 0])
            cell[0] += not wrong
            cell[1] += 1
        return {g: (c[0], c[1]) for g, c in out.items()}

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary: sizes, accuracy and one dict per row."""
        return {"questions": len(self.incorrect), "accuracy": round(self.accuracy, 4),
                "ci_level": self.level, "rows": [r.as_dict() for r in self.results]}

    def to_markdown(self) -> str:
        """The table as GitHub markdown (NaN shown as n/a).

        Example:
            >>> from tokenwise.uncertainty import SampleSet
            >>> sets = [SampleSet.from_texts("Q?", ["a", "b"], logprobs=[-1.0, -v])
            ...         for v in (1.0, 3.0, 2.0, 5.0)]
            >>> ev = evaluate_samples(sets, [0, 1, 0, 1], ["predictive_entropy"],
            ...                       bootstrap=20, progress=False)
            >>> print(ev.to_markdown().splitlines()[2][:43])
            | predictive_entropy | 1.000 [1.000, 1.000]
        """
        pct = round(100 * self.level)
        head = (f"| estimator | AUROC [{pct}% CI] | AUPRC | PRR | AURAC | ECE | Brier |\n"
                "|---|---|---|---|---|---|---|")
        lines = [head]
        for r in self.results:
            cells = [_fmt_ci(r.auroc), *(_fmt(x) for x in (r.auprc, r.prr, r.aurac, r.ece,
                                                            r.brier))]
            lines.append(f"| {r.name} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


def _fmt(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.3f}"


def _fmt_ci(ci: metrics.ConfidenceInterval) -> str:
    if math.isnan(ci.estimate):
        return "n/a"
    if math.isnan(ci.low):
        return f"{ci.estimate:.3f}"
    return f"{ci.estimate:.3f} [{ci.low:.3f}, {ci.high:.3f}]"


# --------------------------------------------------------------------------------------------
# sampling and labels
# --------------------------------------------------------------------------------------------


def sample_items(items: Sequence[EvalItem], model: Any, *, n: int = 10,
                 temperature: float = 1.0, seed: int = 0,
                 prepare: Callable[[SampleSet, EvalItem], SampleSet] | None = None,
                 progress: bool = True, **sampling: Any) -> list[SampleSet]:
    """Sample ``n`` answers (and a reference answer) for every item, once.

    Item ``i`` is sampled with seed ``seed + i * (n + 1)``, so its answers do not depend
    on the other items and a rerun gives the same sets.

    Args:
        items: the questions.
        model: a :class:`~tokenwise.models.LanguageModel`, a built-in name or a directory.
        n: answers per question (>= 2).
        temperature: sampling temperature (> 0).
        seed: base seed.
        prepare: optional hook ``(sample_set, item) -> sample_set`` run after sampling,
            e.g. to attach paraphrase groups for Inv-Entropy.
        progress: show a progress bar.
        sampling: further arguments of :func:`~tokenwise.uncertainty.sample_answers`
            (``max_new_tokens``, ``prompt_template``, ``stop``, ``reference_temperature``).

    Example:
        >>> sets = sample_items([EvalItem("What is 2+3?", lambda a: a == "5")], "tw-small",
        ...                     n=2, max_new_tokens=4, progress=False)
        >>> sets[0].n, sets[0].reference is not None
        (2, True)
    """
    from tokenwise.models import LanguageModel, load

    items = _check_items(items)
    if sampling.get("reference_temperature", 0.1) is None:
        raise TokenwiseError("reference_temperature=None: the harness labels each question "
                             "by its low-temperature reference answer; give a temperature > 0")
    lm = model if isinstance(model, LanguageModel) else load(model)
    out = []
    for i, item in enumerate(progress_bar(items, desc="sampling", unit="q", enabled=progress)):
        s = sample_answers(lm, item.question, n=n, temperature=temperature,
                           seed=seed + i * (n + 1), **sampling)
        if prepare is not None:
            s = prepare(s, item)
            if not isinstance(s, SampleSet):
                raise TokenwiseError(f"prepare returned {type(s).__name__}; it must return "
                                     "the SampleSet (e.g. samples.with_paraphrases(...))")
        out.append(s)
    return out


def label_samples(items: Sequence[EvalItem], samples: Sequence[SampleSet]) -> np.ndarray:
    """``incorrect[i]``: whether item ``i``'s reference answer is wrong.

    Args:
        items: the questions, with their correctness functions.
        samples: their sample sets, in the same order, each with a reference answer.

    Example:
        >>> from tokenwise.uncertainty import SampleSet
        >>> s = SampleSet.from_texts("Q?", ["4", "5"], reference="4")
        >>> label_samples([EvalItem("Q?", lambda a: a == "4")], [s]).tolist()
        [False]
    """
    items = _check_items(items)
    if len(items) != len(samples):
        raise TokenwiseError(f"{len(items)} items but {len(samples)} sample sets")
    out = np.empty(len(items), dtype=bool)
    for i, (item, s) in enumerate(zip(items, samples, strict=True)):
        if s.reference is None:
            raise TokenwiseError(f"sample set {i} ({s.question!r}) has no reference answer "
                                 "to label; sample with a reference_temperature")
        verdict = item.is_correct(s.reference.text)
        if not isinstance(verdict, (bool, np.bool_)):
            raise TokenwiseError(f"is_correct of item {i} returned {verdict!r}; it must "
                                 "return a bool")
        out[i] = not verdict
    return out


def _check_items(items: Sequence[EvalItem]) -> list[EvalItem]:
    items = list(items)
    if not items:
        raise TokenwiseError("no items: give at least one question")
    for i, it in enumerate(items):
        if not isinstance(it, EvalItem):
            raise TokenwiseError(f"items[{i}] is {type(it).__name__}; allowed EvalItem")
    return items


# --------------------------------------------------------------------------------------------
# scoring
# --------------------------------------------------------------------------------------------


def build_estimators(estimators: Sequence[str | Estimator] | Mapping[str, str | Estimator],
                     equivalence: Any = None, embedder: Any = None) -> dict[str, Estimator]:
    """Row label -> estimator. Names are built with the shared equivalence and embedder.

    Every estimator that takes an ``equivalence`` (or ``embedder``) gets the same object,
    so a sample set's clusters (or embeddings) are computed once for all of them.
    Estimator objects are used as given.

    Args:
        estimators: registry names and/or :class:`Estimator` objects, or a mapping from
            row label to either.
        equivalence: the meaning relation for clustering estimators (None: each
            estimator's default, the shared MiniLM embedding equivalence).
        embedder: the embedding model for embedding estimators (None: their default).

    Example:
        >>> list(build_estimators(["predictive_entropy", "semantic_entropy"]))
        ['predictive_entropy', 'semantic_entropy']
    """
    pairs = list(estimators.items()) if isinstance(estimators, Mapping) else [
        (e if isinstance(e, str) else getattr(e, "name", "") or type(e).__name__, e)
        for e in estimators
    ]
    if not pairs:
        raise TokenwiseError("no estimators given; see tokenwise.uncertainty.estimators.names()")
    out: dict[str, Estimator] = {}
    for label, spec in pairs:
        if label in out:
            raise TokenwiseError(f"estimator {label!r} given twice; give each row once "
                                 "(use a mapping to label variants)")
        if isinstance(spec, str):
            accepted = inspect.signature(estimator_class(spec).__init__).parameters
            params = {}
            if equivalence is not None and "equivalence" in accepted:
                params["equivalence"] = equivalence
            if embedder is not None and "embedder" in accepted:
                params["embedder"] = embedder
            out[label] = get(spec, **params)
        elif callable(spec):
            out[label] = spec
        else:
            raise TokenwiseError(f"estimator {label!r} is {spec!r}; allowed a registry name "
                                 "or an Estimator")
    return out


def evaluate_samples(samples: Sequence[SampleSet], incorrect: Sequence[bool] | np.ndarray,
                     estimators: Sequence[str | Estimator] | Mapping[str, str | Estimator],
                     *, equivalence: Any = None, embedder: Any = None, bootstrap: int = 1000,
                     level: float = 0.95, seed: int = 0, folds: int = 5,
                     groups: Sequence[str | None] | None = None,
                     progress: bool = True) -> Evaluation:
    """Score fixed sample sets with every estimator and compute the metrics.

    Args:
        samples: one sample set per question (every estimator reads these same objects).
        incorrect: one label per question, True when its reference answer is wrong.
        estimators: see :func:`build_estimators`.
        equivalence: shared meaning relation (see :func:`build_estimators`).
        embedder: shared embedding model (see :func:`build_estimators`).
        bootstrap: resamples for the AUROC interval (>= 1).
        level: coverage of the interval.
        seed: seed of the bootstrap and of the calibration folds.
        folds: folds of the cross-fitted isotonic calibration (ECE, Brier); capped at the
            number of questions.
        groups: optional group label per question (kept for breakdowns).
        progress: show a progress bar.
    """
    samples = list(samples)
    labels = np.asarray(incorrect)
    if len(samples) != len(labels):
        raise TokenwiseError(f"{len(samples)} sample sets but {len(labels)} labels")
    for i, s in enumerate(samples):
        if not isinstance(s, SampleSet):
            raise TokenwiseError(f"samples[{i}] is {type(s).__name__}; allowed SampleSet")
    if groups is not None and len(groups) != len(samples):
        raise TokenwiseError(f"{len(groups)} group labels for {len(samples)} sample sets")
    table = build_estimators(estimators, equivalence, embedder)
    # Validate the labels once, up front (the same checks every metric makes).
    _, labels = metrics._check(np.zeros(len(labels)), labels)
    if labels.all() or not labels.any():
        warnings.warn(
            f"every one of the {len(labels)} reference answers is "
            f"{'incorrect' if labels.all() else 'correct'}: AUROC, AUPRC and PRR are "
            "undefined (nan) in every row; mix questions the model knows and does not know",
            metrics.UndefinedMetricWarning, stacklevel=2)
    results = []
    bar = progress_bar(total=len(table) * len(samples), desc="scoring", unit="set",
                       enabled=progress)
    for label, est in table.items():
        start = time.perf_counter()
        scores = np.empty(len(samples), dtype=np.float64)
        for i, s in enumerate(samples):
            try:
                scores[i] = float(est(s))
            except TokenwiseError as exc:
                raise TokenwiseError(f"{label} on question {i} ({s.question!r}): {exc}") \
                    from None
            bar.update(1)
        seconds = time.perf_counter() - start
        results.append(_score_row(label, scores, labels, bootstrap, level, seed, folds,
                                  seconds))
    bar.close()
    return Evaluation(results, labels, samples, list(groups) if groups is not None
                      else [None] * len(samples), level)


def _score_row(label: str, scores: np.ndarray, labels: np.ndarray, bootstrap: int,
               level: float, seed: int, folds: int, seconds: float) -> EstimatorResult:
    with warnings.catch_warnings():
        # One warning per table, not one per metric: the labels are the same for every row.
        warnings.simplefilter("ignore", metrics.UndefinedMetricWarning)
        ci = metrics.bootstrap_ci(metrics.auroc, scores, labels, n=bootstrap, seed=seed,
                                  level=level)
        k = min(folds, len(scores))
        return EstimatorResult(
            name=label, scores=scores, auroc=ci,
            auprc=metrics.auprc(scores, labels), prr=metrics.prr(scores, labels),
            aurac=metrics.aurac(scores, labels),
            ece=metrics.ece(scores, labels, folds=k, seed=seed),
            brier=metrics.brier(scores, labels, folds=k, seed=seed),
            curve=metrics.rejection_curve(scores, labels), seconds=seconds)


def evaluate(items: Sequence[EvalItem], model: Any,
             estimators: Sequence[str | Estimator] | Mapping[str, str | Estimator], *,
             n: int = 10, temperature: float = 1.0, seed: int = 0, equivalence: Any = None,
             embedder: Any = None, bootstrap: int = 1000, level: float = 0.95,
             prepare: Callable[[SampleSet, EvalItem], SampleSet] | None = None,
             progress: bool = True, **sampling: Any) -> Evaluation:
    """Sample every question once, label it, and score it with every estimator.

    Args:
        items: the questions with their correctness functions.
        model: a :class:`~tokenwise.models.LanguageModel`, a built-in name or a directory.
        estimators: registry names and/or estimator objects (see :func:`build_estimators`).
        n: answers per question.
        temperature: sampling temperature.
        seed: seed of the sampling, the bootstrap and the calibration folds.
        equivalence: shared meaning relation for the clustering estimators.
        embedder: shared embedding model for the embedding estimators.
        bootstrap: resamples for the AUROC intervals.
        level: coverage of the intervals.
        prepare: hook run on each sample set after sampling (see :func:`sample_items`).
        progress: show progress bars.
        sampling: further arguments of :func:`~tokenwise.uncertainty.sample_answers`.

    Example:
        >>> items = [EvalItem("What is 2+3?", lambda a: a == "5"),
        ...          EvalItem("What is 40+4?", lambda a: a == "44")]
        >>> ev = evaluate(items, "tw-small", ["predictive_entropy"], n=2, bootstrap=10,
        ...               max_new_tokens=4, progress=False)  # doctest: +SKIP
    """
    build_estimators(estimators, equivalence, embedder)  # fail on a bad name before sampling
    items = _check_items(items)
    sets = sample_items(items, model, n=n, temperature=temperature, seed=seed,
                        prepare=prepare, progress=progress, **sampling)
    labels = label_samples(items, sets)
    return evaluate_samples(sets, labels, estimators, equivalence=equivalence,
                            embedder=embedder, bootstrap=bootstrap, level=level, seed=seed,
                            groups=[it.group for it in items], progress=progress)


# --------------------------------------------------------------------------------------------
# plotting
# --------------------------------------------------------------------------------------------


def plot_rejection_curves(evaluation: Evaluation, path: str | Path,
                          title: str | None = None) -> Path:
    """Write a PNG of every row's rejection-accuracy curve with the oracle and random ones.

    Needs matplotlib (the ``plot`` extra).

    Args:
        evaluation: the result of :func:`evaluate` or :func:`evaluate_samples`.
        path: where to write the PNG.
        title: the plot title (default: sizes and accuracy).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise TokenwiseError("plotting needs matplotlib: pip install 'tokenwise[plot]'") \
            from None
    path = Path(path)
    if path.is_dir():
        raise TokenwiseError(f"{str(path)!r} is a directory; give a file name for the PNG")
    fig, ax = plt.subplots(figsize=(7, 5))
    first = evaluation.results[0].curve
    ax.plot(first.rates, first.oracle, color="black", linestyle="--", label="oracle")
    ax.plot(first.rates, first.random, color="grey", linestyle=":", label="random")
    for r in evaluation.results:
        ax.plot(r.curve.rates, r.curve.accuracy,
                label=f"{r.name} (AUROC {_fmt(r.auroc.estimate)}, PRR {_fmt(r.prr)})")
    ax.set_xlabel("rejection rate (most uncertain answers rejected first)")
    ax.set_ylabel("accuracy of the kept answers")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(title or f"{len(evaluation.incorrect)} questions, accuracy "
                 f"{100 * evaluation.accuracy:.1f}%")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
