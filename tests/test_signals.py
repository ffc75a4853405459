"""Tests for tokenwise.signals: closed forms, a float64 reference, masking, dtypes, errors."""

from __future__ import annotations

import dataclasses
import doctest
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tokenwise.signals as signals
from tokenwise.errors import TokenwiseError
from tokenwise.signals import (
    TokenStats,
    entropy,
    log_probs,
    rolling_mean,
    surprisal,
    token_stats,
    varentropy,
)

INF = math.inf
SETTINGS = settings(max_examples=60, deadline=None, database=None)


# --------------------------------------------------------------------------------------------
# naive float64 references (plain Python, one row at a time)
# --------------------------------------------------------------------------------------------


def ref_row(row: list[float]) -> tuple[list[float], float, float]:
    """(log p, entropy, varentropy) of one row of logits, in nats, by the textbook formulas."""
    finite = [x for x in row if x != -INF]
    if not finite:
        return [-INF] * len(row), 0.0, 0.0
    top = max(finite)
    lse = top + math.log(math.fsum(math.exp(x - top) for x in finite))
    lp = [x - lse if x != -INF else -INF for x in row]
    h = -math.fsum(math.exp(v) * v for v in lp if v != -INF)
    var = math.fsum(math.exp(v) * (v + h) ** 2 for v in lp if v != -INF)
    return lp, h, var


def ref_rolling(
    x: list[float], window: int, direction: str, mask: list[bool] | None = None
) -> list[float]:
    out = []
    for t in range(len(x)):
        if direction == "trailing":
            idx = range(max(0, t - window + 1), t + 1)
        else:
            idx = range(t, min(len(x), t + window))
        vals = [x[i] for i in idx if mask is None or mask[i]]
        out.append(math.fsum(vals) / len(vals) if vals else 0.0)
    return out


@st.composite
def logit_rows(draw, max_rows: int = 5, max_vocab: int = 12) -> torch.Tensor:
    """(N, V) float64 logits whose rows are dense, partly masked (-inf) or fully masked."""
    n = draw(st.integers(1, max_rows))
    v = draw(st.integers(1, max_vocab))
    value = st.floats(-30, 30, allow_nan=False, width=32)
    rows = []
    for _ in range(n):
        kind = draw(st.sampled_from(["dense", "masked", "masked", "full"]))
        if kind == "full":
            rows.append([-INF] * v)
        elif kind == "dense":
            rows.append(draw(st.lists(value, min_size=v, max_size=v)))
        else:
            rows.append(draw(st.lists(value | st.just(-INF), min_size=v, max_size=v)))
    return torch.tensor(rows, dtype=torch.float64)


def assert_matches_reference(logits: torch.Tensor, tol: float) -> None:
    lp = log_probs(logits)
    h = entropy(logits)
    var = varentropy(logits)
    for i, row in enumerate(logits.double().tolist()):
        ref_lp, ref_h, ref_var = ref_row(row)
        expected = torch.tensor(ref_lp, dtype=torch.float64)
        got = lp[i].double()
        assert torch.equal(torch.isneginf(got), torch.isneginf(expected))
        finite = torch.isfinite(expected)
        torch.testing.assert_close(got[finite], expected[finite], rtol=tol, atol=tol)
        assert h[i].item() == pytest.approx(ref_h, rel=tol, abs=tol)
        assert var[i].item() == pytest.approx(ref_var, rel=10 * tol, abs=10 * tol)


# --------------------------------------------------------------------------------------------
# closed forms
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3, 7, 1000])
def test_uniform_entropy_is_log_k_and_varentropy_zero(k):
    logits = torch.full((k,), 3.5)
    assert entropy(logits).item() == pytest.approx(math.log(k), abs=1e-5)
    assert entropy(logits, base=2).item() == pytest.approx(math.log2(k), abs=1e-5)
    assert varentropy(logits).item() == pytest.approx(0.0, abs=1e-6)


def test_uniform_over_unmasked_support():
    logits = torch.tensor([1.0, -INF, 1.0, -INF, 1.0, 1.0])
    assert entropy(logits).item() == pytest.approx(math.log(4), abs=1e-6)
    assert varentropy(logits).item() == pytest.approx(0.0, abs=1e-6)
    expected = torch.tensor([-math.log(4), -INF, -math.log(4), -INF, -math.log(4), -math.log(4)])
    torch.testing.assert_close(log_probs(logits), expected)


