"""Uncertainty estimators, one per module, looked up by name (:func:`get`, :func:`names`).

Example:
    >>> from tokenwise.uncertainty.estimators import names
    >>> "semantic_entropy" in names()
    True
"""

from tokenwise.uncertainty.estimators.base import Estimator
from tokenwise.uncertainty.estimators.registry import ESTIMATORS, get, names

__all__ = ["ESTIMATORS", "Estimator", "get", "names"]
