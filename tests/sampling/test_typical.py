"""Typical against transformers' TypicalLogitsWarper, and its properties (the contract every
sampler keeps, per-row mass included, is in test_contract.py)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from tests.sampling.helpers import INF, SETTINGS, make_logits
from transformers import TypicalLogitsWarper

from tokenwise.errors import TokenwiseError
from tokenwise.sampling.typical import Typical


def hf(mass: float, x: torch.Tensor, k: int = 1) -> torch.Tensor:
    return TypicalLogitsWarper(mass, min_tokens_to_keep=k)(None, x.clone()).isneginf()


def distance(x: torch.Tensor) -> torch.Tensor:
    """|-log p - H| per token, float64 (the typicality ranking)."""
    log_p = x.double().log_softmax(-1)
    p = log_p.exp()
    ent = -torch.where(p > 0, p * log_p, 0.0).sum(-1, keepdim=True)
    return (-log_p - ent).abs()


# ---------------------------------------------------------------------------- transformers


@pytest.mark.parametrize("mass", [0.05, 0.2, 0.5, 0.9, 0.95, 0.999])
@pytest.mark.parametrize("masked", [0.0, 0.6])
@pytest.mark.parametrize("k", [1, 5])
def test_same_mask_as_transformers(mass, masked, k):
    for seed in range(3):
        x = make_logits(seed, masked=masked)
        assert torch.equal(Typical(mass, min_tokens_to_keep=k)(x).isneginf(), hf(mass, x, k))


@pytest.mark.parametrize("mass", [0.1, 0.5, 0.9])
def test_ties_at_the_mass_boundary_as_transformers(mass):
    # Equal logits are equally typical: both keep the whole tie group that crosses `mass`.
    for seed in range(4):
        x = make_logits(seed, ties=True, masked=0.3)
        assert torch.equal(Typical(mass)(x).isneginf(), hf(mass, x))


def test_ties_at_min_tokens_to_keep_differ_by_design():
    # transformers keeps the first k positions of its sort, so of two equally typical tokens
    # it keeps whichever the sort puts first; we keep both (the set does not depend on sort
    # order, and it is the same tie rule as for `mass`).
    x = torch.tensor([[3.0, 0.0, 0.0]])
    assert hf(0.5, x, k=2).sum().item() == 1  # one of the two equal tokens dropped
    assert Typical(0.5, min_tokens_to_keep=2)(x).isneginf().tolist() == [[False, False, False]]


@pytest.mark.parametrize("k", [2, 3])
def test_ties_otherwise_as_transformers(k):
    # With many ties: ours keeps transformers' set plus only tokens tied with the k-th most
    # typical one.
    for seed in range(4):
        x = make_logits(seed, ties=True, masked=0.3)
        ours, ref = Typical(0.1, min_tokens_to_keep=k)(x).isneginf(), hf(0.1, x, k)
        assert not (ours & ~ref).any()  # never drops what transformers keeps
        d = distance(x).masked_fill(ref, INF)  # distances of transformers' kept tokens
        kth = d.sort(-1).values[:, k - 1 : k]
        extra = ref & ~ours
        assert torch.equal(extra, extra & (distance(x) == kth))


def test_the_most_likely_token_can_be_dropped_as_in_transformers():
    # The method, and transformers and llama.cpp: min_tokens_to_keep counts the most
    # *typical* tokens, so a confident token in a high-entropy row can go (unlike the other
    # samplers of the package, which always keep the most likely tokens).
    x = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    out = Typical(0.2)(x).isneginf()
    assert out.tolist() == [[True, False, True, True]]
    assert torch.equal(out, hf(0.2, x))


def test_mass_one_keeps_everything():
    # transformers refuses mass=1; here it keeps every finite token, whatever the rounding.
    x = make_logits(0, vocab=500, masked=0.3) * 4
    assert torch.equal(Typical(1.0)(x).isneginf(), x.isneginf())


# ------------------------------------------------------------------------------- edge cases


def test_min_tokens_to_keep_when_the_mass_needs_fewer():
    x = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    assert (~Typical(0.5, min_tokens_to_keep=3)(x).isneginf()).sum().item() == 3


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_same_mask_as_transformers_on_the_float32_copy(dtype):
    x = make_logits(1, masked=0.3).to(dtype)
    out = Typical(0.9, min_tokens_to_keep=2)(x)
    assert torch.equal(out.isneginf(), hf(0.9, x.float(), k=2))


# ------------------------------------------------------------------------------- properties


@SETTINGS
@given(seed=st.integers(0, 10_000), masked=st.sampled_from([0.0, 0.5, 0.95]),
       a=st.floats(0.01, 1.0), b=st.floats(0.01, 1.0), k=st.integers(1, 8))
def test_more_mass_keeps_a_superset(seed, masked, a, b, k):
    x = make_logits(seed, vocab=40, masked=masked)
    kept_low = ~Typical(min(a, b), min_tokens_to_keep=k)(x).isneginf()
    kept_high = ~Typical(max(a, b), min_tokens_to_keep=k)(x).isneginf()
    assert not (kept_low & ~kept_high).any()


# ---------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.5, math.nan, INF, True, "0.5", None])
def test_bad_mass(bad):
    with pytest.raises(TokenwiseError, match=r"mass=.*allowed a number in \(0, 1\]") as info:
        Typical(bad)
    assert repr(bad) in str(info.value)


def test_bad_mass_in_a_row():
    with pytest.raises(TokenwiseError, match=r"mass\[1\]=1\.5: allowed a number in \(0, 1\]"):
        Typical([0.5, 1.5])
    with pytest.raises(TokenwiseError, match=r"mass=\[\]: allowed a number, or one number per row"):
        Typical([])


def test_name_params_repr():
    sampler = Typical(0.9, min_tokens_to_keep=3)
    assert Typical.name == "typical"
    assert sampler.params() == {"mass": 0.9, "min_tokens_to_keep": 3}
    assert repr(sampler) == "Typical(mass=0.9, min_tokens_to_keep=3)"
    assert Typical(torch.tensor([0.5, 0.25])).params()["mass"] == [0.5, 0.25]
    assert Typical().params()["mass"] == 0.95