def test_one_hot_has_zero_entropy():
    one_hot = torch.tensor([[-INF, 0.0, -INF], [7.0, -INF, -INF]])
    assert entropy(one_hot).tolist() == [0.0, 0.0]
    assert varentropy(one_hot).tolist() == [0.0, 0.0]
    # a very peaked (not masked) row: tiny but never negative
    peaked = entropy(torch.tensor([200.0, 0.0, 0.0]))
    assert 0.0 <= peaked.item() < 1e-6


@pytest.mark.parametrize("p", [0.5, 0.25, 0.1, 0.999])
def test_two_point_distribution(p):
    logits = torch.tensor([math.log(p), math.log(1 - p)], dtype=torch.float64)
    h = -p * math.log(p) - (1 - p) * math.log(1 - p)
    # surprisal is -ln p with probability p, -ln(1-p) otherwise: variance p(1-p)(ln((1-p)/p))^2
    var = p * (1 - p) * math.log((1 - p) / p) ** 2
    assert entropy(logits).item() == pytest.approx(h, rel=1e-12)
    assert varentropy(logits).item() == pytest.approx(var, rel=1e-9, abs=1e-15)
    # shifting all logits changes nothing
    assert entropy(logits + 123.0).item() == pytest.approx(h, rel=1e-9)


def test_two_point_with_masks_and_base():
    logits = torch.tensor([math.log(0.25), -INF, math.log(0.75), -INF])
    bits = -(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75))
    assert entropy(logits, base=2).item() == pytest.approx(bits, abs=1e-6)
    var_bits = 0.25 * 0.75 * math.log2(3) ** 2
    assert varentropy(logits, base=2).item() == pytest.approx(var_bits, abs=1e-6)


@pytest.mark.parametrize("base", [2, 10, 0.5, math.e, 3.7])
def test_base_divides_by_log_base(base):
    torch.manual_seed(0)
    logits = torch.randn(4, 9, dtype=torch.float64) * 3
    logits[0, 2] = -INF
    ln_b = math.log(base)
    torch.testing.assert_close(entropy(logits, base=base), entropy(logits) / ln_b)
    torch.testing.assert_close(varentropy(logits, base=base), varentropy(logits) / ln_b**2)
    ids = torch.tensor([0, 1, 2, 3])
    torch.testing.assert_close(surprisal(logits, ids, base=base), surprisal(logits, ids) / ln_b)


def test_bits_are_nats_over_ln2():
    torch.manual_seed(1)
    logits = torch.randn(3, 50)
    torch.testing.assert_close(entropy(logits, base=2), entropy(logits) / math.log(2))


# --------------------------------------------------------------------------------------------
# against the float64 reference, with masks and fully masked rows
# --------------------------------------------------------------------------------------------


@SETTINGS
@given(logit_rows())
def test_float64_matches_reference(logits):
    assert_matches_reference(logits, tol=1e-9)


@SETTINGS
@given(logit_rows())
def test_float32_matches_reference(logits):
    logits32 = logits.float()
    assert log_probs(logits32).dtype == torch.float32
    assert_matches_reference(logits32, tol=2e-5)


@SETTINGS
@given(logit_rows(), st.data())
def test_surprisal_matches_reference(logits, data):
    n, v = logits.shape
    ids = torch.tensor(data.draw(st.lists(st.integers(0, v - 1), min_size=n, max_size=n)))
    got = surprisal(logits, ids)
    for i, row in enumerate(logits.tolist()):
        expected = -ref_row(row)[0][ids[i]]
        if expected == INF:
            assert got[i].item() == INF
        else:
            assert got[i].item() == pytest.approx(expected, rel=1e-9, abs=1e-9)


@SETTINGS
@given(logit_rows())
def test_results_never_nan_and_entropy_bounded(logits):
    for x in (logits, logits.float()):
        h, var = entropy(x), varentropy(x)
        assert not torch.isnan(log_probs(x)).any()
        assert not (torch.isnan(h).any() or torch.isnan(var).any())
        support = torch.isfinite(x).sum(-1).clamp_min(1).double()
        assert (h >= 0).all() and (var >= 0).all()
        assert (h.double() <= support.log() + 1e-5).all()


