"""SampleSet, Answer and sample_answers: validation, the stats cache, sampling on a real model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tokenwise.errors import TokenwiseError
from tokenwise.uncertainty import (
    Answer,
    ExactEquivalence,
    FunctionEmbedder,
    ParaphraseGroup,
    SampleSet,
    sample_answers,
)


def test_answer_likelihoods_and_strip():
    a = Answer("  a doctor \n", token_logprobs=(-0.5, -1.5, 0.0))
    assert a.text == "a doctor"
    assert a.log_likelihood == pytest.approx(-2.0)
    assert a.mean_logprob == pytest.approx(-2.0 / 3)
    assert a.n_tokens == 3


@pytest.mark.parametrize("bad", [(float("nan"),), (0.5,), ("x",), (True,)])
def test_answer_rejects_bad_logprobs(bad):
    with pytest.raises(TokenwiseError, match="token_logprobs"):
        Answer("x", token_logprobs=bad)


def test_answer_allows_minus_inf_and_rejects_bad_entropies():
    assert Answer("x", token_logprobs=(-math.inf,)).log_likelihood == -math.inf
    with pytest.raises(TokenwiseError, match="token_entropies"):
        Answer("x", token_logprobs=(-1.0,), token_entropies=(float("nan"),))
    with pytest.raises(TokenwiseError, match="1 token_entropies for 2"):
        Answer("x", token_logprobs=(-1.0, -1.0), token_entropies=(1.0,))
    with pytest.raises(TokenwiseError, match="empty token_logprobs"):
        Answer("x", token_logprobs=())


def test_answer_without_logprobs_says_so():
    with pytest.raises(TokenwiseError, match="no token log-probabilities"):
        _ = Answer("x").log_likelihood


@pytest.mark.parametrize("answers", [[], ["only one"]])
def test_sample_set_needs_two_answers(answers):
    with pytest.raises(TokenwiseError, match="n >= 2"):
        SampleSet.from_texts("Q?", answers)


@pytest.mark.parametrize("t", [0, -1.0, float("nan"), float("inf")])
def test_sample_set_rejects_bad_temperature(t):
    with pytest.raises(TokenwiseError, match="temperature"):
        SampleSet.from_texts("Q?", ["a", "b"], temperature=t)


def test_sample_set_rejects_mixed_logprobs_and_bad_inputs():
    with pytest.raises(TokenwiseError, match=r"answers \[1\] have no token log-probabilities"):
        SampleSet("Q?", (Answer("a", (-1.0,)), Answer("b")))
    with pytest.raises(TokenwiseError, match="question"):
        SampleSet.from_texts("  ", ["a", "b"])
    with pytest.raises(TokenwiseError, match="single string"):
        SampleSet.from_texts("Q?", "ab")
    with pytest.raises(TokenwiseError, match="2 logprobs for 3 answers"):
        SampleSet.from_texts("Q?", ["a", "b", "c"], logprobs=[-1.0, -2.0])
    with pytest.raises(TokenwiseError, match="token_logprobs"):
        SampleSet.from_texts("Q?", ["a", "b"], logprobs=[-1.0, float("nan")])


def test_empty_answers_are_kept_as_no_answer():
    s = SampleSet.from_texts("Q?", ["", "  ", "x"], logprobs=[-0.1, -0.2, -0.3])
    assert s.texts == ("", "", "x")
    assert s.stats.clusters(ExactEquivalence()).ids == (0, 0, 1)


def test_from_texts_logprob_forms():
    s = SampleSet.from_texts("Q?", ["a", "b"], logprobs=[[-0.1, -0.2], -3.0], reference="a",
                             temperature=1.0)
    np.testing.assert_allclose(s.log_likelihoods(), [-0.3, -3.0])
    np.testing.assert_allclose(s.log_likelihoods(length_normalised=True), [-0.15, -3.0])
    assert s.reference == Answer("a") and s.temperature == 1.0


def test_stats_cache_computes_once_per_object():
    calls = []

    def fn(q, a, b):
        calls.append((a, b))
        return a == b

    from tokenwise.uncertainty import FunctionEquivalence

    eq = FunctionEquivalence(fn)
    s = SampleSet.from_texts("Q?", ["a", "b", "c"])
    first = s.stats.clusters(eq)
    n_calls = len(calls)
    assert s.stats.clusters(eq) is first and len(calls) == n_calls
    other = FunctionEquivalence(fn)  # another object: its own clustering
    s.stats.clusters(other)
    assert len(calls) == 2 * n_calls
    seen = []
    emb = FunctionEmbedder(lambda ts: seen.extend(ts) or [[1.0, len(t)] for t in ts])
    v1 = s.stats.embeddings(emb)
    assert s.stats.embeddings(emb) is v1 and seen == ["a", "b", "c"]
    np.testing.assert_allclose(np.linalg.norm(v1, axis=1), 1.0)


def test_stats_texts_for_questions_and_all():
    groups = [ParaphraseGroup("Q?", ("x", "y")), ParaphraseGroup("Q again?", ("z",))]
    s = SampleSet.from_texts("Q?", ["a", "b"], paraphrases=groups)
    emb = FunctionEmbedder(lambda ts: [[1.0, float(len(t))] for t in ts])
    assert s.stats.embeddings(emb, "questions").shape == (3, 2)
    assert s.stats.embeddings(emb, "all").shape == (5, 2)
    with pytest.raises(TokenwiseError, match="which="):
        s.stats.embeddings(emb, "nope")


def test_paraphrase_group_validation():
    with pytest.raises(TokenwiseError, match="no answers"):
        ParaphraseGroup("Q?", ())
    with pytest.raises(TokenwiseError, match="paraphrase question"):
        ParaphraseGroup("", ("a",))


def test_sample_answers_on_tw_large(large):
    s = sample_answers(large, "What is 12+7?", n=4, seed=3, max_new_tokens=6)
    assert s.n == 4 and s.temperature == 1.0 and s.prompt == "Q: What is 12+7?\nA:"
    assert s.reference is not None and s.reference.has_logprobs
    for a in s.answers:
        assert "\n" not in a.text and a.has_logprobs
        assert a.n_tokens == len(a.token_entropies) >= 1
        assert all(lp <= 0 for lp in a.token_logprobs)
    # seeded: the same answers one at a time
    again = sample_answers(large, "What is 12+7?", n=4, seed=3, max_new_tokens=6, batch=False)
    assert again.texts == s.texts
    np.testing.assert_allclose(again.log_likelihoods(), s.log_likelihoods(), atol=1e-4)


def test_sample_answers_logprobs_match_scoring(large, testbed):
    # the recorded log-likelihood is the model's own probability of the answer tokens,
    # the newline that ended it included
    import torch

    item = testbed.fact_world.questions(("frequent",))[0]
    s = sample_answers(large, item.question, n=2, seed=0, max_new_tokens=16)
    assert s.prompt == item.prompt
    a = s.answers[0]
    assert a.finish_reason == "stop"
    prompt_ids = large.encode(s.prompt, add_bos=True)
    gen = large.encode(s.prompt + " " + a.text + "\n", add_bos=True)[len(prompt_ids):]
    ids = torch.tensor([prompt_ids + gen])
    logits = large.forward(ids).logits[0, len(prompt_ids) - 1:-1].float()  # (T, V)
    lp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(gen)[:, None]).sum().item()
    assert len(gen) == a.n_tokens  # the answer re-encodes to the tokens that were sampled
    assert lp == pytest.approx(a.log_likelihood, abs=1e-3)


def test_sample_answers_rejects_bad_arguments(large):
    with pytest.raises(TokenwiseError, match="n=1"):
        sample_answers(large, "Q?", n=1)
    with pytest.raises(TokenwiseError, match="temperature=0"):
        sample_answers(large, "Q?", temperature=0)
    with pytest.raises(TokenwiseError, match="reference_temperature"):
        sample_answers(large, "Q?", reference_temperature=-1)
    with pytest.raises(TokenwiseError, match=r"\{question\}"):
        sample_answers(large, "Q?", prompt_template="no slot")
    with pytest.raises(TokenwiseError, match="question"):
        sample_answers(large, " ")


def test_a_seed_whose_answers_would_pass_torchs_range_names_the_given_seed():
    from tokenwise.generation.engine import MAX_SEED
    from tokenwise.uncertainty import sample_answers

    with pytest.raises(TokenwiseError, match=rf"seed={MAX_SEED - 2}: with n=3 .* at most "
                                             rf"{MAX_SEED - 3}"):
        sample_answers("tw-small", "What is 2+3?", n=3, seed=MAX_SEED - 2, max_new_tokens=2)


def test_the_bare_template_takes_the_prompt_verbatim(monkeypatch):
    # the server passes its rendered chat (ending in a newline, carrying template ids)
    import tokenwise.uncertainty.samples as samples_module
    from tokenwise.uncertainty import sample_answers

    seen = []
    real = samples_module._generate_answers

    def spy(lm, prompt, *args, **kwargs):
        seen.append(prompt)
        return real(lm, prompt, *args, **kwargs)

    monkeypatch.setattr(samples_module, "_generate_answers", spy)
    prompt = "Q: What is 2+3?\nA: \n"
    sample_answers("tw-small", prompt, n=2, seed=0, max_new_tokens=2,
                   prompt_template="{question}")
    assert seen and all(p is prompt for p in seen)
