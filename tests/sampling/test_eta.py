"""Eta against transformers' EtaLogitsWarper, and its properties (the contract every sampler
keeps, per-row epsilon included, is in test_contract.py)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from tests.sampling.helpers import INF, SETTINGS, make_logits
from transformers import EtaLogitsWarper

from tokenwise.errors import TokenwiseError
from tokenwise.sampling.epsilon import Epsilon
from tokenwise.sampling.eta import Eta


def hf(epsilon: float, x: torch.Tensor, k: int = 1) -> torch.Tensor:
    return EtaLogitsWarper(epsilon, min_tokens_to_keep=k)(None, x.clone()).isneginf()


def reference_eta(epsilon: float, row: list[float]) -> float:
    """min(eps, sqrt(eps) * exp(-H)) in plain float64 Python, one row."""
    finite = [v for v in row if v != -INF]
    top = max(finite)
    z = sum(math.exp(v - top) for v in finite)
    probs = [math.exp(v - top) / z for v in finite]
    ent = -sum(p * math.log(p) for p in probs if p > 0)
    return min(epsilon, math.sqrt(epsilon) * math.exp(-ent))


# ---------------------------------------------------------------------------- transformers


@pytest.mark.parametrize("epsilon", [1e-4, 3e-3, 0.02, 0.1, 0.5])
@pytest.mark.parametrize("masked", [0.0, 0.6])
@pytest.mark.parametrize("k", [1, 5])
@pytest.mark.parametrize("ties", [False, True])
def test_same_mask_as_transformers(epsilon, masked, k, ties):
    # With ties too: a token tied with the k-th most likely one is kept, as in transformers.
    for seed in range(3):
        x = make_logits(seed, masked=masked, ties=ties)
        assert torch.equal(Eta(epsilon, min_tokens_to_keep=k)(x).isneginf(), hf(epsilon, x, k))


def test_fully_masked_row_differs_from_transformers_by_design():
    # transformers' Categorical entropy raises on a row of -inf; ours returns it unchanged.
    x = torch.tensor([[-INF, -INF, -INF], [0.0, 1.0, 5.0]])
    with pytest.raises(ValueError):
        hf(0.1, x)
    out = Eta(0.1)(x)
    assert not out.isnan().any()
    assert torch.equal(out[0], x[0])
    assert torch.equal(out[1:].isneginf(), hf(0.1, x[1:]))


def test_cut_off_matches_the_formula():
    # Keeps exactly the tokens with p >= min(eps, sqrt(eps) exp(-H)) (away from rounding).
    x = make_logits(4, masked=0.3)
    for epsilon in (0.001, 0.05, 0.3):
        out = Eta(epsilon)(x).isneginf()
        probs = x.double().softmax(-1)
        for i, row in enumerate(x.tolist()):
            eta = reference_eta(epsilon, row)
            clear = (probs[i] - eta).abs() > 1e-6
            expect = (probs[i] < eta) & (probs[i] < probs[i].max())
            assert torch.equal(out[i][clear], expect[clear])


def test_flat_rows_keep_more_than_epsilon_sampling():
    # eta <= epsilon, so eta keeps every token epsilon sampling keeps (and more when H is high).
    x = make_logits(2, vocab=300, masked=0.2)
    for epsilon in (1e-3, 0.01, 0.1):
        eta_kept = ~Eta(epsilon)(x).isneginf()
        eps_kept = ~Epsilon(epsilon)(x).isneginf()
        assert not (eps_kept & ~eta_kept).any()
    flat = torch.zeros(1, 100) + torch.linspace(0, 1, 100)  # p ~ 0.01, H ~ 4.6
    assert (~Epsilon(0.011)(flat).isneginf()).sum() < 100 == (~Eta(0.011)(flat).isneginf()).sum()


# ------------------------------------------------------------------------------- edge cases


def test_min_tokens_to_keep_when_none_passes():
    x = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    assert Eta(0.9, min_tokens_to_keep=3)(x).isneginf().tolist() == [[True, False, False, False]]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_same_mask_as_transformers_on_the_float32_copy(dtype):
    x = make_logits(1, masked=0.3).to(dtype)
    out = Eta(0.01, min_tokens_to_keep=2)(x)
    assert torch.equal(out.isneginf(), hf(0.01, x.float(), k=2))


# ------------------------------------------------------------------------------- properties


@SETTINGS
@given(seed=st.integers(0, 10_000), masked=st.sampled_from([0.0, 0.5, 0.95]),
       a=st.floats(1e-5, 0.99), b=st.floats(1e-5, 0.99), k=st.integers(1, 8),
       ties=st.booleans())
def test_a_larger_epsilon_keeps_a_subset_and_ties_with_the_kth(seed, masked, a, b, k, ties):
    x = make_logits(seed, vocab=40, masked=masked, ties=ties)
    kept_low = ~Eta(min(a, b), min_tokens_to_keep=k)(x).isneginf()
    kept_high = ~Eta(max(a, b), min_tokens_to_keep=k)(x).isneginf()
    assert not (kept_high & ~kept_low).any()
    kth = x.topk(k, -1).values[:, -1:]  # every finite token tied with the k-th stays
    assert not (~kept_high & (x >= kth) & (x > -INF)).any()


# ---------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1, 1.0, 1.5, math.nan, True, "0.1", None])
def test_bad_epsilon(bad):
    with pytest.raises(TokenwiseError, match=r"epsilon=.*allowed a number in \(0, 1\)") as info:
        Eta(bad)
    assert repr(bad) in str(info.value)


def test_bad_epsilon_in_a_row():
    with pytest.raises(TokenwiseError, match=r"epsilon\[0\]=0: allowed a number in \(0, 1\)"):
        Eta([0, 0.2])


def test_name_params_repr():
    sampler = Eta(2e-3, min_tokens_to_keep=2)
    assert Eta.name == "eta"
    assert sampler.params() == {"epsilon": 2e-3, "min_tokens_to_keep": 2}
    assert repr(sampler) == "Eta(epsilon=0.002, min_tokens_to_keep=2)"