def test_fully_masked_rows():
    logits = torch.tensor([[-INF, -INF, -INF], [0.0, 0.0, -INF]])
    assert torch.isneginf(log_probs(logits)[0]).all()
    assert entropy(logits).tolist() == pytest.approx([0.0, math.log(2)])
    assert varentropy(logits).tolist() == pytest.approx([0.0, 0.0])
    assert surprisal(logits, torch.tensor([1, 0])).tolist() == pytest.approx([INF, math.log(2)])


# --------------------------------------------------------------------------------------------
# half precision
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float16, 2e-2), (torch.bfloat16, 1e-1)])
def test_half_precision_computed_in_float32(dtype, tol):
    torch.manual_seed(2)
    logits32 = torch.randn(6, 40) * 4
    logits32[1, :5] = -INF
    logits32[3] = -INF
    # large logits that would overflow exp() in half precision
    logits32[4] = logits32[4] * 1000
    half = logits32.to(dtype)
    ids = torch.arange(6) + 10
    for fn in (entropy, varentropy, log_probs):
        out = fn(half)
        assert out.dtype == torch.float32
        assert not torch.isnan(out).any()
        # exactly the fp32 computation on the upcast values ...
        torch.testing.assert_close(out, fn(half.float()), rtol=1e-6, atol=1e-6)
    # ... and close to the full-precision input
    torch.testing.assert_close(entropy(half), entropy(logits32), rtol=tol, atol=tol)
    s = surprisal(half, ids)
    assert s.dtype == torch.float32 and not torch.isnan(s).any()
    assert s[3].item() == INF
    torch.testing.assert_close(s, surprisal(half.float(), ids))
    stats = token_stats(half, ids, top_k=3)
    torch.testing.assert_close(stats.entropies, entropy(half.float()))
    torch.testing.assert_close(stats.logprobs, -surprisal(half.float(), ids))


def test_integer_logits_become_float32():
    logits = torch.tensor([1, 1, 1, 1])
    assert log_probs(logits).dtype == torch.float32
    assert entropy(logits).item() == pytest.approx(math.log(4), abs=1e-6)


# --------------------------------------------------------------------------------------------
# surprisal
# --------------------------------------------------------------------------------------------


def test_surprisal_masked_chosen_token_is_inf():
    logits = torch.tensor([[0.0, -INF, 0.0], [1.0, 2.0, 3.0]])
    s = surprisal(logits, torch.tensor([1, 2]))
    assert s[0].item() == INF
    expected = -(3.0 - math.log(math.exp(1) + math.exp(2) + math.exp(3)))
    assert s[1].item() == pytest.approx(expected, abs=1e-6)
    assert surprisal(logits, torch.tensor([0, 0]), base=2)[0].item() == pytest.approx(1.0)


def test_surprisal_batched_shapes_and_unbatched():
    torch.manual_seed(3)
    logits = torch.randn(2, 5, 11)
    ids = torch.randint(0, 11, (2, 5))
    s = surprisal(logits, ids)
    assert s.shape == (2, 5)
    expected = -log_probs(logits).gather(-1, ids[..., None]).squeeze(-1)
    torch.testing.assert_close(s, expected)
    one = surprisal(logits[0, 0], torch.tensor(ids[0, 0].item()))
    assert one.shape == ()
    assert one.item() == pytest.approx(s[0, 0].item(), abs=1e-6)
    # plain Python ids are accepted too
    torch.testing.assert_close(surprisal(logits[0], ids[0].tolist()), s[0])


# --------------------------------------------------------------------------------------------
# dim argument and batching
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [0, 1, 2, -1, -3])
def test_dim_argument_equals_moving_the_axis(dim):
    torch.manual_seed(4)
    logits = torch.randn(3, 4, 5)
    logits[0, 0, 0] = -INF
    moved = logits.movedim(dim, -1)
    torch.testing.assert_close(entropy(logits, dim=dim), entropy(moved))
    torch.testing.assert_close(varentropy(logits, dim=dim), varentropy(moved))
    torch.testing.assert_close(log_probs(logits, dim=dim), log_probs(moved).movedim(-1, dim))
    assert torch.allclose(log_probs(logits, dim=dim).exp().sum(dim), torch.ones(()))


