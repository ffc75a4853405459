"""Epsilon against transformers' EpsilonLogitsWarper, and its properties (the contract every
sampler keeps, per-row epsilon included, is in test_contract.py)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from tests.sampling.helpers import INF, SETTINGS, make_logits
from transformers import EpsilonLogitsWarper

from tokenwise.errors import TokenwiseError
from tokenwise.sampling.epsilon import Epsilon


def hf(epsilon: float, x: torch.Tensor, k: int = 1) -> torch.Tensor:
    return EpsilonLogitsWarper(epsilon, min_tokens_to_keep=k)(None, x.clone()).isneginf()


# ---------------------------------------------------------------------------- transformers


@pytest.mark.parametrize("epsilon", [1e-4, 3e-3, 0.02, 0.1, 0.5])
@pytest.mark.parametrize("masked", [0.0, 0.6])
@pytest.mark.parametrize("k", [1, 5])
@pytest.mark.parametrize("ties", [False, True])
def test_same_mask_as_transformers(epsilon, masked, k, ties):
    # With ties too: a token tied with the k-th most likely one is kept, as in transformers.
    for seed in range(3):
        x = make_logits(seed, masked=masked, ties=ties)
        ours = Epsilon(epsilon, min_tokens_to_keep=k)(x).isneginf()
        assert torch.equal(ours, hf(epsilon, x, k))


def test_min_tokens_to_keep_keeps_ties_with_the_last_one():
    x = torch.tensor([[3.0, 1.0, 1.0, 1.0, 0.0]])
    out = Epsilon(0.5, min_tokens_to_keep=2)(x).isneginf()
    assert out.tolist() == [[False, False, False, False, True]]
    assert torch.equal(out, hf(0.5, x, 2))


def test_half_precision_differs_from_transformers_by_design():
    # transformers compares fp16 probabilities with an fp16 epsilon; we decide in float32, so
    # fp16 logits keep the same tokens as their float32 copy. Here p = 0.029993 (float32)
    # rounds to 0.029999 in fp16, as does 0.03 itself, so transformers keeps the token.
    x = torch.tensor([[0.0, 0.0, -2.783203125]], dtype=torch.float16)
    assert Epsilon(0.03)(x).isneginf().tolist() == [[False, False, True]]
    assert hf(0.03, x).tolist() == [[False, False, False]]
    assert hf(0.03, x.float()).tolist() == [[False, False, True]]


# ------------------------------------------------------------------------------- edge cases


def test_min_tokens_to_keep_when_none_passes():
    x = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    assert Epsilon(0.9, min_tokens_to_keep=3)(x).isneginf().tolist() == [[True, False, False,
                                                                          False]]


def test_keeps_the_most_likely_token_when_none_passes():
    x = torch.zeros(2, 50)  # p = 0.02 everywhere
    out = Epsilon(0.5)(x)
    assert ((~out.isneginf()).sum(-1) == 50).all()  # all tied with the most likely
    x[:, 7] = 0.1
    assert (~Epsilon(0.5)(x).isneginf()).nonzero()[:, 1].tolist() == [7, 7]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_same_mask_as_transformers_on_the_float32_copy(dtype):
    x = make_logits(1, masked=0.3).to(dtype)
    out = Epsilon(0.01, min_tokens_to_keep=2)(x)
    assert torch.equal(out.isneginf(), hf(0.01, x.float(), k=2))


# ------------------------------------------------------------------------------- properties


@SETTINGS
@given(seed=st.integers(0, 10_000), masked=st.sampled_from([0.0, 0.5, 0.95]),
       a=st.floats(1e-5, 0.99), b=st.floats(1e-5, 0.99), k=st.integers(1, 8),
       ties=st.booleans())
def test_a_larger_epsilon_keeps_a_subset_and_ties_with_the_kth(seed, masked, a, b, k, ties):
    x = make_logits(seed, vocab=40, masked=masked, ties=ties)
    kept_low = ~Epsilon(min(a, b), min_tokens_to_keep=k)(x).isneginf()
    kept_high = ~Epsilon(max(a, b), min_tokens_to_keep=k)(x).isneginf()
    assert not (kept_high & ~kept_low).any()
    kth = x.topk(k, -1).values[:, -1:]  # every finite token tied with the k-th stays
    assert not (~kept_high & (x >= kth) & (x > -INF)).any()


# ---------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1, 1.0, 1.5, math.nan, True, "0.1", None])
def test_bad_epsilon(bad):
    with pytest.raises(TokenwiseError, match=r"epsilon=.*allowed a number in \(0, 1\)") as info:
        Epsilon(bad)
    assert repr(bad) in str(info.value)


def test_bad_epsilon_in_a_row():
    with pytest.raises(TokenwiseError, match=r"epsilon\[2\]=1\.0: allowed a number in \(0, 1\)"):
        Epsilon([0.1, 0.2, 1.0])


def test_name_params_repr():
    sampler = Epsilon(3e-4, min_tokens_to_keep=2)
    assert Epsilon.name == "epsilon"
    assert sampler.params() == {"epsilon": 3e-4, "min_tokens_to_keep": 2}
    assert repr(sampler) == "Epsilon(epsilon=0.0003, min_tokens_to_keep=2)"
    assert Epsilon(torch.tensor([0.5, 0.25])).params()["epsilon"] == [0.5, 0.25]
