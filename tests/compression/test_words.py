"""Word spans, protected spans and the joining of kept words."""

from __future__ import annotations

import re

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenwise.compression import words

ALPHABET = st.sampled_from([*list("abcXYZ019 .,;!?()'\"-:/\n\téüß"), "中", "文", "の", "한", "😀"])
TEXTS = st.lists(ALPHABET, max_size=60).map("".join)
SETTINGS = settings(max_examples=150, deadline=None)


def _words(text):
    s, e = words.split_words(text)
    return [text[a:b] for a, b in zip(s.tolist(), e.tolist(), strict=True)]


def test_split_words_examples():
    assert _words("Don't stop: see https://x.org/a?b=1, then pay $3.50 (50%).") == [
        "Don't", "stop", ":", "see", "https://x.org/a?b=1", ",", "then", "pay", "$", "3.50",
        "(", "50%", ")", "."]
    # Han and kana one character each, Hangul runs whole, combining marks stay on letters.
    assert _words("北京の会議 한국어 문장 cafe\u0301 हिन्दी") == [
        "北", "京", "の", "会", "議", "한국어", "문장", "cafe\u0301", "हिन्दी"]


@SETTINGS
@given(TEXTS)
def test_words_tile_every_visible_character(text):
    s, e = words.split_words(text)
    assert np.all(s < e) and np.all(s[1:] >= e[:-1])  # non-empty, sorted, disjoint
    covered = np.zeros(len(text), dtype=bool)
    for a, b in zip(s.tolist(), e.tolist(), strict=True):
        assert not any(c.isspace() for c in text[a:b])
        covered[a:b] = True
    assert all(covered[i] for i, c in enumerate(text) if not c.isspace())


def test_protected_spans_find_structure():
    text = ('Run ```\nx = {"a": 1}\n``` or `pip install x`, see <b>docs</b> at '
            'https://d.org/x or mail a.b@c.org; "quoted words" cost 1,200.50 in 2024.')
    found = [text[a:b] for a, b in words.protected_spans(text)]
    assert found == ['```\nx = {"a": 1}\n```', "`pip install x`", "<b>", "</b>",
                     "https://d.org/x", "a.b@c.org", '"quoted words"', "1,200.50", "2024"]
    assert [text[a:b] for a, b in words.protected_spans(text, ("json_key",))] == ['"a":']


def test_protected_spans_bad_kind():
    try:
        words.protected_spans("x", ("nope",))
    except ValueError as exc:
        assert "nope" in str(exc) and "url" in str(exc)
    else:
        raise AssertionError("no error")


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 50), st.integers(1, 6)), max_size=8),
       st.lists(st.tuples(st.integers(0, 50), st.integers(1, 6)), max_size=12))
def test_overlaps_matches_naive(raw_spans, raw_words):
    # Build disjoint sorted spans the way protected_spans merges them.
    marks = np.zeros(60, dtype=bool)
    for a, n in raw_spans:
        marks[a:a + n] = True
    edges = np.flatnonzero(np.diff(np.concatenate([[0], marks.astype(int), [0]])))
    spans = edges.reshape(-1, 2)
    starts = np.array([a for a, _ in raw_words], dtype=np.int64)
    ends = starts + np.array([n for _, n in raw_words], dtype=np.int64)
    order = np.argsort(starts, kind="stable")
    starts, ends = starts[order], ends[order]
    got = words.overlaps(starts, ends, spans)
    naive = [bool(marks[a:b].any()) for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]
    assert got.tolist() == naive


def test_match_phrases_only_on_word_boundaries():
    text = "New York is new; New Yorker? no. York!"
    s, e = words.split_words(text)
    hit = words.match_phrases(text, s, e, ("New York", "York"))
    got = [w for w, h in zip(_words(text), hit.tolist(), strict=True) if h]
    assert got == ["New", "York", "York"]  # not "New Yorker"


def _normalise(text):
    # What keeping every word must give: each whitespace run becomes its line breaks
    # (at most two) or one space; no leading or trailing whitespace.
    def repl(m):
        n = m.group().count("\n")
        return "\n" * min(n, 2) if n else " "

    return re.sub(r"\s+", repl, text).strip()


