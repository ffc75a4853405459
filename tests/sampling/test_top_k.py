"""TopK against transformers' TopKLogitsWarper, and its guarantees (the contract every
sampler keeps is in test_contract.py)."""

from __future__ import annotations

import pytest
import torch
from tests.sampling.helpers import random_logits
from transformers import TopKLogitsWarper

from tokenwise.errors import TokenwiseError
from tokenwise.sampling import TopK


@pytest.mark.parametrize("k", [1, 5, 50, 500])
@pytest.mark.parametrize("masked", [0.0, 0.5])
def test_same_mask_as_transformers(k, masked):
    logits = random_logits(masked=masked, seed=k)
    ours = TopK(k, min_tokens_to_keep=2)(logits)
    ref = TopKLogitsWarper(k, min_tokens_to_keep=2)(None, logits.clone())
    assert torch.equal(ours.isneginf(), ref.isneginf())


def test_keeps_exactly_k():
    logits = random_logits()
    out = TopK(7)(logits)
    assert (~out.isneginf()).sum(-1).tolist() == [7] * logits.shape[0]


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "3"])
def test_bad_k(bad):
    with pytest.raises(TokenwiseError, match=r"top_k=.*allowed an integer >= 1"):
        TopK(bad)
