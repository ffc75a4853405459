"""The estimator registry: every name builds, parameters are checked."""

from __future__ import annotations

import pytest

from tokenwise.errors import TokenwiseError
from tokenwise.uncertainty import Estimator, get, names
from tokenwise.uncertainty.estimators import ESTIMATORS


def test_every_name_builds_an_estimator_with_that_name():
    for name in names():
        est = get(name)
        assert isinstance(est, Estimator)
        assert est.name == name or ESTIMATORS[name][1]  # variants carry preset parameters


def test_unknown_name_and_parameters():
    with pytest.raises(TokenwiseError, match=r"known: .*semantic_entropy"):
        get("semantic_entropi")
    with pytest.raises(TokenwiseError, match="no parameter"):
        get("predictive_entropy", temperature=2)
