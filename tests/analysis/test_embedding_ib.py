"""Compression vs meaning: information measures against brute force and scikit-learn."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from tokenwise.analysis.embedding_ib import (
    adjusted_mutual_information,
    distortion,
    expected_mutual_information,
    ib_curve,
    kmeans,
    mutual_information,
    score_partition,
)
from tokenwise.errors import TokenwiseError

LABELINGS = [
    ([0, 0, 1, 1, 2, 2, 2], [0, 1, 1, 1, 0, 2, 2]),
    ([0, 1, 2, 3, 4], [0, 0, 0, 1, 1]),
    ([0, 0, 0, 0, 1, 1, 1, 2, 2, 3], [1, 1, 2, 2, 2, 3, 3, 0, 0, 0]),
]


@pytest.mark.parametrize(("a", "b"), LABELINGS)
def test_expected_mi_equals_the_average_over_every_permutation(a, b):
    # brute force: E over all orderings of b of MI(a, permuted b)
    perms = list(itertools.permutations(b)) if len(b) <= 7 else None
    if perms is None:
        rng = np.random.default_rng(0)
        perms = [rng.permutation(b) for _ in range(20000)]
        tol = 2e-3
    else:
        tol = 1e-9
    brute = np.mean([mutual_information(a, p) for p in perms])
    assert expected_mutual_information(a, b) == pytest.approx(brute, abs=tol)


@pytest.mark.parametrize(("a", "b"), LABELINGS)
def test_ami_and_mi_match_scikit_learn(a, b):
    metrics = pytest.importorskip("sklearn.metrics")
    assert mutual_information(a, b) == pytest.approx(metrics.mutual_info_score(a, b))
    assert adjusted_mutual_information(a, b) == pytest.approx(
        metrics.adjusted_mutual_info_score(a, b), abs=1e-9)


def test_complexity_is_the_entropy_of_cluster_sizes_and_distortion_is_one_minus_r2():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 3))
    labels = [0] * 6 + [1] * 4 + [2] * 2
    s = score_partition(x, labels, beta=2.0)
    sizes = np.array([6, 4, 2]) / 12
    assert s.complexity == pytest.approx(-(sizes * np.log(sizes)).sum())
    within = sum(((x[np.array(labels) == c] - x[np.array(labels) == c].mean(0)) ** 2).sum()
                 for c in range(3))
    assert s.distortion == pytest.approx(within / ((x - x.mean(0)) ** 2).sum())
    assert s.objective == pytest.approx(s.complexity + 2.0 * s.distortion)
    assert distortion(x, range(12)) == 0.0 and distortion(x, [0] * 12) == pytest.approx(1.0)
    assert s.ami is None


def test_kmeans_finds_separated_blobs_and_ami_is_one_there():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(4, 8)) * 20
    truth = np.repeat(np.arange(4), 10)
    x = centres[truth] + rng.normal(size=(40, 8))
    labels = kmeans(x, 4, seed=3)
    assert adjusted_mutual_information(labels, truth) == pytest.approx(1.0)
    curve = ib_curve(x, truth, ks=[1, 4, 40])
    assert [p.k for p in curve] == [1, 4, 40]
    assert curve[0].complexity == 0.0 and curve[0].distortion == pytest.approx(1.0)
    assert curve[2].complexity == pytest.approx(math.log(40)) and curve[2].distortion == 0.0


def test_bad_arguments_name_what_is_allowed():
    with pytest.raises(TokenwiseError, match=r"k=5: allowed 1\.\.4"):
        kmeans(np.zeros((4, 2)), 5)
    with pytest.raises(TokenwiseError, match="3 labels for 4 embeddings"):
        score_partition(np.zeros((4, 2)), [0, 1, 1])
