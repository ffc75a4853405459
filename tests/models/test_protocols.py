"""The codec and scorer protocols (tokenwise.models.protocols), and the tokenizer codec that
LanguageModel shares with models whose weights live elsewhere."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tokenwise.models import (
    Codec,
    ForwardScorer,
    LanguageModel,
    PromptScorer,
    Scorer,
    TokenizerCodec,
    load,
)
from tokenwise.models.language_model import EncodedText


class _TokenizerOnly(TokenizerCodec):
    """A codec with a tokenizer and nothing else."""

    def __init__(self, name, tokenizer, context_length=64):
        self.name, self.tokenizer, self._context = name, tokenizer, context_length

    @property
    def context_length(self):
        return self._context


def test_a_language_model_is_a_codec_and_a_forward_scorer():
    lm = load("tw-small")
    assert isinstance(lm, Codec) and isinstance(lm, ForwardScorer)
    assert isinstance(lm, Scorer) and not isinstance(lm, PromptScorer)
    assert isinstance(lm, TokenizerCodec)
    # each member the protocols name answers, with what the protocol says it holds
    assert lm.context_length == 256 and lm.vocab_size == 1024
    assert lm.start_ids == (1,) and lm.bos_token_id == 1
    assert lm.eos_token_id == 2 and lm.end_token_ids == frozenset({2})
    ids = lm.encode("7+5=", add_bos=True)
    assert ids[0] == 1 and lm.decode(ids, skip_special_tokens=True) == "7+5="
    out = lm.forward(torch.tensor([ids]), use_cache=True, logits_to_keep=1)
    assert out.logits.shape == (1, 1, lm.vocab_size) and out.cache is not None


def test_a_prompt_scorer_is_a_scorer_and_a_bare_object_is_neither():
    tokenizer = load("tw-small").tokenizer

    class Prompts(_TokenizerOnly):
        def prompt_logprobs(self, prompts):
            return [np.zeros(len(p) - 1) for p in prompts]

    scorer = Prompts("p", tokenizer)
    assert isinstance(scorer, PromptScorer) and isinstance(scorer, Scorer)
    assert not isinstance(scorer, ForwardScorer)
    for other in ("tw-small", SimpleNamespace(name="x", tokenizer=tokenizer)):
        assert not isinstance(other, Codec) and not isinstance(other, Scorer)


def test_the_tokenizer_codec_encodes_and_decodes_as_the_language_model():
    lm = load("tw-small")
    codec = _TokenizerOnly("tw-small", lm.tokenizer)
    assert isinstance(codec, Codec) and not isinstance(codec, Scorer)
    assert codec.start_ids == lm.start_ids and codec.bos_token_id == lm.bos_token_id
    assert codec.eos_token_id == lm.eos_token_id and codec.end_token_ids == lm.end_token_ids
    assert codec.vocab_size == len(lm.tokenizer)
    rendered = EncodedText("<s>user: hi", [1, 40, 41])
    for text in ("12+7=19", "a </s> b <s>", rendered):
        for add_bos in (False, True):
            assert codec.encode(text, add_bos) == lm.encode(text, add_bos)
    ids = lm.encode("12+7=19", add_bos=True)
    for skip in (False, True):
        assert codec.decode(ids, skip) == lm.decode(ids, skip)
        assert codec.decode(torch.tensor(ids), skip) == lm.decode(ids, skip)


def test_a_language_model_adds_its_generation_configs_end_ids():
    lm = load("tw-small")  # a fresh model each load: changing its config touches no other
    lm.hf_model.generation_config.eos_token_id = [2, 7]
    assert lm.end_token_ids == frozenset({2, 7})
    # a codec without a model reads the tokenizer's alone
    assert _TokenizerOnly("t", lm.tokenizer).end_token_ids == frozenset({2})


def test_a_tokenizer_codec_must_say_its_context_length():
    class NoContext(TokenizerCodec):
        def __init__(self):
            self.name, self.tokenizer = "n", None

    with pytest.raises(TypeError, match="context_length"):
        NoContext()


def test_language_model_keeps_its_public_names():
    # the codec half moved into TokenizerCodec; LanguageModel still offers all of it
    for name in ("encode", "decode", "start_ids", "bos_token_id", "eos_token_id",
                 "end_token_ids", "vocab_size", "context_length", "forward", "hidden_states",
                 "num_parameters", "config", "device", "dtype"):
        assert hasattr(LanguageModel, name), name
