"""Selective Context: unit self-information against a naive loop; long texts do not crash."""

from __future__ import annotations

import numpy as np
import pytest
from tests.compression.test_perplexity import MEMO, long_text, naive_surprisal

from tokenwise.compression import words
from tokenwise.compression.perplexity import tokenize_spans
from tokenwise.compression.selective_context import (
    SelectiveContextCompressor,
    phrase_units,
    sentence_units,
)
from tokenwise.errors import TokenwiseError


@pytest.fixture(scope="module")
def lm():
    from tokenwise.models import load

    return load("tw-small")


def naive_unit_scores(lm, text, unit_of):
    """Mean self-information of the tokens overlapping each unit's words, by loops."""
    ids, ts, te = tokenize_spans(lm, text)
    info = naive_surprisal(lm, ids.tolist())
    ws, we = words.split_words(text)
    out = np.zeros(len(ws))
    for u in np.unique(unit_of):
        members = np.flatnonzero(unit_of == u)
        a, b = ws[members[0]], we[members[-1]]
        hit = [i for i in range(len(ids)) if ts[i] < b and te[i] > a]
        out[members] = info[hit].mean()
    return out


def test_sentence_and_phrase_units():
    t = "Dr. Ann came. She said: the plan of the city is fine!\nNext line"
    s, e = words.split_words(t)
    got = [t[a:b] for a, b in zip(s, e, strict=True)]
    sent = sentence_units(t, s, e)
    first_of = {int(u): got[int(np.flatnonzero(sent == u)[0])] for u in np.unique(sent)}
    assert list(first_of.values()) == ["Dr", "Ann", "She", "Next"]
    phr = phrase_units(t, s, e)
    groups = [" ".join(got[i] for i in np.flatnonzero(phr == u)) for u in np.unique(phr)]
    assert groups == ["Dr .", "Ann came .", "She said :", "the plan", "of the city",
                      "is fine !", "Next line"]


@pytest.mark.parametrize("unit", ["phrase", "sentence"])
def test_unit_scores_match_naive_loop(lm, unit):
    comp = SelectiveContextCompressor(lm, unit=unit)
    got = comp.score_words([MEMO]).scores
    s, e = words.split_words(MEMO)
    unit_of = (phrase_units if unit == "phrase" else sentence_units)(MEMO, s, e)
    np.testing.assert_allclose(got, naive_unit_scores(lm, MEMO, unit_of), rtol=1e-4, atol=2e-4)


def test_sentences_dropped_whole_lowest_first(lm):
    comp = SelectiveContextCompressor(lm, unit="sentence")
    r = comp.compress(MEMO, rate=0.45, protect=False)
    s, e = words.split_words(MEMO)
    sent = sentence_units(MEMO, s, e)
    per_sent = {int(u): r.keep[sent == u] for u in np.unique(sent)}
    partial = [u for u, k in per_sent.items() if 0 < k.sum() < len(k)]
    assert len(partial) <= 1  # only the sentence the budget cuts through
    kept_min = min(r.scores[sent == u][0] for u, k in per_sent.items() if k.all())
    dropped = [r.scores[sent == u][0] for u, k in per_sent.items() if not k.any()]
    assert dropped and max(dropped) <= kept_min


def test_longer_than_the_window_does_not_crash(lm):
    text = long_text(40)
    assert len(lm.encode(text)) > 2 * lm.context_length
    r = SelectiveContextCompressor(lm).compress(text, rate=0.3, protect=False)
    assert abs(r.tokens_after - 0.3 * r.tokens_before) <= 0.01 * r.tokens_before + 1


def test_bad_unit(lm):
    with pytest.raises(TokenwiseError, match="unit"):
        SelectiveContextCompressor(lm, unit="paragraph")


def test_question_keywords_forced_when_asked(lm):
    q = "What is the code of Brelix?"
    r = SelectiveContextCompressor(lm, force_question_words=True).compress(
        MEMO, rate=0.6, question=q, protect=False)
    assert {w for w, f in zip(r.words, r.forced, strict=True) if f} == {"code", "Brelix"}
    r = SelectiveContextCompressor(lm).compress(MEMO, rate=0.6, question=q, protect=False)
    assert not r.forced.any()
