"""SCOPE-style generative compression: chunks, ratios, rewriter contract, keyword fallback."""

from __future__ import annotations

import numpy as np
import pytest

from tokenwise.compression import TokenCounter, words
from tokenwise.compression.generative import (
    GenerativeCompressor,
    chunk_ratios,
    keywords,
    semantic_chunks,
)
from tokenwise.errors import TokenwiseError

TOPICS = ("park", "rain", "football")
TEXT = ("The park opens at 9. The park has 3 gates. The park closes late. "
        "Heavy rain hit Lyon on Sunday. "
        "The park cafe sells tea. The park map is at the gate.")


def bag(texts):
    return np.asarray([[t.lower().count(w) for w in TOPICS] + [0.1] for t in texts])


def naive_chunks(vectors, q, max_sentences):
    sims = [float(vectors[i] @ vectors[i + 1]) for i in range(len(vectors) - 1)]
    limit = np.quantile(sims, q)
    out, start = [], 0
    for i in range(len(vectors)):
        if i == len(vectors) - 1 or sims[i] <= limit or i + 1 - start >= max_sentences:
            out.append((start, i + 1))
            start = i + 1
    return out


@pytest.mark.parametrize("seed", range(5))
def test_semantic_chunks_match_naive(seed):
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(12, 5))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    for q, m in ((0.25, 12), (0.5, 3), (0.1, 2)):
        assert semantic_chunks(v, q, m) == naive_chunks(v, q, m)


def test_chunk_ratios_keep_the_mean_and_follow_importance():
    sizes = np.array([30, 10, 20, 40])
    imp = np.array([0.1, 0.9, 0.3, 0.2])
    r = chunk_ratios(0.3, sizes, imp, 1.0)
    assert abs((r * sizes).sum() / sizes.sum() - 0.3) < 1e-9
    assert np.argmax(r) == 1 and (r >= 0.05).all() and (r <= 1).all()
    assert (np.argsort(r) == np.argsort(imp)).all()
    flat = chunk_ratios(0.3, sizes, imp, 0.0)
    np.testing.assert_allclose(flat, 0.3)
    high = chunk_ratios(0.9, sizes, np.array([0.0, 5.0, 0.0, 0.0]), 2.0)  # clipped at 1
    assert high[1] == 1.0 and abs((high * sizes).sum() / sizes.sum() - 0.9) < 1e-9


def test_rewriter_sees_each_chunk_with_its_ratio_and_outlier_is_kept_more():
    seen = []

    def rewrite(chunk, ratio):
        seen.append((chunk, ratio))
        return chunk  # too long: falls back

    comp = GenerativeCompressor(rewrite, embedder=bag, split_quantile=0.3)
    r = comp.compress(TEXT, rate=0.5)
    chunks = [c for c, _ in seen]
    assert "Heavy rain hit Lyon on Sunday." in chunks  # the off-topic sentence is its own chunk
    ratio = dict(seen)
    assert ratio["Heavy rain hit Lyon on Sunday."] == max(ratio.values())
    # An unchanged chunk fits only the outlier's budget (ratio near 1); the others fall back.
    assert ratio["Heavy rain hit Lyon on Sunday."] > 0.9 and r.timings["fallbacks"] == 2
    assert "Heavy rain hit Lyon on Sunday." in r.text
    for k in ("Lyon", "9", "3", "Sunday"):
        assert k in r.text


def test_valid_rewrite_is_used_and_bad_ones_fall_back():
    comp = GenerativeCompressor(lambda c, r: "Park: opens 9, 3 gates.", embedder=bag,
                                split_quantile=0.0, max_chunk_sentences=3)
    r = comp.compress("The park opens at 9. The park has 3 gates. The park closes late.",
                      rate=0.7)
    assert r.text == "Park: opens 9, 3 gates." and r.timings["fallbacks"] == 0
    # The rewrite loses the keyword "9": the fallback keeps it.
    comp = GenerativeCompressor(lambda c, r: "Park: 3 gates.", embedder=bag,
                                split_quantile=0.0, max_chunk_sentences=3)
    r = comp.compress("The park opens at 9. The park has 3 gates. The park closes late.",
                      rate=0.7)
    assert r.timings["fallbacks"] == 1 and "9" in r.text and "3" in r.text


@pytest.mark.parametrize("rate", [0.2, 0.5])
def test_builtin_generator_keeps_keywords_and_budget(rate):
    comp = GenerativeCompressor("tw-small", embedder=bag)
    r = comp.compress(TEXT, rate=rate)
    s, e = words.split_words(TEXT)
    must = {TEXT[a:b] for a, b, k in zip(s, e, keywords(TEXT, s, e), strict=True) if k}
    assert must == {"9", "3", "Lyon", "Sunday"}
    out = {r.text[a:b] for a, b in zip(*words.split_words(r.text), strict=True)}
    assert must <= out
    assert r.tokens_after < r.tokens_before


def test_fallback_budget_on_target_tokenizer():
    counter = TokenCounter.resolve(None)
    comp = GenerativeCompressor(None, embedder=bag, outlier_weight=0.0, split_quantile=0.0,
                                max_chunk_sentences=1)
    text = "The very long and winding road goes over the green hills. Then it ends."
    r = comp.compress(text, rate=0.5, protect=False)
    for sentence in ("The very long and winding road goes over the green hills.",
                     "Then it ends."):
        assert sentence not in r.text
    assert r.tokens_after <= sum(int(np.ceil(0.5 * counter.count(t)))
                                 for t in ("The very long and winding road goes over the "
                                           "green hills.", "Then it ends.")) + 1


def test_messages_leave_system_alone():
    msgs = [{"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": TEXT}]
    r = GenerativeCompressor(None, embedder=bag).compress(msgs, rate=0.4)
    assert r.messages[0] == msgs[0] and len(r.messages[1]["content"]) < len(TEXT)


def test_bad_input():
    comp = GenerativeCompressor(None, embedder=bag)
    with pytest.raises(TokenwiseError, match="threshold"):
        comp.compress(TEXT, threshold=0.5)
    with pytest.raises(TokenwiseError, match="rate"):
        comp.compress(TEXT, rate=1.5)
    with pytest.raises(TokenwiseError, match="split_quantile"):
        GenerativeCompressor(None, embedder=bag, split_quantile=1.0)
    with pytest.raises(TokenwiseError, match="must return"):
        GenerativeCompressor(lambda c, r: None, embedder=bag).compress(TEXT, rate=0.5)
    with pytest.raises(TokenwiseError, match="empty"):
        comp.compress("", rate=0.5)
