"""`compress()` and `get()`: dispatch by name, option routing, caching."""

from __future__ import annotations

import pytest

from tokenwise.compression import compress, compressor_class, get, names
from tokenwise.errors import TokenwiseError


def test_registry():
    from tokenwise.compression.registry import ALIASES

    assert "token_classifier" in names()
    for name in names():
        assert compressor_class(name).name == name
    for alias, name in ALIASES.items():
        assert compressor_class(alias) is compressor_class(name)
    with pytest.raises(TokenwiseError, match=r"unknown compression method 'zip'.*token_classifier"):
        compressor_class("zip")


def test_compress_by_name_routes_options_and_reuses_the_model(tiny_bert_dir):
    res = compress("The council approved the park budget. Water costs rose.", rate=0.5,
                   model=tiny_bert_dir, batch_size=2, token_to_word="first")
    assert res.method == "token_classifier" and 0 < res.keep.sum() < len(res.words)
    a = get("token_classifier", model=tiny_bert_dir, batch_size=2, token_to_word="first")
    b = get("token_classifier", model=str(tiny_bert_dir), batch_size=2, token_to_word="first")
    assert a is b and a.batch_size == 2 and a.token_to_word == "first"


def test_compress_errors(tiny_bert_dir):
    with pytest.raises(TokenwiseError, match=r"token classifier 'nope' not found.*tw-keep"):
        compress("some text", rate=0.5, model="nope")
    with pytest.raises(TokenwiseError, match="no token-classification head"):
        compress("some text", rate=0.5, model="tw-small")
    with pytest.raises(TokenwiseError, match=r"unknown option\(s\) \['beam'\]"):
        compress("some text", rate=0.5, model=tiny_bert_dir, beam=3)
    with pytest.raises(TokenwiseError, match="rate=0"):
        compress("some text", rate=0, model="/nonexistent")  # checked before loading
    with pytest.raises(TokenwiseError, match="method=3"):
        compress("some text", method=3, rate=0.5)


def test_a_method_keeps_its_own_default_model():
    res = compress("The code of Brelix is 382. The code of Tavoun is 917.", method="perplexity",
                   rate=0.6)
    assert res.method == "perplexity"
