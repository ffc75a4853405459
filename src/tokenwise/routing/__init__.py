"""Adaptive compute from uncertainty: a difficulty probe picks a strategy per question.

A probe (logistic or small MLP) reads one layer's hidden state at the end of the question
(DiffAdapt reads the last) and a router maps the question to a row of a strategy table: a
small model greedy, a large model greedy, a large model with a k-sample majority vote, or
"I don't know". Strategies are data (:class:`Strategy`, JSON), so users write their own.
Training (:func:`collect`, :func:`fit_router`) answers the training questions every way,
labels them from ``k`` sampled answers (accuracy and answer entropy, as DiffAdapt labels),
fits the probes and chooses the cheapest setting that keeps a target share of the reference
strategy's accuracy under cross-validation. Measured in BENCHMARKS.md, "Routing".

Example:
    >>> from tokenwise.models import load
    >>> from tokenwise.routing import RouteItem, Strategy, collect, fit_router
    >>> models = {"tw-small": load("tw-small"), "tw-large": load("tw-large")}
    >>> table = [Strategy("small", model="tw-small", max_new_tokens=6),
    ...          Strategy("large", model="tw-large", max_new_tokens=6)]
    >>> items = [RouteItem(f"{a}+{b}=", (str(a + b),)) for a in range(4) for b in range(5)]
    >>> data = collect(items, models, table, feature_model="tw-small", k=3, progress=False)
    >>> router = fit_router(data, table, policy="value", folds=2)
    >>> router.answer(models, "2+2=").text
    '4'
"""

from tokenwise.routing.features import (
    EXTRAS,
    check_extras,
    check_layer,
    feature_flops,
    prompt_features,
)
from tokenwise.routing.labels import LABELS, difficulty_labels
from tokenwise.routing.probe import DifficultyProbe
from tokenwise.routing.router import Decision, RoutedAnswer, Router, pick_label, pick_strategy
from tokenwise.routing.strategy import (
    ABSTAIN_TEXT,
    Strategy,
    StrategyAnswer,
    answer_entropy,
    generation_flops,
    load_strategies,
    run_strategy,
)
from tokenwise.routing.train import (
    RouteItem,
    RoutingData,
    collect,
    cross_val_proba,
    fit_router,
    read_items,
    simulate,
)

__all__ = [
    "ABSTAIN_TEXT",
    "EXTRAS",
    "LABELS",
    "Decision",
    "DifficultyProbe",
    "RouteItem",
    "RoutedAnswer",
    "Router",
    "RoutingData",
    "Strategy",
    "StrategyAnswer",
    "answer_entropy",
    "check_extras",
    "check_layer",
    "collect",
    "cross_val_proba",
    "difficulty_labels",
    "feature_flops",
    "fit_router",
    "generation_flops",
    "load_strategies",
    "pick_label",
    "pick_strategy",
    "prompt_features",
    "read_items",
    "run_strategy",
    "simulate",
]
