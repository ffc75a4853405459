"""Paraphrase groups: batched sampling per question form, hooks, the model's own paraphrases."""

from __future__ import annotations

import pytest

from tokenwise.errors import TokenwiseError
from tokenwise.uncertainty import add_paraphrases, get, paraphrase_questions, sample_answers


@pytest.fixture(scope="module")
def fact_item():
    from tokenwise.testbed import FactWorld

    return FactWorld(seed=0).questions(("frequent",))[0]


def test_groups_from_a_list_and_a_hook(large, fact_item):
    s = sample_answers(large, fact_item.question, n=3, seed=0, max_new_tokens=12)
    forms = [f"Tell me: {fact_item.question}", f"I wonder: {fact_item.question}"]
    s2 = add_paraphrases(large, s, forms, n_per_question=2, seed=0, max_new_tokens=12)
    assert [g.question for g in s2.paraphrases] == [fact_item.question, *forms]
    assert all(len(g.answers) == 2 and g.answers[0].has_logprobs for g in s2.paraphrases)
    assert s2.texts == s.texts and not s.paraphrases
    again = add_paraphrases(large, s, lambda q, k: forms[:k], k=2, n_per_question=2, seed=0,
                            max_new_tokens=12)
    assert [g.texts for g in again.paraphrases] == [g.texts for g in s2.paraphrases]
    assert get("inv_entropy")(s2) >= 0.0
    alone = add_paraphrases(large, s, forms, include_original=False, n_per_question=1, seed=0)
    assert [g.question for g in alone.paraphrases] == forms


def test_model_paraphrases(large, fact_item):
    ps = paraphrase_questions(large, fact_item.question, k=3, seed=0)
    assert 1 <= len(ps) <= 3 and len(set(ps)) == len(ps)
    assert all(p.strip() and p != fact_item.question for p in ps)


def test_bad_input(large, fact_item):
    s = sample_answers(large, fact_item.question, n=2, seed=0, max_new_tokens=4)
    with pytest.raises(TokenwiseError, match="single string"):
        add_paraphrases(large, s, "one question")
    with pytest.raises(TokenwiseError, match="paraphrase 0"):
        add_paraphrases(large, s, [""])
    with pytest.raises(TokenwiseError, match="n_per_question"):
        add_paraphrases(large, s, ["x?"], n_per_question=0)
    with pytest.raises(TokenwiseError, match="no question forms"):
        add_paraphrases(large, s, [], include_original=False)
    with pytest.raises(TokenwiseError, match="SampleSet"):
        add_paraphrases(large, ["a"], ["x?"])
