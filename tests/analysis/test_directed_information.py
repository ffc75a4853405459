"""Directed information per token against closed forms (a bigram model) and brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.analysis.fakes import BigramLM

from tokenwise.analysis import directed_information, expected_needle_information
from tokenwise.errors import TokenwiseError


def test_bigram_model_takes_information_only_through_the_last_context_token():
    lm = BigramLM()
    t = lm.transition
    [d] = directed_information(lm, [3, 1, 4], [2, 5], [])
    # p(y_1 | c) = T[5, 3] (last context token), p(y_1 | start) = T[0, 3]; after y_1 the past
    # is the same in both readings, so DI is exactly 0.
    expected = [np.log(t[5, 3]) - np.log(t[0, 3]), 0.0, 0.0]
    np.testing.assert_allclose(d.per_token, expected, atol=1e-5)
    assert d.total == pytest.approx(sum(expected), abs=1e-5)


def test_a_prompt_between_context_and_answer_hides_the_context_from_a_bigram_model():
    [d] = directed_information(BigramLM(), "3 1", "2 5 5", "4")
    np.testing.assert_allclose(d.per_token, 0.0, atol=1e-6)
    assert d.context_tokens == 3 and not d.truncated


def test_long_inputs_use_windows_and_tokens_past_the_context_get_zero(small):
    context = "The code of Brelix is 382. " * 6
    answer = " 7+5=12 and 12+7=19, then 3+4=7 and so on until the end of the line."
    window = 40
    [d] = directed_information(small, answer, context, "Q:", window=window, stride=10)
    n_ctx = len(small.encode(context))
    assert d.truncated and d.context_seen.max() < n_ctx
    blind = d.context_seen == 0
    assert blind.any() and (~blind).any()
    # tokens whose window no longer holds any context read the same ids both times
    np.testing.assert_allclose(d.per_token[blind], 0.0, atol=1e-5)


def test_batched_scoring_matches_one_forward_per_reading(small):
    answers = [" 12", " 7+5=12", " 3"]
    contexts = ["1+2=3\n", "Memo:\nThe code of Brelix is 382.\n", "9+9=18\n"]
    prompts = ["7+5=", "", "1+2="]
    got = directed_information(small, answers, contexts, prompts, batch_size=2)
    for d, y, c, q in zip(got, answers, contexts, prompts, strict=True):
        ids_y, ids_c, ids_q = small.encode(y), small.encode(c), small.encode(q)
        for pre, lp in (([1, *ids_c, *ids_q], d.logprob_with), ([1, *ids_q], d.logprob_without)):
            seq = torch.tensor([[*pre, *ids_y]])
            logp = torch.log_softmax(small.forward(seq).logits[0].float(), -1)
            ref = [logp[len(pre) - 1 + k, t].item() for k, t in enumerate(ids_y)]
            np.testing.assert_allclose(lp, ref, atol=1e-4)
        assert d.total == pytest.approx(float(np.sum(d.logprob_with - d.logprob_without)))


def test_one_context_is_shared_by_every_answer_and_counts_must_match(small):
    got = directed_information(small, [" 1", " 2"], "1+0=1\n", "1+1=")
    assert len(got) == 2 and got[0].context_tokens == got[1].context_tokens
    with pytest.raises(TokenwiseError, match="2 given for 3 answers"):
        directed_information(small, [" 1", " 2", " 3"], ["a", "b"])
    with pytest.raises(TokenwiseError, match="answer 0 is empty"):
        directed_information(small, [""], "a")
    with pytest.raises(TokenwiseError, match="batch_size=0"):
        directed_information(small, " 1", "a", batch_size=0)
    with pytest.raises(TokenwiseError, match="token id 5000"):
        directed_information(small, [5000], "a")


def test_needle_ideal_is_log_900():
    ideal = expected_needle_information(3)
    np.testing.assert_allclose(ideal, [np.log(9), np.log(10), np.log(10)])
    assert ideal.sum() == pytest.approx(np.log(900))


@pytest.mark.parametrize(("n_start", "n_body", "first", "window", "stride"),
                         [(1, 50, 30, 12, 4), (0, 50, 0 + 5, 9, 8), (2, 200, 3, 40, 20),
                          (1, 20, 19, 21, 5), (1, 30, 10, 7, 3)])
def test_windows_score_each_answer_token_once_with_the_promised_left_context(
        n_start, n_body, first, window, stride):
    from tokenwise.analysis.directed_information import _plan_windows

    plans = _plan_windows(n_start, n_body, first, window, stride)
    scored = [t for _, lo, hi in plans for t in range(lo, hi)]
    assert scored == list(range(first, n_body))
    for begin, lo, hi in plans:
        assert n_start + hi - begin <= window  # the inputs fit
        if n_start + n_body > window:
            assert lo - begin >= min(lo, window - n_start - stride)
        else:
            assert begin == 0
