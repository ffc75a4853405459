"""Tests for tokenwise.routing.labels: DiffAdapt's easy / normal / hard labels."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenwise.errors import TokenwiseError
from tokenwise.routing.labels import LABELS, difficulty_labels


def test_labels_order():
    assert LABELS == ("easy", "normal", "hard")


def test_hand_computed_cases_at_the_default_thresholds():
    # k = 10 samples: 2/10 is exactly the hard threshold, 8/10 exactly the easy one
    acc = [0.0, 0.1, 2 / 10, 0.3, 0.5, 0.7, 8 / 10, 0.9, 1.0]
    assert difficulty_labels(acc) == ["hard", "hard", "hard", "normal", "normal", "normal",
                                      "easy", "easy", "easy"]


def test_equality_at_custom_thresholds():
    # at or below hard_at -> hard; at or above easy_at -> easy
    assert difficulty_labels([0.25, 0.2501, 0.7499, 0.75], easy_at=0.75, hard_at=0.25) == [
        "hard", "normal", "normal", "easy"]
    assert difficulty_labels([1 / 3, 2 / 3], easy_at=2 / 3, hard_at=1 / 3) == ["hard", "easy"]
    # easy_at = 1: only "all right" is easy
    assert difficulty_labels([0.05, 0.5, 0.99, 1.0], easy_at=1.0, hard_at=0.05) == [
        "hard", "normal", "normal", "easy"]


def test_easy_max_entropy_demotes_scattered_easy_questions():
    acc = [1.0, 0.9, 0.9, 0.9, 0.5, 0.0]
    ent = [0.0, 0.5, 0.5000001, 2.0, 0.0, 3.0]
    assert difficulty_labels(acc, ent, easy_max_entropy=0.5) == [
        "easy", "easy", "normal", "normal", "normal", "hard"]
    # without the cap the entropies change nothing
    assert difficulty_labels(acc, ent) == ["easy", "easy", "easy", "easy", "normal", "hard"]
    # a zero cap keeps only unanimous answers easy
    assert difficulty_labels([1.0, 0.8], [0.0, 0.5004], easy_max_entropy=0.0) == [
        "easy", "normal"]


def test_docstring_example():
    assert difficulty_labels([1.0, 0.5, 0.0, 0.9], [0.0, 0.7, 1.6, 0.9],
                             easy_max_entropy=0.5) == ["easy", "normal", "hard", "normal"]


def test_empty_input_gives_no_labels():
    assert difficulty_labels([]) == []


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"accuracy": [0.5], "easy_at": 0.2, "hard_at": 0.8}, "hard_at=0.8, easy_at=0.2"),
    ({"accuracy": [0.5], "easy_at": 0.5, "hard_at": 0.5}, "hard_at=0.5, easy_at=0.5"),
    ({"accuracy": [0.5], "easy_at": 1.5}, "easy_at=1.5"),
    ({"accuracy": [0.5], "hard_at": -0.1}, "hard_at=-0.1"),
    ({"accuracy": [0.5, 1.2]}, "got 1.2"),
    ({"accuracy": [-0.1]}, "got -0.1"),
    ({"accuracy": [float("nan")]}, "got nan"),
    ({"accuracy": [0.5], "easy_max_entropy": 0.3}, "needs answer_entropy"),
    ({"accuracy": [0.5], "answer_entropy": [0.1], "easy_max_entropy": -1.0}, "got -1.0"),
    ({"accuracy": [0.5], "answer_entropy": [0.1], "easy_max_entropy": float("nan")}, "got nan"),
    ({"accuracy": [0.5, 0.6], "answer_entropy": [0.1]}, "2 accuracies but 1 answer entropies"),
    ({"accuracy": [0.5], "answer_entropy": [-0.1]}, "finite and >= 0"),
    ({"accuracy": [0.5], "answer_entropy": [float("inf")]}, "finite and >= 0"),
    ({"accuracy": [0.5], "answer_entropy": [float("nan")]}, "finite and >= 0"),
])
def test_errors(kwargs, needle):
    with pytest.raises(TokenwiseError) as err:
        difficulty_labels(**kwargs)
    assert needle in str(err.value)


def _naive(a, h, easy_at, hard_at, cap):
    if a <= hard_at:
        return "hard"
    if a >= easy_at and (cap is None or h <= cap):
        return "easy"
    return "normal"


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10), st.floats(0, 3)), max_size=20),
       st.integers(0, 4), st.integers(6, 10), st.one_of(st.none(), st.floats(0, 2)))
def test_labels_match_a_naive_rule_for_k_equal_10(rows, hard_k, easy_k, cap):
    acc = [r / 10 for r, _ in rows]
    ent = [h for _, h in rows]
    got = difficulty_labels(acc, ent, easy_at=easy_k / 10, hard_at=hard_k / 10,
                            easy_max_entropy=cap)
    assert got == [_naive(r / 10, h, easy_k / 10, hard_k / 10, cap) for r, h in rows]
    # raising the accuracy never makes a question harder (entropy fixed)
    rank = {"hard": 0, "normal": 1, "easy": 2}
    for (r, h), label in zip(rows, got, strict=True):
        if r < 10:
            up = difficulty_labels([(r + 1) / 10], [h], easy_at=easy_k / 10,
                                   hard_at=hard_k / 10, easy_max_entropy=cap)[0]
            assert rank[up] >= rank[label]
