"""Spectral view of the head: the operator against brute force and closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tokenwise.analysis.spectral import (
    head_rows,
    markov_contexts,
    model_contexts,
    predictive_similarity,
    random_head_overlaps,
    spectral_alignment,
    subspace_overlap,
)
from tokenwise.errors import TokenwiseError
from tokenwise.testbed import MarkovSource


def test_operator_matches_the_double_sum_and_has_the_trivial_eigenvector():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(5), size=7)
    w = rng.dirichlet(np.ones(7))
    op = predictive_similarity(probs, w)
    p = w @ probs
    brute = np.array([[sum(w[c] * probs[c, a] * probs[c, b] for c in range(7))
                       / np.sqrt(p[a] * p[b]) for b in range(5)] for a in range(5)])
    np.testing.assert_allclose(op.matrix, brute, atol=1e-12)
    np.testing.assert_allclose(op.matrix @ np.sqrt(p), np.sqrt(p), atol=1e-12)
    vals, vecs = op.eigen(4)
    assert vals[0] < 1.0 and vals.min() >= -1e-12
    np.testing.assert_allclose(np.sqrt(p) @ vecs, 0.0, atol=1e-10)


def test_two_disconnected_groups_give_a_second_unit_eigenvalue_along_the_group_contrast():
    # contexts 0,1 predict tokens {0,1}; contexts 2,3 predict {2,3,4}: S is block diagonal
    probs = np.array([[0.7, 0.3, 0, 0, 0], [0.2, 0.8, 0, 0, 0],
                      [0, 0, 0.5, 0.25, 0.25], [0, 0, 0.1, 0.1, 0.8]])
    w = np.array([0.1, 0.3, 0.4, 0.2])
    op = predictive_similarity(probs, w)
    vals, vecs = op.eigen(2)
    assert vals[0] == pytest.approx(1.0) and vals[1] < 1.0 - 1e-6
    p = op.marginal
    g1 = p[:2].sum()
    contrast = np.sqrt(p) * np.r_[[1 / g1] * 2, [-1 / (1 - g1)] * 3]
    contrast /= np.linalg.norm(contrast)
    assert abs(vecs[:, 0] @ contrast) == pytest.approx(1.0)


def test_the_spectral_contrastive_head_aligns_fully_and_its_complement_not_at_all():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.full(8, 0.5), size=20)
    op = predictive_similarity(probs)
    _, e = op.eigen(7)
    scale = 1 / np.sqrt(op.marginal)[:, None]
    head = e[:, :3] * scale * [3.0, 2.0, 1.0]  # ordered singular values: spans nest in order
    got = spectral_alignment(head, probs, ks=(1, 2, 3))
    np.testing.assert_allclose(got.overlap, [1.0, 1.0, 1.0], atol=1e-9)
    # a constant added to every row changes no logit differences, hence no alignment
    shifted = spectral_alignment(head + rng.standard_normal(3), probs, ks=(1, 2, 3))
    np.testing.assert_allclose(shifted.overlap, got.overlap, atol=1e-9)
    other = spectral_alignment(e[:, 3:6] * scale, probs, ks=(3,))
    assert other.overlap[0] == pytest.approx(0.0, abs=1e-9)
    assert got.chance == (1 / 7, 2 / 7, 3 / 7)


def test_random_heads_average_the_chance_overlap_when_tokens_are_equally_likely():
    probs = np.roll(np.eye(9) * 0.6 + 0.4 / 9, 1, axis=0) / (0.6 + 0.4)  # doubly stochastic
    over = random_head_overlaps((9, 6), probs, ks=(2, 4), n=600, seed=3)
    np.testing.assert_allclose(over.mean(0), [2 / 8, 4 / 8], atol=0.03)


def test_subspace_overlap_is_the_mean_squared_cosine():
    a = np.eye(4)[:, :2]
    t = 0.3
    b = np.stack([np.r_[np.cos(t), 0, np.sin(t), 0], np.eye(4)[3]], 1)
    assert subspace_overlap(a, b) == pytest.approx(np.cos(t) ** 2 / 2)


def test_markov_contexts_match_the_sampled_lines_true_distributions():
    src = MarkovSource(0, length=12)
    probs, w = markov_contexts(src)
    assert w.sum() == pytest.approx(1.0) and w[0] == pytest.approx(1 / 12)
    rng = np.random.default_rng(5)
    rows = np.vstack([src.sample(rng).true_probs for _ in range(3000)])
    exact = predictive_similarity(probs, w).matrix
    sampled = predictive_similarity(rows).matrix
    np.testing.assert_allclose(sampled, exact, atol=0.02)


def test_model_contexts_are_the_models_renormalised_predictions():
    from tokenwise.models import load

    lm = load("tw-small")
    sel = lm.encode(" ka lo mi nu")
    probs, w = model_contexts(lm, ["markov: ka lo mi", "markov: nu"], sel)
    ids = lm.encode("markov: ka lo mi", add_bos=True)
    logp = torch.log_softmax(lm.forward(torch.tensor([ids])).logits[0, -1].double(), -1)
    q = logp[sel].exp().numpy()
    np.testing.assert_allclose(probs[len(ids) - 1], q / q.sum(), atol=1e-5)
    assert len(w) == len(ids) + len(lm.encode("markov: nu", add_bos=True))
    assert head_rows(lm, sel).shape == (4, lm.hf_model.config.hidden_size)


def test_bad_inputs_are_clear_errors():
    with pytest.raises(TokenwiseError, match="summing to 1"):
        predictive_similarity([[0.5, 0.6]])
    with pytest.raises(TokenwiseError, match="token 2 has marginal probability 0"):
        predictive_similarity([[0.5, 0.5, 0.0]])
    with pytest.raises(TokenwiseError, match=r"weights shape \(3,\)"):
        predictive_similarity([[0.5, 0.5]], [0.2, 0.3, 0.5])
    with pytest.raises(TokenwiseError, match=r"ks=\[5\]: allowed 1..2"):
        spectral_alignment(np.ones((3, 2)), [[0.2, 0.3, 0.5]], ks=(5,))
    with pytest.raises(TokenwiseError, match=r"head shape \(2, 2\)"):
        spectral_alignment(np.ones((2, 2)), [[0.2, 0.3, 0.5]], ks=(1,))
