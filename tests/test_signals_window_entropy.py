"""`signals.window_entropy` and `signals.high_window_entropy` (ARES's HWE tokens) against
naive loops: windows, fixed and percentile thresholds, the causal running percentile, masks,
batches, edge lengths and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenwise.errors import TokenwiseError
from tokenwise.signals import high_window_entropy, rolling_mean, window_entropy

SETTINGS = settings(max_examples=60, deadline=None, database=None)


# ------------------------------------------------------------------------ naive references


def naive_windows(h: list[float], w: int, direction: str, valid: list[bool]) -> list[float]:
    """Mean of the valid values in each position's window (0 where there are none)."""
    out = []
    for t in range(len(h)):
        span = range(t, min(len(h), t + w)) if direction == "leading" \
            else range(max(0, t - w + 1), t + 1)
        picked = [h[s] for s in span if valid[s]]
        out.append(sum(picked) / len(picked) if picked else 0.0)
    return out


def naive_flags(h: list[float], w: int, direction: str, valid: list[bool], *,
                threshold: float | None = None, percentile: float | None = None,
                running: bool = False) -> list[bool | None]:
    """HWE flags by a loop; None where the value is within rounding of its threshold."""
    means = naive_windows(h, w, direction, valid)
    flags: list[bool | None] = []
    for t, value in enumerate(means):
        if not valid[t]:
            flags.append(False)
            continue
        if threshold is not None:
            limit = threshold
        else:
            pool = [means[s] for s in range(len(h)) if valid[s] and (not running or s < t)]
            if not pool:  # running: no history yet
                flags.append(False)
                continue
            limit = float(np.percentile(pool, percentile))
        flags.append(None if math.isclose(value, limit, rel_tol=1e-9, abs_tol=1e-12)
                     else value > limit)
    return flags


def agree(got: torch.Tensor, want: list[bool | None]) -> None:
    assert got.dtype == torch.bool
    for t, (g, w) in enumerate(zip(got.tolist(), want, strict=True)):
        if w is not None:
            assert g == w, (t, got.tolist(), want)


entropy_lists = st.lists(st.floats(0, 8, allow_nan=False, width=32), max_size=40)
# integer-valued entropies make ties (equal windows, windows equal to a percentile) common
tied_lists = st.lists(st.integers(0, 3).map(float), max_size=40)
directions = st.sampled_from(["leading", "trailing"])
percentiles = st.one_of(st.sampled_from([50.0, 80.0, 95.0]),
                        st.floats(0.5, 99.5, allow_nan=False))


# --------------------------------------------------------------------------- window_entropy


@SETTINGS
@given(st.one_of(entropy_lists, tied_lists), st.integers(1, 8), directions, st.data())
def test_window_entropy_is_the_windowed_mean(h, w, direction, data) -> None:
    valid = data.draw(st.lists(st.booleans(), min_size=len(h), max_size=len(h)))
    x = torch.tensor(h, dtype=torch.float64)
    got = window_entropy(x, w, direction, mask=torch.tensor(valid, dtype=torch.bool))
    np.testing.assert_allclose(got.numpy(), naive_windows(h, w, direction, valid),
                               rtol=1e-12, atol=1e-12)


def test_window_entropy_looks_forward_by_default_and_is_rolling_mean() -> None:
    h = torch.tensor([1.0, 3.0, 5.0, 7.0, 9.0])
    assert window_entropy(h, 2).tolist() == [2.0, 4.0, 6.0, 8.0, 9.0]  # t and t + 1
    assert torch.equal(window_entropy(h, 3), rolling_mean(h, 3, direction="leading"))
    assert torch.equal(window_entropy(h, 3, "trailing"), rolling_mean(h, 3))
    batch = torch.stack([h, h.flip(0)], dim=1)  # (T, 2): tokens along dim 0
    assert torch.equal(window_entropy(batch, 2, dim=0)[:, 0], window_entropy(h, 2))


def test_ares_following_window_is_ours_one_position_later() -> None:
    """ARES's code averages entropies[i + 1 : i + 1 + w] for full windows only."""
    rng = np.random.default_rng(0)
    h = rng.uniform(0, 3, 30)
    w = 4
    ares = [float(np.mean(h[i + 1:i + 1 + w])) for i in range(len(h)) if len(h) - i - 1 >= w]
    ours = window_entropy(torch.tensor(h), w)[1:len(ares) + 1]
    np.testing.assert_allclose(ours.numpy(), ares, rtol=1e-12)


