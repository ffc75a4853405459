"""MinP against transformers' MinPLogitsWarper (every sampler's contract: test_contract.py)."""

from __future__ import annotations

import pytest
import torch
from tests.sampling.helpers import random_logits
from transformers import MinPLogitsWarper

from tokenwise.errors import TokenwiseError
from tokenwise.sampling import MinP


@pytest.mark.parametrize("m", [0.0, 0.01, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("masked", [0.0, 0.5])
def test_same_mask_as_transformers(m, masked):
    logits = random_logits(masked=masked, seed=3)
    ours = MinP(m, min_tokens_to_keep=2)(logits)
    ref = MinPLogitsWarper(m, min_tokens_to_keep=2)(None, logits.clone())
    assert torch.equal(ours.isneginf(), ref.isneginf())


def test_threshold_is_relative_to_the_top_token():
    probs = torch.tensor([[0.6, 0.3, 0.07, 0.03]])
    out = MinP(0.1)(probs.log())
    assert out.isneginf().tolist() == [[False, False, False, True]]


def test_bad_min_p():
    with pytest.raises(TokenwiseError, match=r"min_p=1.2: allowed a number in \[0, 1\]"):
        MinP(1.2)
