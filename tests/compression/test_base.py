"""The shared pipeline: input forms, budgets, forcing, context filter, counting."""

from __future__ import annotations

import dataclasses
import json
import zlib

import numpy as np
import pytest
from tests.compression.helpers import generated_texts

from tokenwise.compression import (
    CompressionRequest,
    SelectiveCompressor,
    TokenCounter,
    WordScores,
    compress,
    words,
)
from tokenwise.compression.base import check_budget, check_force_tokens, parse_input
from tokenwise.errors import TokenwiseError


class Hashed(SelectiveCompressor):
    """Scores each word by a hash of its text and position: a model-free stand-in."""

    name = "hashed"
    threshold_range = (0.0, 1.0)

    def score_words(self, texts, *, question=None):
        starts, ends, seg = [], [], []
        for j, text in enumerate(texts):
            s, e = words.split_words(text)
            starts.append(s)
            ends.append(e)
            seg.append(np.full(len(s), j))
        s, e, g = (np.concatenate(x).astype(np.int64) for x in (starts, ends, seg))
        scores = np.array([zlib.crc32(f"{texts[j][a:b]}{a}".encode()) % 1000 / 1000
                           for j, a, b in zip(g.tolist(), s.tolist(), e.tolist(), strict=True)],
                          dtype=np.float32)
        return WordScores(s, e, g, scores, groups=np.arange(len(s)) // 40)


HASHED = Hashed()
COUNTER = TokenCounter.resolve(None)


@pytest.mark.parametrize("bad, match", [
    ({"rate": 0}, r"rate=0 is outside \(0, 1\]"),
    ({"rate": -0.2}, "rate=-0.2"),
    ({"rate": 1.5}, "rate=1.5"),
    ({"rate": True}, "rate=True"),
    ({"rate": "0.5"}, "rate='0.5'"),
    ({"target_tokens": 0}, "target_tokens=0"),
    ({"target_tokens": -3}, "target_tokens=-3"),
    ({"target_tokens": 2.5}, "target_tokens=2.5"),
    ({"rate": 0.5, "target_tokens": 10}, "exactly one of .* got rate=0.5, target_tokens=10"),
    ({}, "exactly one of .* got none"),
    ({"threshold": float("nan")}, "threshold=nan"),
])
def test_bad_budgets(bad, match):
    with pytest.raises(TokenwiseError, match=match):
        check_budget(**bad)
    with pytest.raises(TokenwiseError, match=match):
        HASHED.compress("some text here", **bad)


@pytest.mark.parametrize("bad, match", [
    ("", "empty"), ("  \n ", "empty"), ([], "cannot compress"), (["", " "], "every context"),
    (42, "cannot compress int"), ([{"role": "user"}], "message 0"),
    ([{"role": "user", "content": ["a"]}], "content of type list"),
    ([{"role": "system", "content": "x"}], "no message to compress"),
])
def test_bad_inputs(bad, match):
    with pytest.raises(TokenwiseError, match=match):
        HASHED.compress(bad, rate=0.5)


def test_bad_options():
    with pytest.raises(TokenwiseError, match="force token ' '"):
        HASHED.compress("a b c", rate=0.5, force_tokens=[" "])
    with pytest.raises(TokenwiseError, match="force token 3"):
        HASHED.compress("a b c", rate=0.5, force_tokens=[3])
    with pytest.raises(TokenwiseError, match=r"threshold=1\.5 is outside"):
        HASHED.compress("a b c", threshold=1.5)
    with pytest.raises(TokenwiseError, match="percentile='row'"):
        HASHED.compress("a b c", rate=0.5, percentile="row")
    with pytest.raises(TokenwiseError, match="context_rate=0"):
        HASHED.compress(["a b", "c d"], rate=0.5, context_filter=True, context_rate=0)
    assert check_force_tokens("\n") == ((), True)


@pytest.mark.parametrize("index", range(8))
def test_target_tokens_met_within_one_percent(index):
    text = generated_texts(8, seed=5, long_every=2)[index]
    before = COUNTER.count(text)
    for frac in (0.2, 0.33, 0.5, 0.8):
        target = max(20, int(before * frac))
        res = HASHED.compress(text, target_tokens=target, protect=False)
        assert res.tokens_after == COUNTER.count(res.text)  # counted on the real output
        assert res.tokens_after <= target
        if res.tokens_after < 0.99 * target:  # only when no dropped word fits any more
            s, e = words.split_words(text)
            for i in np.flatnonzero(~res.keep):
                trial = res.keep.copy()
                trial[i] = True
                assert COUNTER.count(words.render(text, s, e, trial)) > target


def test_rate_is_met_on_the_target_tokenizer(tiny_bert_dir):
    text = generated_texts(4, seed=9, long_every=1)[0]
    for target_model in (None, tiny_bert_dir):
        counter = TokenCounter.resolve(target_model)
        res = HASHED.compress(text, rate=0.33, target_model=target_model)
        assert res.tokens_before == counter.count(text)
        assert res.tokens_after == counter.count(res.text)
        assert abs(res.rate - 0.33) <= 0.0033, res.rate
        assert res.target_tokenizer == counter.name


def test_result_is_consistent():
    text = "The code of Brelix is 382. Visit https://a.org/x now!\nThe end."
    res = HASHED.compress(text, rate=0.5)
    s, e = words.split_words(text)
    assert res.words == [text[a:b] for a, b in zip(s.tolist(), e.tolist(), strict=True)]
    assert res.text == words.render(text, s, e, res.keep)
    assert {"select", "count", "total"} <= set(res.timings)
    back = json.loads(res.to_json())
    assert back["text"] == res.text and [w["keep"] for w in back["words"]] == res.keep.tolist()
    # Protected by default: the URL and the number survive; the rest is scored.
    assert {"382", "https://a.org/x"} <= set(res.kept_words)
    assert res.forced[res.words.index("382")]


def test_forcing_rules():
    text = "alpha beta 42 gamma x7 delta? epsilon, beta\nzeta eta theta iota kappa lambda mu"
    asking = Hashed()
    asking.force_question_words = True
    res = asking.compress(text, rate=0.7, protect=False, keep_digits=True,
                          force_tokens=["beta", "?"], question="Where is EPSILON now?")
    assert res.forced.tolist() == [w in ("beta", "?", "epsilon") or w.isdigit()
                                   for w in res.words]
    # Off by default: the question alone forces nothing.
    assert not HASHED.compress(text, rate=0.7, protect=False,
                               question="Where is EPSILON now?").forced.any()
    assert res.keep[res.forced].all()
    plain = HASHED.compress(text, rate=0.7, protect=False)
    assert not plain.forced.any()
    with pytest.raises(TokenwiseError, match="cannot be met"):
        HASHED.compress(text, target_tokens=2, protect=False, force_tokens=["alpha", "beta"])


def test_force_newline_keeps_every_line():
    text = "one two three\nfour five six\nseven eight nine\nten"
    res = HASHED.compress(text, rate=0.2, protect=False, force_tokens=["\n"])
    assert res.text.count("\n") == 3


def test_threshold_mode():
    text = "a b c d e f g h i j k l m n o p"
    res = HASHED.compress(text, threshold=0.5, protect=False)
    assert res.keep.tolist() == (res.scores >= 0.5).tolist()


def test_chunk_percentile_needs_chunks():
    class NoChunks(Hashed):
        def score_words(self, texts, *, question=None):
            out = super().score_words(texts)
            out.groups = None
            return out

    with pytest.raises(TokenwiseError, match="percentile='chunk' needs a chunked method"):
        NoChunks().compress("a b c d", rate=0.5, percentile="chunk")
    assert HASHED.compress("a b c d", rate=0.5, percentile="chunk").keep.any()


def test_messages_keep_roles_and_leave_system_and_tool_alone():
    msgs = [
        {"role": "system", "content": "You answer from the memo. Be brief and exact."},
        {"role": "user", "content": generated_texts(1, seed=3, long_every=1)[0]},
        {"role": "tool", "content": '{"result": "the tool output stays as it is"}'},
        {"role": "assistant", "content": "Noted: the memo has many codes in it."},
        {"role": "user", "content": "", "name": "x"},
    ]
    res = HASHED.compress(msgs, rate=0.4)
    assert [m["role"] for m in res.messages] == [m["role"] for m in msgs]
    assert res.messages[0] == msgs[0] and res.messages[2] == msgs[2] and res.messages[4] == msgs[4]
    assert len(res.messages[1]["content"]) < len(msgs[1]["content"])
    counts = COUNTER.count_each([m["content"] for m in msgs])
    assert res.tokens_before == counts.sum()
    assert res.tokens_after == COUNTER.count_each([m["content"] for m in res.messages]).sum()
    fixed = counts[[0, 2]].sum()
    assert abs((res.tokens_after - fixed) - 0.4 * (res.tokens_before - fixed)) <= 0.01 * (
        res.tokens_before - fixed) + 1
    assert set(res.segments.tolist()) == {1, 3}
    only_user = HASHED.compress(msgs, rate=0.4, roles=["user"])
    assert only_user.messages[3] == msgs[3]
    system_too = HASHED.compress(msgs, rate=0.4, roles=("system", "user"))
    assert system_too.messages[0] != msgs[0]


def test_contexts_and_the_context_filter():
    contexts = generated_texts(6, seed=11, long_every=3)
    plain = HASHED.compress(contexts, rate=0.5)
    assert len(plain.contexts) == 6
    assert plain.text == "\n\n".join(plain.contexts)
    res = HASHED.compress(contexts, rate=0.5, context_filter=True)
    scored = HASHED.score_words(contexts)
    means = np.array([scored.scores[scored.segment == j].mean() for j in range(6)])
    cut = np.percentile(means, int(100 * (1 - 0.75)))
    assert res.kept_segments == (means >= cut).tolist()
    assert len(res.contexts) == sum(res.kept_segments)
    assert not res.keep[~np.array(res.kept_segments)[res.segments]].any()
    # The budget is the whole input's: contexts dropped count against it, and when the
    # contexts left hold less than the budget, all their words stay.
    alive = np.array(res.kept_segments)[res.segments]
    assert res.rate <= 0.505
    assert res.rate >= 0.495 or res.keep[alive].all()
    big = HASHED.compress(contexts, rate=0.2, context_filter=True)
    assert abs(big.rate - 0.2) <= 0.002
    # A single text is split at blank lines for the filter.
    paragraphs = [c.replace("\n", " ") for c in contexts[:4]]
    para = HASHED.compress("\n\n".join(paragraphs), rate=0.5, context_filter=True)
    assert len(para.kept_segments) == 4


def test_parse_input_forms():
    assert parse_input("abc").kind == "text"
    p = parse_input("a\n\nb\n \n c", split_paragraphs=True)
    assert p.texts == ["a", "b", "c"] and p.split
    assert parse_input(["x", ""]).compressible == [True, False]


def test_compress_accepts_a_built_compressor():
    res = compress("alpha beta gamma delta", method=HASHED, rate=0.5, protect=False)
    assert res.method == "hashed"
    with pytest.raises(TokenwiseError, match="already a built compressor"):
        compress("alpha beta", method=HASHED, rate=0.5, batch_size=3)


@pytest.mark.parametrize("bad, match", [
    ({"rate": 0}, r"rate=0 is outside \(0, 1\]"),
    ({}, "exactly one of .* got none"),
    ({"rate": 0.5, "percentile": "row"}, "percentile='row'"),
    ({"rate": 0.5, "context_filter": True, "context_rate": 0}, "context_rate=0"),
    ({"threshold": 0.5, "context_filter": True}, "needs context_rate="),
    ({"rate": 0.5, "question": 3}, "question=3 must be a string"),
    ({"rate": 0.5, "force_tokens": [" "]}, "force token ' '"),
])
def test_a_request_is_checked_when_made(bad, match):
    with pytest.raises(TokenwiseError, match=match):
        CompressionRequest(**bad)


def test_a_request_or_its_keywords_compress_alike():
    text = generated_texts(1, seed=4, long_every=1)[0]
    fields = dict(target_tokens=700, keep_digits=True, force_tokens=("park", "\n"),
                  protect=False, question="Where is the park?")
    request = CompressionRequest(**fields)
    assert request.budget.target_tokens == 700
    assert request.phrases == ("park",) and request.keep_newlines
    by_request = HASHED.compress(text, request)
    by_keywords = HASHED.compress(text, **fields)
    assert by_request.text == by_keywords.text
    assert by_request.keep.tolist() == by_keywords.keep.tolist()
    assert compress(text, method=HASHED, **fields).text == by_request.text
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.rate = 0.5  # checked once: it cannot change after
    with pytest.raises(TokenwiseError, match="not both"):
        HASHED.compress(text, request, rate=0.5)
    # A method's own limits are checked as the request reaches it.
    with pytest.raises(TokenwiseError, match=r"threshold=1\.5 is outside \[0\.0, 1\.0\]"):
        HASHED.compress(text, CompressionRequest(threshold=1.5))