def test_fully_masked_row_along_other_dim():
    logits = torch.zeros(3, 2)
    logits[:, 1] = -INF  # column 1 is fully masked when dim=0
    assert entropy(logits, dim=0).tolist() == pytest.approx([math.log(3), 0.0])
    assert torch.isneginf(log_probs(logits, dim=0)[:, 1]).all()


# --------------------------------------------------------------------------------------------
# rolling_mean
# --------------------------------------------------------------------------------------------


@SETTINGS
@given(
    st.lists(st.floats(-100, 100, allow_nan=False), min_size=0, max_size=20),
    st.integers(1, 25),
    st.sampled_from(["trailing", "leading"]),
    st.data(),
)
def test_rolling_mean_matches_naive_loop(values, window, direction, data):
    x = torch.tensor(values, dtype=torch.float64)
    use_mask = data.draw(st.booleans())
    mask = None
    if use_mask:
        mask = data.draw(st.lists(st.booleans(), min_size=len(values), max_size=len(values)))
    mask_tensor = None if mask is None else torch.tensor(mask, dtype=torch.bool)
    got = rolling_mean(x, window, direction=direction, mask=mask_tensor)
    expected = torch.tensor(ref_rolling(values, window, direction, mask), dtype=torch.float64)
    assert got.shape == x.shape and got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("direction", ["trailing", "leading"])
def test_rolling_mean_along_dim_zero_with_mask(direction):
    torch.manual_seed(5)
    x = torch.randn(7, 3)
    mask = torch.rand(7, 3) > 0.3
    got = rolling_mean(x, 3, dim=0, direction=direction, mask=mask)
    assert got.shape == (7, 3) and got.dtype == torch.float32
    for col in range(3):
        expected = ref_rolling(x[:, col].tolist(), 3, direction, mask[:, col].tolist())
        torch.testing.assert_close(got[:, col], torch.tensor(expected), rtol=1e-6, atol=1e-6)


def test_rolling_mean_closed_examples():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    assert rolling_mean(x, 3).tolist() == pytest.approx([1.0, 1.5, 2.0, 3.0, 4.0])
    assert rolling_mean(x, 3, direction="leading").tolist() == pytest.approx(
        [2.0, 3.0, 4.0, 4.5, 5.0]
    )
    assert rolling_mean(x, 1).tolist() == x.tolist()
    # a window longer than the sequence: cumulative / suffix means
    assert rolling_mean(x, 99).tolist() == pytest.approx([1.0, 1.5, 2.0, 2.5, 3.0])
    assert rolling_mean(x, 99, direction="leading").tolist() == pytest.approx(
        [3.0, 3.5, 4.0, 4.5, 5.0]
    )


def test_rolling_mean_window_without_valid_entries_is_zero():
    x = torch.tensor([5.0, 7.0, 9.0, 11.0])
    mask = torch.tensor([True, False, False, True])
    assert rolling_mean(x, 2, mask=mask).tolist() == [5.0, 5.0, 0.0, 11.0]
    assert rolling_mean(x, 2, mask=torch.zeros(4, dtype=torch.bool)).tolist() == [0.0] * 4


def test_rolling_mean_dtypes():
    ints = torch.tensor([1, 2, 3, 4])
    out = rolling_mean(ints, 2)
    assert out.dtype == torch.float32 and out.tolist() == [1.0, 1.5, 2.5, 3.5]
    half = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float16)
    out = rolling_mean(half, 2)
    assert out.dtype == torch.float16 and out.tolist() == [1.0, 1.5, 2.5]
    empty = rolling_mean(torch.zeros(2, 0), 3)
    assert empty.shape == (2, 0)


def test_rolling_mean_long_sequence_precision():
    # float64 prefix sums: no drift over a long float32 sequence
    torch.manual_seed(6)
    x = torch.rand(200_000) * 10
    got = rolling_mean(x, 50)
    expected = x.double().unfold(0, 50, 1).mean(-1)
    torch.testing.assert_close(got[49:].double(), expected, rtol=1e-6, atol=1e-6)


