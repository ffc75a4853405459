"""TopP against transformers' TopPLogitsWarper, its kept mass, bad input (per-row parameters
and the rest of every sampler's contract: test_contract.py)."""

from __future__ import annotations

import pytest
import torch
from tests.sampling.helpers import random_logits
from transformers import TopPLogitsWarper

from tokenwise.errors import TokenwiseError
from tokenwise.sampling import TopP


@pytest.mark.parametrize("p", [0.05, 0.5, 0.9, 0.999, 1.0])
@pytest.mark.parametrize("masked", [0.0, 0.6])
@pytest.mark.parametrize("min_keep", [1, 3])
def test_same_mask_as_transformers(p, masked, min_keep):
    logits = random_logits(masked=masked, seed=int(p * 1000))
    ours = TopP(p, min_tokens_to_keep=min_keep)(logits)
    ref = TopPLogitsWarper(p, min_tokens_to_keep=min_keep)(None, logits.clone())
    assert torch.equal(ours.isneginf(), ref.isneginf())


def test_kept_mass_reaches_p_and_is_minimal():
    logits = random_logits(vocab=50)
    out = TopP(0.8)(logits)
    probs = logits.softmax(-1)
    for row in range(logits.shape[0]):
        kept = probs[row][~out[row].isneginf()]
        assert kept.sum() >= 0.8 - 1e-6
        assert kept.sum() - kept.min() < 0.8 + 1e-6  # dropping the smallest breaks it


def test_kept_set_grows_with_p():
    logits = random_logits()
    sizes = [int((~TopP(p)(logits).isneginf()).sum()) for p in (0.1, 0.3, 0.6, 0.9, 1.0)]
    assert sizes == sorted(sizes)


@pytest.mark.parametrize("bad", [0, -0.1, 1.5, float("nan")])
def test_bad_p(bad):
    with pytest.raises(TokenwiseError, match=r"top_p=.*allowed a number in \(0, 1\]"):
        TopP(bad)
