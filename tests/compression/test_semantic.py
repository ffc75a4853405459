"""TCRA-LLM semantic compression: the exact greedy against a naive loop, batched rounds,
budgets on the target tokenizer, forced words, the similarity floor, bad settings."""

from __future__ import annotations

import os
import re
import zlib

import numpy as np
import pytest

from tokenwise.compression import TokenCounter, compress, get, names
from tokenwise.compression.semantic import FORCED_SCORE, SemanticCompressor
from tokenwise.errors import TokenwiseError

os.environ.setdefault("HF_HUB_OFFLINE", "1")

COUNTER = TokenCounter.resolve(None)
SENTENCE = "The council quietly approved a new park budget on Monday."
TEXT = (
    "The council quietly approved a new park budget on Monday. Heavy rain flooded the old "
    "river road near the school. The library opens in July with three bright reading "
    "rooms. Ticket prices for the football match rose again this week!\n"
    "Staff recommend a public hearing about water rates before the vote."
)


def tokens(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", text.lower())


def vector(token: str, dim: int = 16) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(token.encode()))
    return rng.normal(size=dim)


def bag(texts: list[str]) -> np.ndarray:
    """A transparent embedder: a sum of seeded random vectors of the tokens, plus a bias."""
    bias = np.full(16, 0.3)
    return np.stack([bias + sum((vector(t) for t in tokens(x)), np.zeros(16)) for x in texts])


class Recorder:
    """``bag`` that remembers every text it embedded."""

    def __init__(self):
        self.seen: list[str] = []

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.seen.extend(texts)
        return bag(texts)


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def naive_greedy(sentence: str) -> dict[int, float]:
    """The paper's greedy, one word at a time: word position -> distance when deleted
    (running maximum along the deletion order)."""
    words = tokens(sentence)
    origin = unit(bag([sentence])[0])
    alive = list(range(len(words)))
    scores, top = {}, 0.0
    while alive:
        dists = [1 - unit(bag([" ".join(words[i] for i in alive if i != c)])[0]) @ origin
                 for c in alive]
        best = int(np.argmin(dists))  # the first of equals, as a stable sort
        top = max(top, float(dists[best]))
        scores[alive.pop(best)] = top
    return scores


def test_registered_under_its_name():
    assert "semantic" in names()
    comp = get("semantic", embedder=bag)
    assert isinstance(comp, SemanticCompressor) and comp.name == "semantic"


def test_exact_greedy_matches_a_naive_loop():
    comp = SemanticCompressor(bag, round_fraction=0)
    scored = comp.score_words([SENTENCE])
    want = naive_greedy(SENTENCE)
    assert len(scored.scores) == len(want) == 11
    np.testing.assert_allclose(scored.scores, [want[i] for i in range(11)], atol=1e-5)


