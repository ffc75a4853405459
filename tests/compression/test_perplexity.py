"""Perplexity compression (LLMLingua / LongLLMLingua) against naive references on tw-small."""

from __future__ import annotations

import functools
import random
import threading

import numpy as np
import pytest
import torch
from tests.compression.helpers import run_in_threads

from tokenwise.compression import words
from tokenwise.compression.perplexity import (
    PerplexityCompressor,
    pool_words,
    tokenize_spans,
    word_token_ranges,
)
from tokenwise.errors import TokenwiseError

MEMO = ("Memo:\nThe code of Tavoun is 917.\nThe code of Brelix is 382.\n"
        "The code of Shedroth is 488.\nThe code of Doulin is 599.\n")
QUESTION = "What is the code of Brelix?"


@pytest.fixture(scope="module")
def lm():
    from tokenwise.models import load

    return load("tw-small")


def naive_surprisal(lm, ids, prefix=()):
    """One full forward pass through the HF model, no windows."""
    seq = torch.tensor([[lm.bos_token_id, *prefix, *ids]])
    with torch.no_grad():
        logp = torch.log_softmax(lm.hf_model(seq).logits[0].float(), -1)  # (T, V)
    targets = seq[0, 1:]
    per = -logp[:-1].gather(-1, targets[:, None])[:, 0]
    return per[len(prefix):].double().numpy()


def naive_word_scores(lm, text, prefix=(), how="mean"):
    """Word scores by an explicit loop: tokens whose span overlaps the word."""
    ids, ts, te = tokenize_spans(lm, text)
    loss = naive_surprisal(lm, ids.tolist(), prefix)
    ws, we = words.split_words(text)
    out = []
    for a, b in zip(ws.tolist(), we.tolist(), strict=True):
        hit = [i for i in range(len(ids)) if ts[i] < b and te[i] > a]
        vals = loss[hit]
        out.append({"mean": vals.mean(), "sum": vals.sum(), "max": vals.max()}[how])
    return np.asarray(out)


