"""Semantic entropy: closed forms, repeats counted once, order invariance, the reference
and lm-polygraph formulas written out naively, bad input."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from tokenwise.errors import TokenwiseError
from tokenwise.uncertainty import ExactEquivalence, SampleSet, get
from tokenwise.uncertainty.estimators.semantic_entropy import SemanticEntropy

from .helpers import FIRST_LETTER, probs_set


def raw_se(**options):
    """Semantic entropy weighted by sequence log-likelihoods (closed forms below use them)."""
    return SemanticEntropy(FIRST_LETTER, length_normalised=False, **options)


def h(ps):
    ps = np.asarray(ps, dtype=float) / sum(ps)
    return float(-(ps * np.log(ps)).sum())


def test_closed_form_likelihood_weighted():
    s = probs_set(["apple", "avocado", "banana", "cherry"], [0.4, 0.2, 0.1, 0.1])
    assert raw_se()(s) == pytest.approx(h([0.6, 0.1, 0.1]))


def test_one_meaning_is_zero():
    s = probs_set(["apple", "Avocado", "apple"], [0.1, 0.01, 0.1])
    assert raw_se()(s) == pytest.approx(0.0, abs=1e-12)


def test_repeats_count_once():
    once = probs_set(["apple", "banana"], [0.3, 0.1])
    thrice = probs_set(["apple", "banana", "apple", "apple"], [0.3, 0.1, 0.3, 0.3])
    se = SemanticEntropy(FIRST_LETTER, length_normalised=False)
    assert se(thrice) == pytest.approx(se(once)) == pytest.approx(h([0.3, 0.1]))
    # counted every time (the reference code): 0.9 vs 0.1
    assert raw_se(unique=False)(thrice) == pytest.approx(h([0.9, 0.1]))


def test_same_text_other_tokenisation_adds_mass():
    s = SampleSet.from_texts("Q?", ["apple", "apple", "banana"],
                             logprobs=[[math.log(0.2)], [math.log(0.05), 0.0],
                                       [math.log(0.25)]])
    assert raw_se()(s) == pytest.approx(h([0.25, 0.25]))


def test_order_invariance():
    texts = ["apple", "banana", "apple", "avocado", "cherry", "blueberry"]
    probs = [0.2, 0.1, 0.2, 0.05, 0.3, 0.02]
    base = raw_se()(probs_set(texts, probs))
    rng = random.Random(0)
    for _ in range(5):
        order = list(range(len(texts)))
        rng.shuffle(order)
        shuffled = probs_set([texts[i] for i in order], [probs[i] for i in order])
        assert raw_se()(shuffled) == pytest.approx(base)


def test_matches_reference_and_lm_polygraph_formulas():
    texts = ["apple", "banana", "apple", "avocado", "cherry"]
    token_lps = [[-0.1, -0.5], [-2.0], [-0.1, -0.5], [-1.0, -1.0, -1.0], [-0.3]]
    s = SampleSet.from_texts("Q?", texts, logprobs=token_lps)
    ids = s.stats.clusters(FIRST_LETTER).ids
    # jlko reference: mean token log-lik, every sample counted, normalised, -Σ p log p
    ll = np.array([np.mean(t) for t in token_lps])
    norm = ll - np.log(np.exp(ll).sum())
    per_c = [np.log(np.exp(norm[[i for i, c in enumerate(ids) if c == k]]).sum())
             for k in sorted(set(ids))]
    ref = -sum(np.exp(v) * v for v in per_c)
    got = SemanticEntropy(FIRST_LETTER, length_normalised=True, unique=False)(s)
    assert got == pytest.approx(ref)
    # lm-polygraph default: summed log-lik, un-normalised class mass, mean over samples
    ll = np.array([np.sum(t) for t in token_lps])
    cls = {k: np.logaddexp.reduce(ll[[i for i, c in enumerate(ids) if c == k]])
           for k in set(ids)}
    poly = -np.mean([cls[c] for c in ids])
    got = SemanticEntropy(FIRST_LETTER, length_normalised=False, unique=False, estimator="mc",
                          normalise=False)(s)
    assert got == pytest.approx(poly)


def test_shares_clusters_with_other_estimators():
    calls = []
    eq = ExactEquivalence()
    original = eq.many
    eq.many = lambda q, pairs: calls.append(len(pairs)) or original(q, pairs)
    s = probs_set(["a", "b", "a"], [0.5, 0.2, 0.5])
    get("semantic_entropy", equivalence=eq)(s)
    n = len(calls)
    get("discrete_semantic_entropy", equivalence=eq)(s)
    get("num_semantic_sets", equivalence=eq)(s)
    assert len(calls) == n


def test_bad_input():
    with pytest.raises(TokenwiseError, match="needs token log-probabilities"):
        raw_se()(SampleSet.from_texts("Q?", ["a", "b"]))
    with pytest.raises(TokenwiseError, match="estimator="):
        SemanticEntropy(FIRST_LETTER, estimator="plugin")
    with pytest.raises(TokenwiseError, match="normalise=True"):
        SemanticEntropy(FIRST_LETTER, normalise=False)
    s = SampleSet.from_texts("Q?", ["a", "b"], logprobs=[-math.inf, -math.inf])
    with pytest.raises(TokenwiseError, match="-inf"):
        raw_se()(s)
    # one impossible answer contributes nothing
    s = SampleSet.from_texts("Q?", ["a", "b"], logprobs=[-math.inf, -1.0])
    assert raw_se()(s) == pytest.approx(0.0, abs=1e-12)
