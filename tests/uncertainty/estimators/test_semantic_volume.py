"""Semantic Volume: closed forms, eps floor, d < n, questions, duplicates, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from tokenwise.errors import TokenwiseError
from tokenwise.uncertainty import ParaphraseGroup, SampleSet, get
from tokenwise.uncertainty.estimators.semantic_volume import SemanticVolume, semantic_volume

from .helpers import axis_embedder


def test_closed_form_two_vectors():
    # unit vectors at angle t: Gram [[1, c], [c, 1]] + eps I has det (1+eps)^2 - c^2
    t, eps = 0.7, 1e-3
    v = np.array([[1.0, 0.0], [np.cos(t), np.sin(t)]])
    assert semantic_volume(v, eps) == pytest.approx(np.log((1 + eps) ** 2 - np.cos(t) ** 2))


def test_scale_and_order_invariant_and_naive():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(5, 8))
    naive = np.log(np.linalg.det((v / np.linalg.norm(v, axis=1, keepdims=True))
                                 @ (v / np.linalg.norm(v, axis=1, keepdims=True)).T
                                 + 1e-3 * np.eye(5)))
    assert semantic_volume(v) == pytest.approx(naive)
    assert semantic_volume(3.0 * v[::-1]) == pytest.approx(naive)


def test_identical_vectors_sit_on_the_eps_floor():
    eps = 1e-2
    v = np.ones((4, 3))
    # eigenvalues: n + eps once, eps (n - 1) times
    assert semantic_volume(v, eps) == pytest.approx(np.log(4 + eps) + 3 * np.log(eps))


def test_fewer_dimensions_than_samples_is_finite_and_documented():
    rng = np.random.default_rng(1)
    v = rng.normal(size=(6, 2))  # d = 2 < n = 6: rank 2, four eigenvalues exactly eps
    g = v / np.linalg.norm(v, axis=1, keepdims=True)
    top = np.sort(np.linalg.eigvalsh(g @ g.T))[-2:]
    want = np.log(top + 1e-3).sum() + 4 * np.log(1e-3)
    assert semantic_volume(v) == pytest.approx(want, rel=1e-6)


def test_estimator_on_answers_and_questions():
    table = {"x": [1.0, 0.0], "y": [0.0, 1.0], "Q?": [1.0, 1.0], "Q again?": [1.0, 0.0]}
    emb = axis_embedder(table)
    s = SampleSet.from_texts("Q?", ["x", "y", "x"],
                             paraphrases=[ParaphraseGroup("Q?", ("x",)),
                                          ParaphraseGroup("Q again?", ("y",))])
    eps = 0.1
    g = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1]]) + eps * np.eye(3)
    assert SemanticVolume(emb, eps=eps)(s) == pytest.approx(np.log(np.linalg.det(g)))
    # questions: original, then each group's question (the original again, "Q again?")
    qv = np.array([[1, 1], [1, 1], [1, 0]]) / np.array([[2**.5], [2**.5], [1]])
    gq = qv @ qv.T + eps * np.eye(3)
    got = get("semantic_volume_questions", embedder=emb, eps=eps)(s)
    assert got == pytest.approx(np.log(np.linalg.det(gq)))
    # a repeated answer shrinks the volume (same n)
    three = axis_embedder({"x": [1.0, 0, 0], "y": [0, 1.0, 0], "z": [0, 0, 1.0]})
    apart = SampleSet.from_texts("Q?", ["x", "y", "z"])
    repeat = SampleSet.from_texts("Q?", ["x", "y", "x"])
    assert SemanticVolume(three)(apart) == pytest.approx(3 * np.log(1 + 1e-3))
    assert SemanticVolume(three)(repeat) < SemanticVolume(three)(apart)


def test_bad_input():
    emb = axis_embedder({"x": [1.0, 0.0], "y": [0.0, 1.0]})
    with pytest.raises(TokenwiseError, match="eps"):
        SemanticVolume(emb, eps=0)
    with pytest.raises(TokenwiseError, match="paraphrase groups"):
        SemanticVolume(emb, source="questions")(SampleSet.from_texts("Q?", ["x", "y"]))
    with pytest.raises(TokenwiseError, match="non-zero"):
        semantic_volume(np.zeros((2, 3)))
    with pytest.raises(TokenwiseError, match="source="):
        SemanticVolume(emb, source="both")


def test_minilm_spread_orders_sets():
    tight = SampleSet.from_texts("Q?", ["a lawyer", "an attorney", "a lawyer", "lawyer"])
    loose = SampleSet.from_texts("Q?", ["a lawyer", "1742", "the city of Velmora", "an owl"])
    sv = SemanticVolume()
    assert sv(loose) > sv(tight)