def long_text(n_lines=40, seed=0):
    from tokenwise.testbed import NeedleWorld

    rng = random.Random(seed)
    world = NeedleWorld(0)
    return "".join(world.item(rng, 7).context for _ in range(n_lines // 8))


@pytest.mark.parametrize("how", ["mean", "sum", "max"])
def test_word_pooling_matches_naive_loop(lm, how):
    comp = PerplexityCompressor(lm, token_to_word=how, iterative_size=None)
    got = comp.score_words([MEMO]).scores
    np.testing.assert_allclose(got, naive_word_scores(lm, MEMO, how=how), rtol=1e-4, atol=1e-4)


def test_word_token_ranges_cover_overlaps():
    ts, te = np.array([0, 3, 4, 8]), np.array([3, 4, 8, 9])
    lo, hi = word_token_ranges(ts, te, np.array([0, 4, 8]), np.array([3, 6, 9]))
    assert lo.tolist() == [0, 2, 3] and hi.tolist() == [1, 3, 4]
    assert pool_words(np.array([1.0, 2, 3, 4]), lo, hi, "mean").tolist() == [1.0, 3.0, 4.0]


def test_contrastive_score_is_loss_minus_conditional_loss(lm):
    comp = PerplexityCompressor(lm, iterative_size=None)
    got = comp.score_words([MEMO], question=QUESTION).scores
    q = lm.encode(QUESTION + "\n")
    expected = naive_word_scores(lm, MEMO) - naive_word_scores(lm, MEMO, prefix=q)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=2e-4)
    plain = PerplexityCompressor(lm, iterative_size=None, question_mode="none")
    np.testing.assert_allclose(plain.score_words([MEMO], question=QUESTION).scores,
                               naive_word_scores(lm, MEMO), rtol=1e-4, atol=2e-4)


def test_one_window_iteration_equals_one_pass(lm):
    one = PerplexityCompressor(lm, iterative_size=None).compress(MEMO, rate=0.4, protect=False)
    it = PerplexityCompressor(lm, iterative_size=120).compress(MEMO, rate=0.4, protect=False)
    np.testing.assert_allclose(it.scores, one.scores, atol=1e-5)
    assert it.text == one.text


def test_iterative_windows_condition_on_kept_words(lm):
    """Window 2 is scored given the words window 1 kept: rebuilt here by hand."""
    size = 20
    comp = PerplexityCompressor(lm, iterative_size=size)
    got = comp.compress(MEMO, rate=0.5, protect=False).scores
    ids, ts, te = tokenize_spans(lm, MEMO)
    ws, we = words.split_words(MEMO)
    lo, hi = word_token_ranges(ts, te, ws, we)
    w1 = int(np.searchsorted(lo, lo[0] + size, side="left"))
    first = naive_word_scores(lm, MEMO)[:w1]
    np.testing.assert_allclose(got[:w1], first, rtol=1e-4, atol=2e-4)
    # Window 1's kept words: the top half of its tokens by score.
    sizes = hi[:w1] - lo[:w1]
    keep, used = np.zeros(w1, bool), 0
    for i in np.argsort(-first, kind="stable"):
        if used >= 0.5 * sizes.sum():
            break
        keep[i], used = True, used + sizes[i]
    kept_tok = sorted({t for i in np.flatnonzero(keep) for t in range(lo[i], hi[i])})
    prefix = ids[kept_tok].tolist()
    w2 = int(np.searchsorted(lo, lo[w1] + size, side="left"))
    window_ids = ids[lo[w1]:hi[w2 - 1]].tolist()
    loss = naive_surprisal(lm, window_ids, prefix)
    expected = pool_words(loss, lo[w1:w2] - lo[w1], hi[w1:w2] - lo[w1], "mean")
    np.testing.assert_allclose(got[w1:w2], expected, rtol=1e-4, atol=2e-4)


def test_rate_and_target_met_past_the_context_window(lm):
    text = long_text(40)
    comp = PerplexityCompressor(lm)
    r = comp.compress(text, rate=0.3, protect=False)
    assert r.tokens_before > 2 * lm.context_length
    assert abs(r.tokens_after - 0.3 * r.tokens_before) <= 0.01 * r.tokens_before + 1
    r = comp.compress(text, target_tokens=150, protect=False)
    assert 148 <= r.tokens_after <= 150


def test_documents_ranked_by_question_perplexity(lm):
    docs = [line for line in MEMO.split("\n")[1:] if line]
    comp = PerplexityCompressor(lm, iterative_size=None, context_budget=1.0)
    r = comp.compress(docs, rate=0.5, question=QUESTION, protect=False)
    tail = lm.encode("\n" + QUESTION)
    ppl = [naive_surprisal(lm, tail, lm.encode(d)).mean() for d in docs]
    assert comp.last_document_order == np.argsort(ppl, kind="stable").tolist()
    # Only the best documents get budget: their words outrank every word of the others.
    n_tok = [len(lm.encode(d)) for d in docs]
    taken, used = [], 0
    for d in comp.last_document_order:
        taken.append(d)
        used += n_tok[d]
        if used >= 0.5 * sum(n_tok):
            break
    in_taken = np.isin(r.segments, taken)
    assert r.scores[in_taken].min() > r.scores[~in_taken].max()
    # (which words survive is then the shared budget cut's business, tested with it)


def test_documents_without_question_rank_by_own_perplexity(lm):
    docs = ["The code of Tavoun is 917.", "zq xw vv kk qq zz", "The code of Brelix is 382."]
    comp = PerplexityCompressor(lm, iterative_size=None)
    comp.compress(docs, rate=0.5, protect=False)
    ppl = [naive_surprisal(lm, lm.encode(d)).mean() for d in docs]
    assert comp.last_document_order == np.argsort(-np.asarray(ppl), kind="stable").tolist()


def test_threshold_mode_keeps_scores_at_or_above(lm):
    comp = PerplexityCompressor(lm, iterative_size=None)
    r = comp.compress(MEMO, threshold=2.0, protect=False)
    assert (r.keep == ((r.scores >= 2.0) | r.forced)).all()


def test_messages_keep_roles_and_system(lm):
    msgs = [{"role": "system", "content": "Answer with the code."},
            {"role": "user", "content": MEMO}]
    r = PerplexityCompressor(lm).compress(msgs, rate=0.5, protect=False)
    assert r.messages[0] == msgs[0] and r.messages[1]["role"] == "user"
    assert len(r.messages[1]["content"]) < len(MEMO)


@pytest.mark.parametrize("kwargs, match", [
    ({"question_mode": "both"}, "question_mode"),
    ({"token_to_word": "first"}, "token_to_word"),
    ({"context_budget": 0.5}, "context_budget"),
    ({"iterative_size": 0}, "iterative_size"),
    ({"window": 1}, "window"),
])
def test_bad_options(lm, kwargs, match):
    with pytest.raises(TokenwiseError, match=match):
        PerplexityCompressor(lm, **kwargs)


def test_bad_budget_and_empty_text(lm):
    comp = PerplexityCompressor(lm)
    with pytest.raises(TokenwiseError, match="rate"):
        comp.compress(MEMO, rate=0.0)
    with pytest.raises(TokenwiseError, match="target_tokens"):
        comp.compress(MEMO, target_tokens=-3)
    with pytest.raises(TokenwiseError, match="empty"):
        comp.compress("   ", rate=0.5)


def test_question_words_forced_only_when_asked(lm):
    r = PerplexityCompressor(lm, iterative_size=None).compress(
        MEMO, rate=0.3, question=QUESTION, protect=False)
    assert not r.forced.any()
    r = PerplexityCompressor(lm, iterative_size=None, force_question_words=True).compress(
        MEMO, rate=0.6, question=QUESTION, protect=False)
    forced = {w for w, f in zip(r.words, r.forced, strict=True) if f}
    assert forced == {"code", "Brelix"}  # "The" is a function word, "What" a wh-word


def test_one_shared_compressor_serves_two_threads_as_each_alone(lm, monkeypatch):
    """Each call's budget and keep rules stay its own while another call runs beside it."""
    comp = PerplexityCompressor(lm, iterative_size=16)
    texts = [MEMO, long_text(8, seed=3)]
    settings = [dict(rate=0.3, keep_digits=True, question=QUESTION, protect=False),
                dict(target_tokens=60, force_tokens=["code", "\n"], protect=False,
                     question="Which code is the largest?")]
    alone = [comp.compress(t, **kw) for t, kw in zip(texts, settings, strict=True)]

    # Both calls reach the model (the question's encoding) before either goes on, so each
    # scores while the other's settings are in force.
    meet = threading.Barrier(2, timeout=30)
    armed = threading.local()
    encode = lm.encode

    def encode_then_meet(*args, **kwargs):
        if getattr(armed, "on", False):
            armed.on = False
            meet.wait()
        return encode(*args, **kwargs)

    monkeypatch.setattr(lm, "encode", encode_then_meet)

    def call(i):
        armed.on = True
        return comp.compress(texts[i], **settings[i])

    together = run_in_threads([functools.partial(call, i) for i in range(2)])
    for a, b in zip(alone, together, strict=True):
        assert b.text == a.text
        np.testing.assert_array_equal(b.scores, a.scores)
        assert b.keep.tolist() == a.keep.tolist() and b.forced.tolist() == a.forced.tolist()


def test_a_tokenizer_without_a_start_token_compresses_with_finite_scores(tmp_path):
    from tests.models.helpers import load_tiny_chat_model

    from tokenwise.compression.perplexity import PerplexityCompressor, fill_unscored
    from tokenwise.compression.selective_context import SelectiveContextCompressor

    lm = load_tiny_chat_model(tmp_path)
    assert lm.start_ids == ()
    text = "hello the world, the world said hello"
    for comp in (PerplexityCompressor(lm), SelectiveContextCompressor(lm, unit="word")):
        assert np.isfinite(comp.score_words([text]).scores).all()  # the first word too
        result = comp.compress(text, rate=0.5, protect=False)
        assert 0 < result.tokens_after < result.tokens_before
    np.testing.assert_array_equal(fill_unscored(np.array([np.nan, 2.0, 1.0])), [2.0, 2.0, 1.0])
