"""G theory: semantic information checked by hand on small cases and against brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tokenwise.analysis.semantic_information import (
    g_information,
    logical_probability,
    meaning_truth,
    semantic_information,
    semantic_posterior,
)
from tokenwise.errors import TokenwiseError

PRIOR = [0.5, 0.25, 0.25]


def test_crisp_answers_by_hand():
    truth = [[1, 1, 0], [1, 1, 1], [0, 0, 1]]  # "x0 or x1", a tautology, "x2"
    assert logical_probability(truth, PRIOR).tolist() == [0.75, 1.0, 0.25]
    info = semantic_information(truth, PRIOR)
    assert info[0, 0] == pytest.approx(math.log(1 / 0.75))
    assert info[0, 2] == -math.inf
    np.testing.assert_allclose(info[1], 0.0)  # a tautology tells nothing
    assert info[2, 2] == pytest.approx(math.log(4))  # = -log P(x2): what a true answer rules out
    np.testing.assert_allclose(semantic_posterior(truth, PRIOR)[0], [2 / 3, 1 / 3, 0])


def test_fuzzy_truth_by_hand():
    # "about x0": fully true of x0, half true of x1, false of x2; uniform prior -> T = 0.5
    info = semantic_information([[1.0, 0.5, 0.0]], [1 / 3] * 3)
    assert info[0, 0] == pytest.approx(math.log(2)) and info[0, 1] == pytest.approx(0.0)
    assert info[0, 2] == -math.inf


def test_loss_is_the_expected_kl_between_true_and_semantic_posteriors():
    rng = np.random.default_rng(0)
    prior = rng.dirichlet(np.ones(4))
    truth = rng.uniform(0.05, 1.0, size=(3, 4))
    channel = rng.dirichlet(np.ones(3), size=4)
    g = g_information(truth, prior, channel)
    joint = prior[:, None] * channel
    py = joint.sum(0)
    shannon = sum(joint[i, j] * math.log(joint[i, j] / (prior[i] * py[j]))
                  for i in range(4) for j in range(3))
    sem_post = semantic_posterior(truth, prior)
    kl = sum(py[j] * sum(joint[i, j] / py[j] * math.log(joint[i, j] / py[j] / sem_post[j, i])
                         for i in range(4)) for j in range(3))
    assert g.shannon == pytest.approx(shannon)
    assert g.loss == pytest.approx(kl) and g.loss > 0
    np.testing.assert_allclose(g.answer_probs, py)


def test_truth_proportional_to_the_channel_loses_nothing():
    rng = np.random.default_rng(1)
    prior = rng.dirichlet(np.ones(5))
    channel = rng.dirichlet(np.ones(3), size=5)
    truth = (channel / channel.max(0)).T  # T(theta_j | x) = P(y_j | x) / max_x P(y_j | x)
    g = g_information(truth, prior, channel)
    assert g.loss == pytest.approx(0.0, abs=1e-12) and g.semantic == pytest.approx(g.shannon)


def test_synonyms_carry_the_same_semantic_information_and_false_answers_cost():
    meanings = {"a dog": "dog", "a hound": "dog", "a cat": "cat", "a banana": None}
    answers = list(meanings)
    crisp = meaning_truth(answers, ["dog", "cat"], meanings.get)
    assert crisp.tolist() == [[1, 0], [1, 0], [0, 1], [0, 0]]
    info = semantic_information(crisp[:3], [0.5, 0.5])
    assert info[0, 0] == info[1, 0] == pytest.approx(math.log(2))
    # dog answered "a dog" or "a hound" at random, cat always "a cat": the surface form adds
    # Shannon surprisal to each answer but no information about the state
    channel = [[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]
    g = g_information(crisp[:3], [0.5, 0.5], channel)
    assert g.semantic == pytest.approx(math.log(2)) and g.loss == pytest.approx(0.0, abs=1e-12)
    # a wrong answer: minus infinity under crisp truth, finite with a floor
    g_wrong = g_information(crisp[:3], [0.5, 0.5], [[0.9, 0.0, 0.1], [0.0, 0.0, 1.0]])
    assert g_wrong.semantic == -math.inf
    soft = meaning_truth(answers[:3], ["dog", "cat"], meanings.get, floor=0.1)
    assert semantic_information(soft, [0.5, 0.5])[2, 0] == pytest.approx(math.log(0.1 / 0.55))


def test_bad_inputs_are_clear_errors():
    with pytest.raises(TokenwiseError, match=r"truth: allowed values in \[0, 1\]"):
        semantic_information([[1.5, 0]], [0.5, 0.5])
    with pytest.raises(TokenwiseError, match="prior: allowed non-negative numbers summing to 1"):
        logical_probability([[1, 0]], [0.5, 0.6])
    with pytest.raises(TokenwiseError, match="answer 0 has logical probability 0"):
        semantic_information([[0, 1]], [1.0, 0.0])
    with pytest.raises(TokenwiseError, match=r"channel shape \(2, 3\)"):
        g_information([[1, 0], [0, 1]], [0.5, 0.5], np.full((2, 3), 1 / 3))
    with pytest.raises(TokenwiseError, match=r"floor=1\.0"):
        meaning_truth(["a"], ["a"], str, floor=1.0)