def test_batched_rounds_embed_linearly_many_texts_and_order_like_the_greedy():
    sentence = " ".join(names_of(40)) + "."
    n = len(tokens(sentence))
    exact, batched = Recorder(), Recorder()
    s_exact = SemanticCompressor(uncached(exact),
                                 round_fraction=0, max_sentence_words=64).score_words([sentence])
    s_batched = SemanticCompressor(uncached(batched), round_fraction=0.5,
                                   max_sentence_words=64).score_words([sentence])
    # Exact: every state and each of its deletions, n + (n - 1) + ... texts.
    assert len(exact.seen) == (n + 1) * (n + 2) // 2
    # Rounds halving the deletable words: about 2n texts, and log2(n) + 2 rounds.
    assert len(batched.seen) <= 2 * n + 2 * (np.log2(n) + 2)
    assert s_batched.rounds <= np.log2(n) + 2
    assert s_batched.embedded_texts == len(batched.seen)
    # The words deleted first and last agree with the exact greedy's.
    first = set(np.argsort(s_exact.scores, kind="stable")[:n // 4].tolist())
    first_b = set(np.argsort(s_batched.scores, kind="stable")[:n // 4].tolist())
    assert len(first & first_b) >= n // 8
    for s in (s_exact.scores, s_batched.scores):  # deletion order never lowers a score
        order = np.argsort(s, kind="stable")
        assert (np.diff(s[order]) >= 0).all()


def names_of(n: int) -> list[str]:
    """``n`` distinct letter-only words (a digit would split a word in two)."""
    return ["w" + chr(97 + i // 26) + chr(97 + i % 26) for i in range(n)]


def uncached(fn):
    """``fn`` as an embedder that keeps no rows, so every text reaches ``fn``."""
    from tokenwise.compression.extractive import FunctionEmbedder

    return FunctionEmbedder(fn, cache_size=0)


@pytest.mark.parametrize("rate", [0.2, 0.33, 0.5, 0.8])
def test_rate_met_on_the_target_tokenizer(rate):
    r = SemanticCompressor(bag).compress(TEXT, rate=rate, protect=False)
    assert r.method == "semantic"
    assert r.tokens_after == COUNTER.count(r.text)  # counted on the real output
    assert abs(r.tokens_after - rate * r.tokens_before) <= 0.01 * r.tokens_before + 1


def test_target_tokens_met_and_the_cut_follows_the_scores():
    comp = SemanticCompressor(bag)
    r = comp.compress(TEXT, target_tokens=40, protect=False)
    assert 39 <= r.tokens_after <= 40 and r.tokens_after == COUNTER.count(r.text)
    # Dropped words are the cheapest deletions: a kept word outscores the dropped ones, but
    # for the budget's fill-up of words that still fit.
    assert np.median(r.scores[r.keep]) > np.median(r.scores[~r.keep])


def test_forced_words_are_never_deleted_nor_missing_from_what_is_embedded():
    rec = Recorder()
    comp = SemanticCompressor(uncached(rec))
    text = "Visit https://example.org/park soon, said the council of the city. Rain fell."
    r = comp.compress(text, rate=0.8, force_tokens=["council"])
    assert "https://example.org/park" in r.text and "council" in r.text
    assert r.forced.sum() >= 2 and (r.scores[r.forced] == FORCED_SCORE).all()
    # Every text embedded is either the second sentence shortened or the first sentence
    # shortened around its forced words.
    second = [t for t in rec.seen if set(tokens(t)) <= {"rain", "fell", "."}]
    first = [t for t in rec.seen if t not in second]
    assert len(first) > 5 and all("https://example.org/park" in t and "council" in t
                                  for t in first)


def test_question_words_forced_only_when_asked():
    q = "Which budget did the council approve?"
    plain = SemanticCompressor(bag).compress(TEXT, rate=0.2, question=q, protect=False)
    asked = SemanticCompressor(bag, force_question_words=True).compress(
        TEXT, rate=0.2, question=q, protect=False)
    assert "budget" in asked.text and "council" in asked.text
    assert asked.forced.sum() > plain.forced.sum() == 0


def test_threshold_is_a_similarity_floor_per_sentence():
    comp = SemanticCompressor(bag, round_fraction=0)
    for floor in (0.98, 0.9, 0.7):
        r = comp.compress(SENTENCE, threshold=1 - floor, protect=False)
        sim = float(unit(bag([r.text])[0]) @ unit(bag([SENTENCE])[0]))
        assert sim >= floor - 1e-6
        # ... and one more deletion, the next in the greedy's order, would cross it.
        dropped_next = np.flatnonzero(r.keep)[np.argmin(r.scores[r.keep])]
        assert r.scores[dropped_next] >= 1 - floor
    assert comp.compress(SENTENCE, threshold=0.0, protect=False).text == SENTENCE


def test_long_sentences_are_cut_into_pieces():
    rec = Recorder()
    sentence = " ".join(names_of(30))
    scored = SemanticCompressor(uncached(rec), max_sentence_words=8
                                ).score_words([sentence])
    assert max(len(t.split()) for t in rec.seen) == 8
    assert scored.groups.tolist() == [i // 8 for i in range(30)]


def test_contexts_and_messages_keep_their_shape():
    comp = SemanticCompressor(bag)
    msgs = [{"role": "system", "content": "Answer from the notes."},
            {"role": "user", "content": TEXT}]
    r = comp.compress(msgs, rate=0.5, protect=False)
    assert r.messages[0] == msgs[0] and len(r.messages[1]["content"]) < len(TEXT)
    r = comp.compress([SENTENCE, "", "Rain fell on the road."], rate=0.5, protect=False)
    assert len(r.contexts) == 3 and r.contexts[1] == ""


@pytest.mark.parametrize("kwargs, match", [
    ({"round_fraction": 1.0}, r"round_fraction=1\.0: must be a number in \[0, 1\)"),
    ({"round_fraction": -0.1}, r"round_fraction=-0\.1"),
    ({"round_fraction": True}, r"round_fraction=True"),
    ({"round_fraction": "half"}, r"round_fraction='half'"),
    ({"max_sentence_words": 0}, r"max_sentence_words=0: must be an integer >= 1"),
    ({"max_sentence_words": 2.5}, r"max_sentence_words=2\.5"),
    ({"embedder": "tw-small"}, r"'tw-small' is a built-in causal language model.*accepts"),
    ({"embedder": 42}, r"42 is neither a function"),
    ({"embedder": "/no/such/dir"}, "not a local directory"),
    ({"embedder": bag, "model": bag}, "embedder= or model="),
])
def test_bad_options(kwargs, match):
    with pytest.raises(TokenwiseError, match=match):
        SemanticCompressor(**kwargs)


def test_bad_budgets_and_impossible_targets():
    comp = SemanticCompressor(bag)
    with pytest.raises(TokenwiseError, match=r"threshold=3\.0 is outside \[0\.0, 2\.0\]"):
        comp.compress(TEXT, threshold=3.0)
    with pytest.raises(TokenwiseError, match=r"rate=0 is outside \(0, 1\]"):
        compress(TEXT, method="semantic", embedder=bag, rate=0)
    with pytest.raises(TokenwiseError, match="give exactly one of"):
        compress(TEXT, method="semantic", embedder=bag)
    with pytest.raises(TokenwiseError, match=r"forced words .* alone take"):
        comp.compress(TEXT, target_tokens=3, force_tokens=["council", "library"],
                      protect=False)
    with pytest.raises(TokenwiseError, match="one row per text"):
        SemanticCompressor(lambda ts: np.ones((1, 3))).compress(TEXT, rate=0.5)


def test_default_minilm_drops_filler_before_content():
    comp = SemanticCompressor()  # the PyPI all-MiniLM-L6-v2, offline
    r = comp.compress("The council quietly approved the new park budget.", rate=0.6,
                      protect=False)
    assert abs(r.tokens_after - 0.6 * r.tokens_before) <= 0.01 * r.tokens_before + 1
    assert "park" in r.text and "budget" in r.text
    assert r.tokens_after < r.tokens_before
