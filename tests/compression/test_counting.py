"""Token counts on the target tokenizer."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenwise.compression import TokenCounter, words
from tokenwise.errors import TokenwiseError
from tokenwise.models import builtin_path


def test_default_is_the_builtin_tokenizer(small):
    counter = TokenCounter.resolve(None)
    text = "Q: Where was Trather Shai born?\nA: the city of Duzal 12+7=19"
    assert counter.count(text) == len(small.encode(text))
    assert counter.count("") == 0
    assert counter.count_each([text, "", "ab"]).tolist() == [
        len(small.encode(text)), 0, len(small.encode("ab"))]


def test_resolve_variants(small, tiny_bert_dir):
    assert TokenCounter.resolve(small).name == "tw-small"
    assert TokenCounter.resolve(str(builtin_path("tw-large"))).count("12") == 2
    bert = TokenCounter.resolve(tiny_bert_dir)
    assert bert.count("北京 council") == len(bert.tokenizer.tokenize("北京 council"))
    assert TokenCounter.resolve(bert) is bert
    assert TokenCounter.resolve(bert.tokenizer).count("北京") == 2
    by_chars = TokenCounter.resolve(len)
    assert by_chars.count("abc") == 3 and by_chars.count_each(["a", "bb"]).tolist() == [1, 2]
    assert by_chars.per_word(["a b"], np.array([0, 2]), np.array([1, 3]), np.zeros(2, int)) is None


def test_resolve_errors(tmp_path):
    with pytest.raises(TokenwiseError, match="target_model=42"):
        TokenCounter.resolve(42)
    with pytest.raises(TokenwiseError, match="no tokenizer files"):
        TokenCounter.resolve(tmp_path)
    with pytest.raises(TokenwiseError, match="not on disk"):
        TokenCounter.resolve("someone/some-model")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from([*list("ab xy 12.\n中の!?"), "the ", "code ", "of "]),
                min_size=1, max_size=40).map("".join))
def test_per_word_weights_sum_to_the_count(text):
    counter = TokenCounter.resolve(None)
    s, e = words.split_words(text)
    if len(s) == 0:
        return
    w = counter.per_word([text], s, e, np.zeros(len(s), dtype=np.int64))
    assert w.sum() == counter.count(text)
    assert (w >= 0).all()
