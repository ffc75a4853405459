"""GAAP: meaning kept, diversity gained, reproducible, operators, bad input."""

from __future__ import annotations

import random

import numpy as np
import pytest

from tokenwise.errors import TokenwiseError
from tokenwise.uncertainty import gaap
from tokenwise.uncertainty.embedding import default_embedder
from tokenwise.uncertainty.gaap import diverse_subset, lexical_mutation, word_crossover

QUESTION = "Where was Ana Velmor born?"
SYN = {"born": ["brought into the world", "delivered"], "where": ["in which place",
                                                                    "in what city"]}


def min_pairwise_distance(texts):
    v = default_embedder().embed(texts)
    d = 1 - v @ v.T
    return d[np.triu_indices(len(texts), 1)].min()


def test_keeps_meaning_and_is_reproducible():
    out = gaap(QUESTION, k=5, mutate=lexical_mutation(SYN), min_similarity=0.7, seed=1)
    assert len(out) == len(set(out)) == 5 and QUESTION not in out
    sims = default_embedder().embed(out) @ default_embedder().embed([QUESTION])[0]
    assert (sims >= 0.7 - 1e-9).all()
    assert out == gaap(QUESTION, k=5, mutate=lexical_mutation(SYN), min_similarity=0.7, seed=1)


def test_more_diverse_than_single_mutations():
    mutate = lexical_mutation(SYN)
    rng = random.Random(1)
    single = list(dict.fromkeys(mutate(QUESTION, rng) for _ in range(40)))[:5]
    evolved = gaap(QUESTION, k=5, mutate=mutate, seed=1)
    assert min_pairwise_distance(evolved) > min_pairwise_distance(single)


def test_word_crossover_keeps_shared_words():
    rng = random.Random(0)
    for _ in range(20):
        child = word_crossover("Tell me: where was Ana born?", "where was Ana delivered.", rng)
        assert "where was Ana" in child and child.count("Ana") == 1


def test_diverse_subset_closed_form():
    v = np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7], [1.0, 0.05]])
    assert diverse_subset(v, 2) == [0, 1]
    assert diverse_subset(v, 3, anchor=np.array([1.0, 0.0])) == [1, 2, 3]


def test_bad_input():
    with pytest.raises(TokenwiseError, match="question"):
        gaap(" ")
    with pytest.raises(TokenwiseError, match="population"):
        gaap(QUESTION, population=1)
    with pytest.raises(TokenwiseError, match="no perturbation"):
        gaap(QUESTION, k=2, min_similarity=1.0, generations=1, population=4)
