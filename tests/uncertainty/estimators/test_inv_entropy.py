"""Inv-Entropy: one draw against the reference's matrix steps, draws, bad input."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tokenwise.errors import TokenwiseError
from tokenwise.uncertainty import ParaphraseGroup, SampleSet
from tokenwise.uncertainty.estimators.inv_entropy import InvEntropy, inv_entropy_once

from .helpers import axis_embedder


def reference_once(qv, av):
    """The reference's steps, written out: |cos| sims, row-normalise, p(x|y) = P_y P_x,
    transposed, -Σ diag log diag."""
    def sim(v):
        v = v / np.linalg.norm(v, axis=1, keepdims=True)
        return np.abs(v @ v.T)

    px = sim(qv) / sim(qv).sum(1, keepdims=True)
    py = sim(av) / sim(av).sum(1, keepdims=True)
    px_y = (py @ px).T
    d = np.diag(px_y)
    return -np.sum(d * np.log(d))


def test_once_matches_reference_steps():
    rng = np.random.default_rng(0)
    qv, av = rng.normal(size=(10, 6)), rng.normal(size=(10, 4))
    assert inv_entropy_once(qv, av) == pytest.approx(reference_once(qv, av))


def test_estimator_averages_every_draw_when_few():
    rng = np.random.default_rng(1)
    vecs = {t: rng.normal(size=3).tolist() for t in ["Q0", "Q1", "Q2", "a", "b", "c", "d", "e"]}
    groups = [ParaphraseGroup("Q0", ("a", "b")), ParaphraseGroup("Q1", ("c",)),
              ParaphraseGroup("Q2", ("d", "e"))]
    s = SampleSet.from_texts("Q0", ["a", "b"], paraphrases=groups)
    emb = axis_embedder(vecs)
    qv = np.array([vecs[q] for q in ("Q0", "Q1", "Q2")])
    want = np.mean([reference_once(qv, np.array([vecs[x], vecs[y], vecs[z]]))
                    for x, y, z in itertools.product("ab", "c", "de")])
    assert InvEntropy(emb)(s) == pytest.approx(want)


def test_draws_are_distinct_seeded_and_sized():
    est = InvEntropy(axis_embedder({}), draws=20, seed=1)
    picks = est.choices([5] * 10)
    assert len(picks) == len(set(picks)) == 20
    assert picks == InvEntropy(axis_embedder({}), draws=20, seed=1).choices([5] * 10)
    assert len(est.choices([1, 1, 2])) == 2  # fewer distinct draws than asked: all of them


def test_agreement_scores_lower_than_confusion():
    table = {"Q0": [1.0, 0.1], "Q1": [1.0, 0.2], "Q2": [1.0, 0.3],
             "same": [0.0, 1.0], "x": [1.0, 0.0], "y": [0.0, 1.0], "z": [1.0, 1.0]}
    emb = axis_embedder(table)
    agree = [ParaphraseGroup(q, ("same",)) for q in ("Q0", "Q1", "Q2")]
    mixed = [ParaphraseGroup(q, (a,)) for q, a in zip(("Q0", "Q1", "Q2"), "xyz", strict=True)]
    s_agree = SampleSet.from_texts("Q0", ["a", "b"], paraphrases=agree)
    s_mixed = SampleSet.from_texts("Q0", ["a", "b"], paraphrases=mixed)
    assert InvEntropy(emb)(s_agree) != pytest.approx(InvEntropy(emb)(s_mixed))


def test_bad_input():
    with pytest.raises(TokenwiseError, match="at least 2 question forms"):
        InvEntropy(axis_embedder({}))(SampleSet.from_texts("Q?", ["a", "b"]))
    with pytest.raises(TokenwiseError, match="draws"):
        InvEntropy(axis_embedder({}), draws=0)
    with pytest.raises(TokenwiseError, match="same m"):
        inv_entropy_once(np.ones((3, 2)), np.ones((2, 2)))