def test_rolling_mean_infinities_stay_in_their_windows():
    x = torch.tensor([1.0, INF, 3.0, 5.0, 7.0])
    assert rolling_mean(x, 2).tolist() == [1.0, INF, INF, 4.0, 6.0]
    assert rolling_mean(x, 2, direction="leading").tolist() == [INF, INF, 4.0, 6.0, 7.0]
    # a masked-out infinity (or NaN) is ignored
    x[1] = math.nan
    mask = torch.tensor([True, False, True, True, True])
    assert rolling_mean(x, 2, mask=mask).tolist() == [1.0, 1.0, 3.0, 4.0, 6.0]


def test_rolling_mean_rejects_nan_and_mixed_infinities():
    with pytest.raises(TokenwiseError, match="NaN"):
        rolling_mean(torch.tensor([1.0, math.nan, 2.0]), 2)
    with pytest.raises(TokenwiseError, match=r"position 2.*\+inf and -inf"):
        rolling_mean(torch.tensor([1.0, INF, -INF, 2.0]), 2)
    # far enough apart, +inf and -inf are fine
    out = rolling_mean(torch.tensor([INF, 1.0, 1.0, -INF]), 2)
    assert out.tolist() == [INF, INF, 1.0, -INF]


# --------------------------------------------------------------------------------------------
# token_stats
# --------------------------------------------------------------------------------------------


