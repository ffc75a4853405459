"""Estimators by name: one line per estimator in :data:`ESTIMATORS`."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from tokenwise.errors import TokenwiseError
from tokenwise.uncertainty.estimators.base import Estimator

#: name -> ("module:Class", default parameters). Imported on first use.
ESTIMATORS: dict[str, tuple[str, dict[str, Any]]] = {
    "predictive_entropy": ("predictive_entropy:PredictiveEntropy", {}),
    "predictive_entropy_normalised": ("predictive_entropy:PredictiveEntropy",
                                      {"length_normalised": True}),
    "maximum_sequence_probability": ("maximum_sequence_probability:MaximumSequenceProbability",
                                     {}),
    "mean_token_entropy": ("mean_token_entropy:MeanTokenEntropy", {}),
    "semantic_entropy": ("semantic_entropy:SemanticEntropy", {}),
    "discrete_semantic_entropy": ("discrete_semantic_entropy:DiscreteSemanticEntropy", {}),
    "num_semantic_sets": ("num_semantic_sets:NumSemanticSets", {}),
    "semantic_volume": ("semantic_volume:SemanticVolume", {}),
    "semantic_volume_questions": ("semantic_volume:SemanticVolume", {"source": "questions"}),
    "eigenscore": ("eigenscore:EigenScore", {}),
    "inv_entropy": ("inv_entropy:InvEntropy", {}),
}


def estimator_class(name: str) -> type[Estimator]:
    """The class registered as ``name`` (raises, listing the names, if there is none)."""
    if not isinstance(name, str) or name not in ESTIMATORS:
        raise TokenwiseError(f"unknown estimator {name!r}; known: {', '.join(names())}")
    path, _ = ESTIMATORS[name]
    module, attr = path.split(":")
    return getattr(importlib.import_module(f"tokenwise.uncertainty.estimators.{module}"), attr)


def names() -> list[str]:
    """The registered estimator names, sorted.

    Example:
        >>> names()[:2]
        ['discrete_semantic_entropy', 'eigenscore']
    """
    return sorted(ESTIMATORS)


def get(name: str, **params: Any) -> Estimator:
    """Build an estimator by name: ``get("semantic_entropy", equivalence=eq)``.

    Args:
        name: a key of :data:`ESTIMATORS`.
        params: the estimator's arguments (over the registered defaults); unknown ones
            are an error, never ignored.

    Example:
        >>> get("predictive_entropy_normalised")
        PredictiveEntropy(length_normalised=True)
    """
    cls = estimator_class(name)
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise TokenwiseError(f"estimator {name!r} has no parameter(s) {', '.join(unknown)}; "
                             f"allowed: {', '.join(accepted) or 'none'}")
    return cls(**{**ESTIMATORS[name][1], **params})
