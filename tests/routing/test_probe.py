"""Tests for tokenwise.routing.probe: the difficulty probe (logistic or MLP)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.optimize import minimize

from tokenwise.errors import TokenwiseError
from tokenwise.routing.probe import DifficultyProbe


def _blobs(seed=0, n=20):
    rng = np.random.default_rng(seed)
    centres = {"easy": (-3.0, 0.0), "normal": (0.0, 3.0), "hard": (3.0, 0.0)}
    x, y = [], []
    for label, c in centres.items():
        x.append(rng.normal(c, 0.4, size=(n, 2)))
        y += [label] * n
    return np.concatenate(x), y


def _imbalanced():
    """1-D, overlapping: 30 of class "a" on [0, 1.45], 6 of the rare class "b" on [1, 2]."""
    x = np.concatenate([np.linspace(0.0, 1.45, 30), np.linspace(1.0, 2.0, 6)])
    y = ["a"] * 30 + ["b"] * 6
    return x[:, None], y


def _reference_binary(x, y, *, l2, balanced):
    """A naive weighted L2 logistic fit of P("b" | x), from scratch in float64.

    The probe's two-logit softmax with an L2 penalty on both weight rows is, at its optimum,
    a binary logistic regression on the logit difference d with penalty ``l2 / 4 x d^2``
    (the penalty splits d evenly, +-d/2), on features standardised with the population
    deviation; the loss is the class-weighted mean of the cross-entropies.
    """
    x = np.asarray(x, float)[:, 0]
    z = (x - x.mean()) / x.std()
    s = np.array([1.0 if v == "b" else -1.0 for v in y])
    n_b = (s > 0).sum()
    n_a = len(s) - n_b
    w = np.where(s > 0, len(s) / (2 * n_b), len(s) / (2 * n_a)) if balanced else np.ones(len(s))

    def loss(theta):
        d, c = theta
        return (w * np.logaddexp(0.0, -s * (d * z + c))).sum() / w.sum() + l2 / 4 * d * d

    d, c = minimize(loss, np.zeros(2), method="BFGS", options={"gtol": 1e-10}).x

    def proba(q):
        q = np.asarray(q, float)
        return 1.0 / (1.0 + np.exp(-(d * (q - x.mean()) / x.std() + c)))

    return proba


GRID = np.linspace(-0.5, 2.5, 61)


@pytest.fixture(scope="module")
def blobs():
    return _blobs()


@pytest.fixture(scope="module")
def fitted(blobs):
    x, y = blobs
    return DifficultyProbe().fit(x, y)


@pytest.fixture(scope="module")
def fitted_mlp(blobs):
    x, y = blobs
    return DifficultyProbe("mlp", hidden=16, epochs=150, seed=3).fit(x, y)


def test_separable_data_is_classified_right(blobs, fitted, fitted_mlp):
    x, y = blobs
    assert fitted.classes == ["easy", "hard", "normal"]
    assert fitted.predict(x) == y
    assert fitted_mlp.predict(x) == y
    x2, y2 = _blobs(seed=1)  # fresh points from the same blobs
    assert fitted.predict(x2) == y2
    assert fitted.predict(np.array([[-3.0, 0.0], [3.0, 0.0], [0.0, 3.0]])) == [
        "easy", "hard", "normal"]


def test_classes_are_sorted_strings():
    x = np.array([[0.0], [0.1], [1.0], [1.1]])
    probe = DifficultyProbe().fit(x, [2, 2, 1, 1])
    assert probe.classes == ["1", "2"]
    assert probe.predict(np.array([[0.05], [1.05]])) == ["2", "1"]


@pytest.mark.parametrize("balanced", [False, True])
def test_logistic_fit_matches_a_naive_weighted_logistic_regression(balanced):
    x, y = _imbalanced()
    probe = DifficultyProbe(l2=0.1, balanced=balanced).fit(x, y)
    ref = _reference_binary(x, y, l2=0.1, balanced=balanced)
    got = probe.score(GRID[:, None], "b")
    np.testing.assert_allclose(got, ref(GRID), atol=2e-4)


def test_balanced_weights_move_the_boundary_into_the_common_class():
    x, y = _imbalanced()
    plain = DifficultyProbe(balanced=False).fit(x, y).score(GRID[:, None], "b")
    even = DifficultyProbe(balanced=True).fit(x, y).score(GRID[:, None], "b")
    # the rare class gets more probability everywhere ...
    assert (even > plain).all()
    # ... so the point where it becomes the prediction moves down, into the "a" points
    cut_plain = GRID[np.argmax(plain >= 0.5)]
    cut_even = GRID[np.argmax(even >= 0.5)]
    assert cut_even < cut_plain
    # and more of the rare class's own training points are recognised
    probe_plain = DifficultyProbe(balanced=False).fit(x, y)
    probe_even = DifficultyProbe(balanced=True).fit(x, y)
    rare = x[30:]
    assert probe_even.predict(rare).count("b") > probe_plain.predict(rare).count("b")


def test_predict_proba_rows_sum_to_one(fitted, fitted_mlp):
    q = np.random.default_rng(5).normal(0, 5, size=(50, 2))
    for probe in (fitted, fitted_mlp):
        p = probe.predict_proba(q)
        assert p.shape == (50, 3)
        np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-6)
        assert (p >= 0).all()
        assert probe.predict(q) == [probe.classes[i] for i in p.argmax(1)]


@settings(max_examples=30, deadline=None)
@given(arrays(np.float64, (4, 2), elements=st.floats(-1e4, 1e4)))
def test_probabilities_are_a_distribution_for_any_finite_row(fitted, rows):
    p = fitted.predict_proba(rows)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-6)


def test_a_single_row_is_accepted(fitted, blobs):
    x, _ = blobs
    np.testing.assert_array_equal(fitted.predict_proba(x[3]), fitted.predict_proba(x[3:4]))


def test_score_is_one_column(fitted, blobs):
    x, _ = blobs
    np.testing.assert_array_equal(fitted.score(x, "hard"), fitted.predict_proba(x)[:, 1])
    with pytest.raises(TokenwiseError, match="label 'medium' is not one of"):
        fitted.score(x, "medium")


@pytest.mark.parametrize("which", ["fitted", "fitted_mlp"])
def test_save_load_round_trip_gives_identical_probabilities(request, tmp_path, blobs, which):
    probe = request.getfixturevalue(which)
    probe.meta = {"feature_model": "tw-small", "layer": -1}
    path = probe.save(tmp_path / "sub" / "probe.safetensors")
    back = DifficultyProbe.load(path)
    assert back.kind == probe.kind and back.classes == probe.classes
    assert back.meta == {"feature_model": "tw-small", "layer": -1}
    assert (back.l2, back.hidden, back.epochs, back.balanced, back.seed) == (
        probe.l2, probe.hidden, probe.epochs, probe.balanced, probe.seed)
    q = np.concatenate([blobs[0], np.random.default_rng(2).normal(0, 4, size=(20, 2))])
    np.testing.assert_array_equal(back.predict_proba(q), probe.predict_proba(q))


def test_load_errors(tmp_path):
    with pytest.raises(TokenwiseError, match="does not exist"):
        DifficultyProbe.load(tmp_path / "nope.safetensors")
    import torch
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(TokenwiseError, match="not a tokenwise probe"):
        DifficultyProbe.load(other)


def test_wrong_feature_width_is_an_error(fitted):
    with pytest.raises(TokenwiseError, match="fitted on 2 features, got 3"):
        fitted.predict_proba(np.zeros((4, 3)))
    with pytest.raises(TokenwiseError, match="fitted on 2 features, got 1"):
        fitted.predict(np.zeros((1, 1)))


def test_one_class_is_an_error():
    with pytest.raises(TokenwiseError, match=r"at least two distinct labels.*\['easy'\]"):
        DifficultyProbe().fit(np.array([[0.0], [1.0]]), ["easy", "easy"])


def test_unfitted_probe_errors(tmp_path):
    probe = DifficultyProbe()
    assert not probe.fitted and "unfitted" in repr(probe)
    with pytest.raises(TokenwiseError, match="not fitted"):
        probe.predict_proba(np.zeros((1, 2)))
    with pytest.raises(TokenwiseError, match="not fitted"):
        probe.predict(np.zeros((1, 2)))
    with pytest.raises(TokenwiseError, match="unfitted"):
        probe.save(tmp_path / "p.safetensors")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_features_are_an_error(fitted, bad):
    x = np.array([[0.0, 1.0], [1.0, bad], [2.0, 0.0]])
    with pytest.raises(TokenwiseError, match="NaN or infinity"):
        DifficultyProbe().fit(x, ["a", "b", "a"])
    with pytest.raises(TokenwiseError, match="NaN or infinity"):
        fitted.predict_proba(x)


@pytest.mark.parametrize("shape", [(0, 2), (3, 0), (3,), (2, 2, 2)])
def test_feature_shape_errors(shape):
    with pytest.raises(TokenwiseError, match="non-empty \\(N, D\\) array"):
        DifficultyProbe().fit(np.zeros(shape), ["a", "b", "a"][: shape[0] if shape else 0])


def test_label_count_must_match_rows():
    with pytest.raises(TokenwiseError, match="3 feature rows but 2 labels"):
        DifficultyProbe().fit(np.zeros((3, 1)), ["a", "b"])


def test_logistic_fit_is_deterministic(blobs):
    x, y = blobs
    a = DifficultyProbe().fit(x, y).predict_proba(x)
    b = DifficultyProbe(seed=123).fit(x, y).predict_proba(x)  # the seed plays no part
    c = DifficultyProbe().fit(x, y).predict_proba(x)
    np.testing.assert_array_equal(a, c)
    np.testing.assert_allclose(a, b, atol=1e-4)  # a convex fit: the same optimum


def test_mlp_fit_is_deterministic_given_its_seed(blobs):
    x, y = blobs
    a = DifficultyProbe("mlp", hidden=8, epochs=40, seed=1).fit(x, y).predict_proba(x)
    b = DifficultyProbe("mlp", hidden=8, epochs=40, seed=1).fit(x, y).predict_proba(x)
    np.testing.assert_array_equal(a, b)


def test_features_are_standardised_so_scale_does_not_matter():
    x, y = _imbalanced()
    a = DifficultyProbe().fit(x, y).predict_proba(GRID[:, None])
    b = DifficultyProbe().fit(x * 1000 + 7, y).predict_proba(GRID[:, None] * 1000 + 7)
    np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"kind": "forest"}, "'forest'"),
    ({"hidden": 0}, "hidden must be an integer >= 1, got 0"),
    ({"epochs": True}, "epochs must be an integer >= 1, got True"),
    ({"l2": -1.0}, "l2 must be a number >= 0, got -1.0"),
    ({"l2": float("nan")}, "got nan"),
])
def test_constructor_errors(kwargs, needle):
    with pytest.raises(TokenwiseError) as err:
        DifficultyProbe(**kwargs)
    assert needle in str(err.value)


def test_fitting_and_loading_leave_the_global_rng_alone(tmp_path):
    import torch

    x, y = _imbalanced()
    torch.manual_seed(123)
    want = torch.rand(3)
    torch.manual_seed(123)
    probe = DifficultyProbe().fit(x, y)
    DifficultyProbe.load(probe.save(tmp_path / "p.safetensors"))
    assert torch.equal(torch.rand(3), want)
