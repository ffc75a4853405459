"""Keep rules: LLMLingua-2's per-chunk percentile, the global token budget, thresholds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenwise.compression import selection
from tokenwise.errors import TokenwiseError

SETTINGS = settings(max_examples=120, deadline=None)


def naive_chunk_keep(scores, weights, groups, rate):
    """llmlingua's loop, written plainly: per chunk, repeat each score by its tokens."""
    reduce_rate = max(0, 1 - rate)
    keep = []
    for g in sorted(set(groups.tolist())):
        idx = [i for i in range(len(scores)) if groups[i] == g]
        repeated = []
        for i in idx:
            repeated.extend([scores[i]] * int(weights[i]))
        threshold = np.percentile(repeated, int(100 * reduce_rate + 1))
        for i in idx:
            p = scores[i]
            keep.append(bool(p > threshold or (threshold == 1.0 and p == threshold)))
    return keep


@SETTINGS
@given(st.data(), st.sampled_from([0.1, 0.2, 0.3, 0.33, 0.5, 0.7, 0.9, 0.99]))
def test_chunk_percentile_matches_the_reference_loop(data, rate):
    n = data.draw(st.integers(1, 60))
    scores = np.array(data.draw(st.lists(
        st.sampled_from([0.05, 0.2, 0.35, 0.5, 0.61, 0.8, 0.97, 1.0]), min_size=n, max_size=n)),
        dtype=np.float32)
    weights = np.array(data.draw(st.lists(st.integers(1, 4), min_size=n, max_size=n)))
    cuts = sorted(data.draw(st.lists(st.integers(1, max(n - 1, 1)), max_size=4)))
    groups = np.zeros(n, dtype=np.int64)
    for c in cuts:
        groups[c:] += 1
    got = selection.chunk_percentile_keep(scores, weights, groups, rate)
    assert got.tolist() == naive_chunk_keep(scores, weights, groups, rate)


def test_reference_percentile_keeps_float_quirks():
    for rate in (0.1, 0.2, 0.3, 0.33, 0.5, 0.7, 0.9):
        assert selection.reference_percentile(rate) == int(100 * max(0, 1 - rate) + 1)
    assert selection.reference_percentile(0.7) == 31  # 1 - 0.7 = 0.30000000000000004


def test_threshold_keep():
    scores = np.array([0.2, 0.5, 0.49, 0.9])
    forced = np.array([True, False, False, False])
    assert selection.threshold_keep(scores, forced, 0.5).tolist() == [True, True, False, True]


def _joined_count(weights):
    # A count with join effects: each kept run after a gap costs one token more.
    def count(keep):
        gaps = np.count_nonzero(np.diff(np.concatenate([[0], keep.astype(int)])) == 1)
        return int(weights[keep].sum()) + gaps
    return count


@SETTINGS
@given(st.data())
def test_budget_is_met_and_close(data):
    n = data.draw(st.integers(1, 80))
    scores = np.array(data.draw(st.lists(st.floats(0, 1), min_size=n, max_size=n)))
    weights = np.array(data.draw(st.lists(st.integers(1, 3), min_size=n, max_size=n)))
    forced = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n))) & (
        np.arange(n) % 5 == 0)
    count = _joined_count(weights)
    floor, full = count(forced), count(np.ones(n, dtype=bool))
    target = data.draw(st.integers(max(floor, 1), full + 3))
    keep = selection.budget_keep(scores, forced, weights, target, count)
    assert keep[forced].all()
    assert count(keep) <= target
    if count(keep) < 0.99 * target:
        # Not within 1%: then no single dropped word fits any more.
        for i in np.flatnonzero(~keep):
            trial = keep.copy()
            trial[i] = True
            assert count(trial) > target


def test_budget_takes_words_in_score_order():
    scores = np.array([0.9, 0.1, 0.5, 0.7, 0.3])
    keep = selection.budget_keep(scores, np.zeros(5, bool), np.ones(5, int), 3,
                                 lambda m: int(m.sum()))
    assert keep.tolist() == [True, False, True, True, False]
    everything = selection.budget_keep(scores, np.zeros(5, bool), np.ones(5, int), 9,
                                       lambda m: int(m.sum()))
    assert everything.all()


def test_budget_below_the_forced_words_is_an_error():
    with pytest.raises(TokenwiseError, match=r"forced words .* alone take 2 tokens"):
        selection.budget_keep(np.zeros(4), np.array([1, 1, 0, 0], bool), np.ones(4, int), 1,
                              lambda m: int(m.sum()))