@SETTINGS
@given(st.lists(st.sampled_from(list("abcXYZ019 -:/\n\t(éüß")), max_size=60).map("".join))
def test_render_all_kept_normalises_whitespace_only(text):
    s, e = words.split_words(text)
    assert words.render(text, s, e, np.ones(len(s), dtype=bool)) == _normalise(text)


@SETTINGS
@given(TEXTS, st.data())
def test_render_keeps_kept_words_in_order_and_nothing_else(text, data):
    s, e = words.split_words(text)
    keep = np.array(data.draw(st.lists(st.booleans(), min_size=len(s), max_size=len(s))),
                    dtype=bool)
    out = words.render(text, s, e, keep)
    kept = [text[a:b] for a, b, k in zip(s.tolist(), e.tolist(), keep.tolist(), strict=True)
            if k]
    assert out == words.render(text, s, e, keep, words.code_points(text))
    # The output is the kept words, in order, with only whitespace between them.
    rest = out
    for w in kept:
        i = rest.find(w)
        assert i >= 0 and not rest[:i].strip()
        rest = rest[i + len(w):]
    assert not rest.strip()
    assert out == out.strip()


def test_render_glues_punctuation_and_cjk():
    text = "Hello big world.\nNext: 北京 市 line (ok)"
    s, e = words.split_words(text)
    w = _words(text)
    keep = np.array([x in ("Hello", ".", "北", "市", "ok", ")") for x in w])
    assert words.render(text, s, e, keep) == "Hello.\n北市 ok)"
    assert words.render(text, s, e, np.zeros(len(s), bool)) == ""


def test_strip_spans_and_cjk_tests():
    cps = words.code_points("  ab\u3000")
    assert [x.tolist() for x in words.strip_spans(cps, np.array([0]), np.array([5]))] == [[2],
                                                                                          [4]]
    assert words.is_cjk(words.code_points("中の한a")).tolist() == [True, True, False, False]
    assert words.is_han(words.code_points("中の")).tolist() == [True, False]


def test_render_skips_words_without_text():
    text = "a b"
    starts, ends = np.array([0, 1, 2]), np.array([1, 1, 3])  # an empty word between
    assert words.render(text, starts, ends, np.ones(3, dtype=bool)) == "a b"


# Any Unicode: every script, CJK (extensions included), marks, emoji, whitespace of all kinds.
UNICODE_TEXTS = st.text(
    st.one_of(st.characters(exclude_categories=("Cs",)),
              st.sampled_from([*"中文北京天安门の日本語テキスト한국어", *"。、！？「」（）：",
                               "\U00020000",
                               *" \t\n\r\u3000\u00a0\u2028", *".,;:!?()'\"-/@#$%&*_"])),
    max_size=60)


@SETTINGS
@given(UNICODE_TEXTS)
def test_words_tile_any_unicode_text(text):
    s, e = words.split_words(text)
    assert np.all(s < e) and np.all(s[1:] >= e[:-1])  # non-empty, sorted, disjoint
    covered = np.zeros(len(text), dtype=bool)
    for a, b in zip(s.tolist(), e.tolist(), strict=True):
        covered[a:b] = True
    # Between words there is only whitespace.
    assert all(c.isspace() for i, c in enumerate(text) if not covered[i])


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 6)), max_size=12))
def test_disjoint_spans_never_overlap_and_only_shrink(raw):
    starts = np.array(sorted(a for a, _ in raw), dtype=np.int64)
    ends = starts + np.array([n for _, n in raw], dtype=np.int64)
    s, e = words.disjoint_spans(starts, ends)
    assert np.all(s <= e)
    solid = np.flatnonzero(s < e)  # the spans that still hold text never overlap
    assert np.all(s[solid][1:] >= e[solid][:-1])
    # An empty span stays as it was.
    assert all((a, b) == (a0, b0) for a0, b0, a, b in
               zip(starts.tolist(), ends.tolist(), s.tolist(), e.tolist(), strict=True)
               if a0 == b0)
    # Each span keeps only characters it had, and together they cover what the input did.
    assert all(a0 <= a and (b <= b0 or a == b) for a0, b0, a, b in
               zip(starts.tolist(), ends.tolist(), s.tolist(), e.tolist(), strict=True))
    before = {i for a, b in zip(starts.tolist(), ends.tolist(), strict=True) for i in range(a, b)}
    after = {i for a, b in zip(s.tolist(), e.tolist(), strict=True) for i in range(a, b)}
    assert before == after