def _stats_logits(n: int = 23, v: int = 17, seed: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, v, generator=gen) * 3
    ids = torch.randint(0, v, (n,), generator=gen)
    logits[2 % n, : v // 2] = -INF  # partly masked
    logits[5 % n] = -INF  # fully masked
    logits[9 % n, 3 % v] = -INF
    ids[9 % n] = 3 % v  # a masked chosen token
    return logits, ids


def test_token_stats_equals_separate_functions():
    logits, ids = _stats_logits()
    stats = token_stats(logits, ids, top_k=4, chunk_size=5)
    assert isinstance(stats, TokenStats)
    torch.testing.assert_close(stats.logprobs, -surprisal(logits, ids))
    torch.testing.assert_close(stats.entropies, entropy(logits))
    torch.testing.assert_close(stats.varentropies, varentropy(logits))
    top_values, top_indices = log_probs(logits).topk(4, dim=-1)
    torch.testing.assert_close(stats.top_logprobs, top_values)
    finite = torch.isfinite(top_values)
    assert torch.equal(stats.top_ids[finite], top_indices[finite])
    assert stats.logprobs[9].item() == -INF
    assert stats.entropies[5].item() == 0.0 and stats.varentropies[5].item() == 0.0
    assert torch.isneginf(stats.top_logprobs[5]).all()
    for field in ("logprobs", "entropies", "varentropies", "top_logprobs"):
        assert getattr(stats, field).dtype == torch.float32
    assert stats.top_ids.dtype == torch.int64 and stats.top_ids.shape == (23, 4)


@pytest.mark.parametrize("chunk_size", [1, 2, 7, 23, 1000])
def test_token_stats_invariant_to_chunk_size(chunk_size):
    logits, ids = _stats_logits()
    ref = token_stats(logits, ids, top_k=3, chunk_size=256)
    got = token_stats(logits, ids, top_k=3, chunk_size=chunk_size)
    for field in ("logprobs", "entropies", "varentropies", "top_logprobs"):
        torch.testing.assert_close(getattr(got, field), getattr(ref, field), rtol=1e-6, atol=1e-7)
    finite = torch.isfinite(ref.top_logprobs)
    assert torch.equal(got.top_ids[finite], ref.top_ids[finite])


@SETTINGS
@given(logit_rows(max_rows=6), st.integers(1, 4), st.data())
def test_token_stats_matches_reference(logits, chunk_size, data):
    n, v = logits.shape
    ids = torch.tensor(data.draw(st.lists(st.integers(0, v - 1), min_size=n, max_size=n)))
    stats = token_stats(logits, ids, top_k=min(2, v), chunk_size=chunk_size)
    for i, row in enumerate(logits.tolist()):
        ref_lp, ref_h, ref_var = ref_row(row)
        assert stats.logprobs[i].item() == pytest.approx(ref_lp[ids[i]], rel=1e-6, abs=1e-6)
        assert stats.entropies[i].item() == pytest.approx(ref_h, rel=1e-5, abs=1e-5)
        assert stats.varentropies[i].item() == pytest.approx(ref_var, rel=1e-4, abs=1e-4)
        top = sorted(ref_lp, reverse=True)[: min(2, v)]
        assert stats.top_logprobs[i].tolist() == pytest.approx(top, rel=1e-5, abs=1e-5)


def test_token_stats_top_k_zero_and_full_vocab():
    logits, ids = _stats_logits(n=4, v=6)
    empty = token_stats(logits, ids, top_k=0)
    assert empty.top_ids.shape == (4, 0) and empty.top_logprobs.shape == (4, 0)
    torch.testing.assert_close(empty.entropies, entropy(logits))
    full = token_stats(logits, ids, top_k=6)
    # every token once per row, sorted by probability
    assert torch.equal(full.top_ids.sort(-1).values, torch.arange(6).expand(4, 6))
    finite = torch.isfinite(full.top_logprobs)
    assert (full.top_logprobs[:, :-1] >= full.top_logprobs[:, 1:]).all()
    assert torch.allclose(full.top_logprobs.exp().sum(-1)[finite.any(-1)], torch.ones(()))


def test_token_stats_no_rows_and_frozen():
    stats = token_stats(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long), top_k=2)
    assert stats.logprobs.shape == (0,) and stats.top_ids.shape == (0, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.logprobs = torch.zeros(1)  # type: ignore[misc]


def test_token_stats_nan_names_global_row():
    logits, ids = _stats_logits()
    logits[13, 4] = math.nan
    with pytest.raises(TokenwiseError, match=r"NaN in the row at index \(13,\)"):
        token_stats(logits, ids, chunk_size=4)


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------

_X = torch.zeros(2, 3)
_IDS = torch.tensor([0, 1])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: entropy(_X, base=1), "got 1"),
        (lambda: entropy(_X, base=0), "got 0"),
        (lambda: entropy(_X, base=-2.0), "got -2.0"),
        (lambda: varentropy(_X, base=math.nan), "got nan"),
        (lambda: varentropy(_X, base=math.inf), "got inf"),
        (lambda: surprisal(_X, _IDS, base="2"), "got '2'"),
        (lambda: entropy(_X, base=True), "got True"),
        (lambda: entropy(_X, dim=2), "dim 2"),
        (lambda: log_probs(_X, dim=-3), "dim -3"),
        (lambda: entropy(torch.tensor(1.0)), "0-d"),
        (lambda: entropy(torch.zeros(2, 0)), "empty vocabulary"),
        (lambda: entropy([0.0, 1.0]), "torch.Tensor"),
        (lambda: surprisal(_X, torch.tensor([0, 3])), "token id 3 .*vocabulary size 3"),
        (lambda: surprisal(_X, torch.tensor([-1, 0])), "token id -1 .*vocabulary size 3"),
        (lambda: surprisal(_X, torch.tensor([0, 1, 2])), r"shape \(2,\).*got \(3,\)"),
        (lambda: surprisal(_X, torch.tensor([[0, 1]])), r"shape \(2,\).*got \(1, 2\)"),
        (lambda: surprisal(_X, torch.tensor([0.0, 1.0])), "integer dtype"),
        (lambda: rolling_mean(_IDS, 0), "window .*got 0"),
        (lambda: rolling_mean(_IDS, -3), "got -3"),
        (lambda: rolling_mean(_IDS, 2.5), "got 2.5"),
        (lambda: rolling_mean(_IDS, True), "got True"),
        (lambda: rolling_mean(_IDS, "3"), "got '3'"),
        (lambda: rolling_mean(_IDS, 2, direction="forward"), "got 'forward'"),
        (lambda: rolling_mean(_IDS, 2, dim=1), "dim 1"),
        (lambda: rolling_mean(_IDS, 2, mask=torch.ones(3, dtype=torch.bool)), r"\(3,\)"),
        (lambda: rolling_mean(_IDS, 2, mask=torch.ones(2)), "bool"),
        (lambda: token_stats(_X, _IDS, top_k=4), "top_k .*vocabulary size 3, got 4"),
        (lambda: token_stats(_X, _IDS, top_k=-1), "got -1"),
        (lambda: token_stats(_X, _IDS, top_k=2, chunk_size=0), "chunk_size .*got 0"),
        (lambda: token_stats(torch.zeros(2, 2, 3), _IDS), r"\(2, 2, 3\)"),
        (lambda: token_stats(_X, torch.tensor([5, 0])), "token id 5"),
    ],
)
def test_bad_arguments_raise_with_value(call, message):
    with pytest.raises(TokenwiseError, match=message):
        call()


