"""Embedders: MiniLM against sentence-transformers, normalisation, caching, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from tokenwise.errors import TokenwiseError
from tokenwise.uncertainty import FunctionEmbedder, HFEmbedder
from tokenwise.uncertainty.embedding import default_embedder, minilm_path


def test_minilm_matches_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    texts = ["a doctor", "The city of Velmora is far away, they say.", ""]
    ours = HFEmbedder().embed(texts)
    ref = SentenceTransformer(str(minilm_path()), device="cpu").encode(
        texts, normalize_embeddings=True)
    assert ours.shape == (3, 384) and ours.dtype == np.float64
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_long_text_is_truncated_not_crashed():
    v = default_embedder().embed(["word " * 2000])
    assert v.shape == (1, 384) and np.isfinite(v).all()


def test_function_embedder_normalises_and_caches():
    calls = []
    e = FunctionEmbedder(lambda ts: calls.append(list(ts)) or [[3.0, 4.0]] * len(ts))
    v = e.embed(["a", "b", "a"])
    np.testing.assert_allclose(v, [[0.6, 0.8]] * 3)
    e.embed(["b", "c"])
    assert calls == [["a", "b"], ["c"]]
    assert e.embed([]).shape == (0, 2)


def test_embedder_bad_input():
    with pytest.raises(TokenwiseError, match="all-zero"):
        FunctionEmbedder(lambda ts: [[0.0, 0.0]] * len(ts)).embed(["a"])
    with pytest.raises(TokenwiseError, match="NaN"):
        FunctionEmbedder(lambda ts: [[float("nan"), 1.0]] * len(ts)).embed(["a"])
    with pytest.raises(TokenwiseError, match="single string"):
        FunctionEmbedder(lambda ts: [[1.0]] * len(ts)).embed("abc")
    with pytest.raises(TokenwiseError, match="not a local directory"):
        HFEmbedder("/no/such/model")


@pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="needs CUDA")
def test_cuda_matches_cpu():
    texts = ["a doctor", "the year 1742", ""]
    np.testing.assert_allclose(HFEmbedder(device="cuda").embed(texts),
                               HFEmbedder().embed(texts), atol=1e-4)
