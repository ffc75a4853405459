"""EigenScore: closed form against a naive covariance, floor, centring variants."""

from __future__ import annotations

import numpy as np
import pytest

from tokenwise.errors import TokenwiseError
from tokenwise.uncertainty import SampleSet
from tokenwise.uncertainty.estimators.eigenscore import EigenScore, eigenscore

from .helpers import axis_embedder


def test_matches_naive_covariance():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(5, 7))
    zc = z - z.mean(0)
    want = np.log(np.linalg.eigvalsh(zc @ zc.T / 7 + 1e-3 * np.eye(5))).mean()
    assert eigenscore(z) == pytest.approx(want)
    zf = z - z.mean(1, keepdims=True)
    want_f = np.log(np.linalg.eigvalsh(zf @ zf.T / 7 + 1e-3 * np.eye(5))).mean()
    assert eigenscore(z, center="features") == pytest.approx(want_f)


def test_identical_answers_give_the_floor_and_spread_raises_it():
    emb = axis_embedder({"x": [1.0, 0.0, 0.0], "y": [0.0, 1.0, 0.0], "z": [0.0, 0.0, 1.0]})
    same = SampleSet.from_texts("Q?", ["x", "x", "x"])
    apart = SampleSet.from_texts("Q?", ["x", "y", "z"])
    assert EigenScore(emb)(same) == pytest.approx(np.log(1e-3))
    assert EigenScore(emb)(apart) > EigenScore(emb)(same)


def test_bad_input():
    with pytest.raises(TokenwiseError, match="center="):
        eigenscore(np.ones((3, 2)), center="rows")
    with pytest.raises(TokenwiseError, match="n >= 2"):
        eigenscore(np.ones((1, 2)))
    with pytest.raises(TokenwiseError, match="eps"):
        eigenscore(np.ones((2, 2)), alpha=-1)
