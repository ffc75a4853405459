"""Chain order, the registry, and the transformers adapter."""

from __future__ import annotations

import pytest
import torch
from tests.sampling.helpers import random_logits

from tokenwise.errors import TokenwiseError
from tokenwise.sampling import SAMPLERS, Chain, MinP, Temperature, TopK, TopP, describe, get


def test_order_matters_and_is_kept():
    logits = random_logits(seed=5)
    first = Chain([Temperature(3.0), TopP(0.5)])(logits)
    last = Chain([TopP(0.5), Temperature(3.0)])(logits)
    # A flatter distribution needs more tokens to reach the same mass.
    assert (~first.isneginf()).sum() > (~last.isneginf()).sum()


def test_chain_equals_manual_composition():
    logits = random_logits()
    steps = [TopK(40), MinP(0.05), Temperature(0.7)]
    manual = logits
    for s in steps:
        manual = s(manual)
    assert torch.equal(Chain(steps)(logits), manual)
    assert Chain(steps).params()["samplers"][0] == {"name": "top_k", "top_k": 40,
                                                     "min_tokens_to_keep": 1}


def test_get_builds_every_registered_sampler_and_rejects_unknowns():
    assert isinstance(get("top_p", top_p=0.9), TopP)
    with pytest.raises(TokenwiseError, match=r"unknown sampler 'nucleus'; known: .*top_p"):
        get("nucleus")
    with pytest.raises(TokenwiseError, match=r"no parameter\(s\) p; allowed: top_p"):
        get("top_p", p=0.9)
    names = {row["name"] for row in describe()}
    assert names == set(SAMPLERS)


def test_empty_or_foreign_chain():
    with pytest.raises(TokenwiseError, match="at least one sampler"):
        Chain([])
    with pytest.raises(TokenwiseError, match="tokenwise samplers"):
        Chain([lambda x: x])


def test_as_hf_inside_generate(small):
    ids = torch.tensor([small.encode("markov: ka", add_bos=True)])
    proc = Chain([TopK(1)]).as_hf()
    out = small.hf_model.generate(ids, max_new_tokens=5, do_sample=True, logits_processor=[proc],
                                  pad_token_id=small.tokenizer.pad_token_id)
    greedy = small.hf_model.generate(ids, max_new_tokens=5, do_sample=False,
                                     pad_token_id=small.tokenizer.pad_token_id)
    assert torch.equal(out, greedy)  # top-1 sampling is greedy