def test_window_entropy_keeps_float_dtypes_and_shapes() -> None:
    assert window_entropy(torch.ones(3, dtype=torch.float16), 2).dtype == torch.float16
    assert window_entropy(torch.tensor([1, 2, 3]), 2).tolist() == [1.5, 2.5, 3.0]
    assert window_entropy(torch.zeros(0), 3).shape == (0,)
    assert window_entropy(torch.zeros(2, 0), 3).shape == (2, 0)


# --------------------------------------------------------------------- high_window_entropy


@SETTINGS
@given(st.one_of(entropy_lists, tied_lists), st.integers(1, 8), directions,
       st.floats(0, 8, allow_nan=False), st.data())
def test_fixed_threshold_matches_the_loop(h, w, direction, threshold, data) -> None:
    valid = data.draw(st.lists(st.booleans(), min_size=len(h), max_size=len(h)))
    got = high_window_entropy(torch.tensor(h), w, threshold=threshold, direction=direction,
                              mask=torch.tensor(valid, dtype=torch.bool))
    agree(got, naive_flags(h, w, direction, valid, threshold=threshold))


@SETTINGS
@given(st.one_of(entropy_lists, tied_lists), st.integers(1, 8), directions, percentiles,
       st.booleans(), st.data())
def test_percentile_matches_the_loop(h, w, direction, q, running, data) -> None:
    valid = data.draw(st.lists(st.booleans(), min_size=len(h), max_size=len(h)))
    got = high_window_entropy(torch.tensor(h), w, percentile=q, running=running,
                              direction=direction, mask=torch.tensor(valid, dtype=torch.bool))
    agree(got, naive_flags(h, w, direction, valid, percentile=q, running=running))


def test_percentile_80_marks_the_top_fifth() -> None:
    h = torch.randperm(100, generator=torch.Generator().manual_seed(0)).double()
    flags = high_window_entropy(h, 1, percentile=80)
    assert int(flags.sum()) == 20 and bool((h[flags] >= 80).all())


def test_strictly_above_so_constant_and_single_values_mark_nothing() -> None:
    assert not high_window_entropy(torch.full((9,), 1.5), 3, percentile=80).any()
    assert not high_window_entropy(torch.full((9,), 1.5), 3, percentile=10, running=True).any()
    assert not high_window_entropy(torch.full((9,), 1.5), 3, threshold=1.5).any()
    one = torch.tensor([2.0])
    assert high_window_entropy(one, 4, threshold=1.0).tolist() == [True]
    assert high_window_entropy(one, 4, percentile=50).tolist() == [False]
    assert high_window_entropy(one, 4, percentile=50, running=True).tolist() == [False]


@pytest.mark.parametrize("kwargs", [{"threshold": 1.0}, {"percentile": 80.0},
                                    {"percentile": 80.0, "running": True}])
@pytest.mark.parametrize("shape", [(0,), (3, 0), (0, 5)])
def test_empty_inputs_give_empty_flags(kwargs, shape) -> None:
    flags = high_window_entropy(torch.zeros(shape), 3, **kwargs)
    assert flags.shape == shape and flags.dtype == torch.bool


def test_running_never_marks_a_position_without_history() -> None:
    h = torch.tensor([[9.0, 1.0, 2.0, 3.0], [0.0, 0.0, 5.0, 9.0]])
    mask = torch.tensor([[True, True, True, True], [False, False, True, True]])
    flags = high_window_entropy(h, 1, percentile=50, running=True, mask=mask)
    # row 0: 9 has no history; 1 < 9; 2 > median(9, 1) = 5? no; 3 > median(9, 1, 2) = 2: yes
    # row 1: padding never marked; 5 is the first valid (no history); 9 > 5
    assert flags.tolist() == [[False, False, False, True], [False, False, False, True]]


@SETTINGS
@given(st.lists(st.floats(0, 8, allow_nan=False, width=32), min_size=1, max_size=30),
       st.integers(1, 6), directions, percentiles, st.data())
def test_running_flags_never_depend_on_later_values(h, w, direction, q, data) -> None:
    """A flag at t is fixed by entropies[: t + 1] (trailing) or [: t + w] (leading)."""
    t = data.draw(st.integers(0, len(h) - 1))
    horizon = t + 1 if direction == "trailing" else t + w
    changed = list(h)
    for s in range(horizon, len(h)):
        changed[s] = data.draw(st.floats(0, 8, allow_nan=False, width=32))
    before = high_window_entropy(torch.tensor(h), w, percentile=q, running=True,
                                 direction=direction)
    after = high_window_entropy(torch.tensor(changed), w, percentile=q, running=True,
                                direction=direction)
    assert before[: t + 1].tolist() == after[: t + 1].tolist()
    # and a streaming decoder's prefix agrees too: the same flags from the prefix alone
    prefix = high_window_entropy(torch.tensor(h[:horizon]), w, percentile=q, running=True,
                                 direction=direction)
    assert before[: t + 1].tolist() == prefix[: t + 1].tolist()


