"""Mirostat v2: the truncation rule, the feedback on mu, and its effect in generation."""

from __future__ import annotations

import math

import pytest
import torch
from tests.sampling.helpers import random_logits

import tokenwise as tw
from tokenwise.errors import TokenwiseError
from tokenwise.sampling import MirostatV2


def test_drops_tokens_more_surprising_than_mu_but_never_the_top_one():
    logits = random_logits(batch=4, vocab=300, masked=0.2)
    s = MirostatV2(tau=3.0)
    out = s(logits)
    surprise = -logits.log_softmax(-1) / math.log(2)
    kept = ~out.isneginf()
    assert torch.equal(kept, (surprise <= 6.0) | (logits == logits.max(-1, keepdim=True).values))
    tight = MirostatV2(tau=1e-3)(logits)
    assert (~tight.isneginf()).sum(-1).tolist() == [1] * 4


def test_mu_moves_against_the_error():
    s = MirostatV2(tau=2.0, eta=0.5)
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    s(logits)  # mu = 4 bits: everything kept
    s.observe(torch.tensor([1]))  # surprise 2 bits = tau: no change
    assert float(s.mu[0]) == pytest.approx(4.0)
    s(logits)
    s.observe(torch.tensor([0]))  # surprise 1 bit < tau: mu rises by 0.5
    assert float(s.mu[0]) == pytest.approx(4.5)


def test_higher_target_gives_more_surprising_text(large):
    prompt = "markov: ka ro"
    means = []
    for tau in (0.5, 3.0):
        gens = tw.generate(large, [prompt] * 4, MirostatV2(tau=tau, eta=0.3),
                           max_new_tokens=60, seed=[1, 2, 3, 4])
        bits = [-t.logprob / math.log(2) for g in gens for t in g.tokens]
        means.append(sum(bits) / len(bits))
    # The Markov source's own entropy (~2.8 bits a symbol) bounds how predictable the text
    # can be, but a higher target still gives clearly more surprising text.
    assert means[0] + 0.3 < means[1], means


def test_as_hf_observes_the_chosen_tokens(small):
    s = MirostatV2(tau=1.0, eta=0.5)
    ids = torch.tensor([small.encode("markov: ka", add_bos=True)])
    small.hf_model.generate(ids, do_sample=True, max_new_tokens=6, logits_processor=[s.as_hf()],
                            pad_token_id=small.tokenizer.pad_token_id)
    assert float(s.mu[0]) != pytest.approx(2.0)  # moved from its start at 2 * tau


def test_bad_arguments_and_misuse():
    with pytest.raises(TokenwiseError, match="tau=0"):
        MirostatV2(tau=0)
    with pytest.raises(TokenwiseError, match="eta=-1"):
        MirostatV2(eta=-1)
    with pytest.raises(TokenwiseError, match="before the sampler saw"):
        MirostatV2().observe(torch.tensor([0]))


def test_as_hf_starts_afresh_for_each_generate_call(small):
    s = MirostatV2(tau=1.0, eta=0.5)
    proc = s.as_hf()
    ids = torch.tensor([small.encode("markov: ka", add_bos=True)])
    small.hf_model.generate(ids, do_sample=True, max_new_tokens=5, logits_processor=[proc],
                            pad_token_id=small.tokenizer.pad_token_id)
    longer = torch.tensor([small.encode("markov: ka ro yi tu ka ro zu va mi qa nu", add_bos=True)])
    proc(longer, torch.zeros(1, small.vocab_size))  # a new call's first step
    assert float(s.mu[0]) == pytest.approx(2.0)  # reset to 2 * tau, not carried over