@pytest.mark.parametrize(("bad", "kind"), [(math.nan, "NaN"), (INF, r"\+inf")])
@pytest.mark.parametrize(
    "fn",
    [
        log_probs,
        entropy,
        varentropy,
        lambda x: surprisal(x, torch.zeros(x.shape[:-1], dtype=torch.long)),
        lambda x: token_stats(x.reshape(6, 4), torch.zeros(6, dtype=torch.long), top_k=2),
    ],
)
def test_nan_and_posinf_logits_raise(fn, bad, kind):
    logits = torch.zeros(2, 3, 4)
    logits[1, 2, 0] = bad
    for dtype in (torch.float32, torch.float16):
        with pytest.raises(TokenwiseError, match=kind):
            fn(logits.to(dtype))


def test_bad_logits_message_names_row():
    logits = torch.zeros(2, 3, 4)
    logits[1, 2, 0] = math.nan
    with pytest.raises(TokenwiseError, match=r"index \(1, 2\)"):
        entropy(logits)
    with pytest.raises(TokenwiseError, match=r"index \(1, 2\)"):
        surprisal(logits, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(TokenwiseError, match=r"index \(1, 0\)"):
        entropy(logits, dim=1)


# --------------------------------------------------------------------------------------------
# purity and gradients
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_inputs_are_not_modified(dtype):
    logits, ids = _stats_logits(n=6, v=8)
    logits = logits.to(dtype)
    x = torch.randn(6).to(dtype)
    mask = torch.tensor([True, False, True, True, False, True])
    before = (logits.clone(), ids.clone(), x.clone(), mask.clone())
    outputs = [
        log_probs(logits),
        entropy(logits, base=2),
        varentropy(logits),
        surprisal(logits, ids),
        rolling_mean(x, 3),
        rolling_mean(x, 2, direction="leading", mask=mask),
        *dataclasses.astuple(token_stats(logits, ids, top_k=2, chunk_size=4)),
    ]
    for original, copy in zip((logits, ids, x, mask), before, strict=True):
        assert torch.equal(original, copy)
    # and no result shares storage with an input
    inputs = {t.untyped_storage().data_ptr() for t in (logits, ids, x, mask)}
    assert not any(out.untyped_storage().data_ptr() in inputs for out in outputs if out.numel())


def test_gradients_are_finite_with_masks():
    logits = torch.tensor([[0.5, -INF, 2.0, -1.0], [-INF, -INF, -INF, -INF]], requires_grad=True)
    loss = entropy(logits).sum() + varentropy(logits).sum() + log_probs(logits)[0, 0]
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[0, 1].item() == 0.0 and (logits.grad[1] == 0).all()
    # surprisal: finite gradients even for a fully masked row (whose value is +inf)
    logits.grad = None
    s = surprisal(logits, torch.tensor([2, 0]))
    assert s[1].item() == INF
    s[0].backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad[1] == 0).all()
    expected = torch.softmax(logits.detach()[0], -1) - torch.tensor([0.0, 0.0, 1.0, 0.0])
    torch.testing.assert_close(logits.grad[0], expected)
    # the gradient of a masked-out rolling_mean entry is 0
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    rolling_mean(x, 2, mask=torch.tensor([True, False, True])).sum().backward()
    assert x.grad.tolist() == [2.0, 0.0, 1.0]  # means: x0, x0, x2


def test_gradients_match_finite_differences():
    torch.manual_seed(8)
    logits = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([1, 4])
    assert torch.autograd.gradcheck(lambda t: entropy(t, base=2), (logits,))
    assert torch.autograd.gradcheck(varentropy, (logits,))
    assert torch.autograd.gradcheck(lambda t: surprisal(t, ids), (logits,))


def test_docstring_examples_run():
    result = doctest.testmod(signals, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
