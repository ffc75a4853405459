"""Fixtures of the compression tests: a tiny random LLMLingua-2-style classifier."""

from __future__ import annotations

import pytest
from tests.compression.helpers import generated_texts, save_tiny_bert, save_tiny_xlmr
from tests.compression.texts import CONFORMANCE_TEXTS


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    corpus = CONFORMANCE_TEXTS + generated_texts(40, seed=1)
    return save_tiny_bert(tmp_path_factory.mktemp("clf") / "bert-base-multilingual-cased-tiny",
                          corpus)


@pytest.fixture(scope="session")
def tiny_compressor(tiny_bert_dir):
    from tokenwise.compression.token_classifier import TokenClassifierCompressor

    return TokenClassifierCompressor(tiny_bert_dir)


@pytest.fixture(scope="session")
def tiny_xlmr_dir(tmp_path_factory):
    corpus = CONFORMANCE_TEXTS + generated_texts(40, seed=1)
    return save_tiny_xlmr(tmp_path_factory.mktemp("clf") / "xlm-roberta-large-tiny", corpus)