@pytest.mark.parametrize("kwargs", [{"threshold": 1.2}, {"percentile": 70.0},
                                    {"percentile": 70.0, "running": True}])
def test_a_batch_is_row_by_row_and_masked_values_are_ignored(kwargs) -> None:
    gen = torch.Generator().manual_seed(1)
    h = torch.rand(4, 3, 25, generator=gen) * 3  # (..., T): leading dims are a batch
    mask = torch.rand(4, 3, 25, generator=gen) > 0.3
    mask[0, 0] = False  # a row of padding only
    poisoned = h.masked_fill(~mask, float("nan"))  # padding may hold anything
    poisoned[1, 1, ~mask[1, 1]] = float("inf")
    flags = high_window_entropy(poisoned, 3, mask=mask, **kwargs)
    assert not flags[~mask].any() and not flags[0, 0].any()
    for i in range(4):
        for j in range(3):
            alone = high_window_entropy(poisoned[i, j], 3, mask=mask[i, j], **kwargs)
            assert flags[i, j].tolist() == alone.tolist()  # each row on its own
            agree(flags[i, j], naive_flags(h[i, j].double().tolist(), 3, "leading",
                                           mask[i, j].tolist(), **kwargs))


def test_float32_input_and_gradients_leave_flags_alone() -> None:
    h = torch.tensor([0.1, 2.0, 2.5, 0.3], requires_grad=True)
    flags = high_window_entropy(h, 2, threshold=1.0)
    assert flags.tolist() == [True, True, True, False] and not flags.requires_grad


# ---------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("kwargs", "fragments"), [
    ({}, ["exactly one of threshold", "percentile"]),
    ({"threshold": 1.0, "percentile": 80}, ["exactly one of", "threshold=1.0", "percentile=80"]),
    ({"percentile": 0}, ["percentile must be in the open interval (0, 100)", "got 0"]),
    ({"percentile": 100}, ["(0, 100)", "got 100"]),
    ({"percentile": -5.0}, ["(0, 100)", "-5.0"]),
    ({"percentile": float("nan")}, ["(0, 100)", "nan"]),
    ({"percentile": True}, ["percentile must be", "True"]),
    ({"percentile": "80"}, ["percentile must be", "'80'"]),
    ({"threshold": float("inf")}, ["threshold must be a finite number", "inf"]),
    ({"threshold": None, "percentile": None}, ["exactly one of"]),
    ({"threshold": 1.0, "running": True}, ["running=True", "percentile=P", "threshold=1.0"]),
    ({"percentile": 80, "running": 1}, ["running must be True or False", "1"]),
    ({"percentile": 80, "direction": "forward"}, ["direction", "'forward'", "'leading'"]),
    ({"percentile": 80, "mask": torch.ones(3, dtype=torch.bool)}, ["mask", "(4,)", "(3,)"]),
    ({"percentile": 80, "mask": torch.ones(4)}, ["mask must be a bool tensor", "float32"]),
])
def test_bad_arguments_are_named(kwargs, fragments) -> None:
    with pytest.raises(TokenwiseError) as info:
        high_window_entropy(torch.ones(4), 2, **kwargs)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


def test_bad_tensors_and_windows_are_named() -> None:
    with pytest.raises(TokenwiseError, match=r"window must be an integer >= 1, got 0"):
        high_window_entropy(torch.ones(4), 0, percentile=80)
    with pytest.raises(TokenwiseError, match=r"window must be an integer >= 1, got 2.0"):
        window_entropy(torch.ones(4), 2.0)
    with pytest.raises(TokenwiseError, match=r"entropies\[2\] is nan.*finite at valid"):
        high_window_entropy(torch.tensor([0.0, 1.0, math.nan]), 2, threshold=1.0)
    with pytest.raises(TokenwiseError, match=r"entropies\[1, 0\] is inf"):
        high_window_entropy(torch.tensor([[0.0], [math.inf]]), 2, percentile=50)
    with pytest.raises(TokenwiseError, match="0-d tensor"):
        high_window_entropy(torch.tensor(1.0), 2, percentile=50)
    with pytest.raises(TokenwiseError, match=r"entropies must be a torch\.Tensor, got list"):
        high_window_entropy([1.0, 2.0], 2, percentile=50)
