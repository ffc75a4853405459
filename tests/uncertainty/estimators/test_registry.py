"""The estimator registry: every name builds, parameters are checked."""

from __future__ import annotations

import inspect

import pytest

from tokenwise.errors import TokenwiseError
from tokenwise.uncertainty import Estimator, get, names
from tokenwise.uncertainty.estimators import ESTIMATORS
from tokenwise.uncertainty.estimators.registry import estimator_class


@pytest.mark.parametrize("name", names())
def test_every_name_builds_its_class_with_its_presets(name):
    """A plain name builds the estimator of that name; a variant (a name with preset
    parameters) builds its class's estimator with the presets set, each differing from the
    class's own default (else the variant would be the plain estimator under another name)."""
    cls, presets = estimator_class(name), ESTIMATORS[name][1]
    est = get(name)
    assert isinstance(est, Estimator) and type(est) is cls
    if not presets:
        assert est.name == name
        return
    assert est.name != name and est.name in ESTIMATORS and ESTIMATORS[est.name][1] == {}
    assert estimator_class(est.name) is cls
    defaults = inspect.signature(cls.__init__).parameters
    for key, value in presets.items():
        assert getattr(est, key) == value
        assert defaults[key].default != value, (name, key)


def test_unknown_name_and_parameters():
    with pytest.raises(TokenwiseError, match=r"known: .*semantic_entropy"):
        get("semantic_entropi")
    with pytest.raises(TokenwiseError, match="no parameter"):
        get("predictive_entropy", temperature=2)
