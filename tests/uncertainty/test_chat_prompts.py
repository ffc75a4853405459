"""Chat prompts: the model reads its chat template, the estimators read the plain question."""

from __future__ import annotations

import pytest

import tokenwise.generation
from tokenwise.errors import TokenwiseError
from tokenwise.models.chat_template import encode_template
from tokenwise.models.language_model import EncodedText
from tokenwise.uncertainty import (
    FunctionEmbedder,
    SampleSet,
    add_paraphrases,
    sample_answers,
)
from tokenwise.uncertainty.samples import _format_prompt

SYSTEM = {"role": "system", "content": "Answer in one word."}
QUESTION = "Where was Ana born?"
MESSAGES = [SYSTEM, {"role": "user", "content": f" {QUESTION} "}]


@pytest.fixture(scope="module")
def chat_lm(tmp_path_factory):
    from tests.models.helpers import load_tiny_chat_model

    return load_tiny_chat_model(tmp_path_factory.mktemp("chat"))


def _server_prompt(lm, messages):
    """The prompt the server reads for ``messages`` (its own renderer)."""
    return encode_template(lm.tokenizer, [dict(m) for m in messages])


def test_the_bare_template_keeps_a_rendered_chats_token_ids():
    rendered = EncodedText("<|im_start|>user\nhi", [1, 2])
    out = _format_prompt("{question}", rendered)
    assert out.ids == (1, 2) and out == rendered
    with pytest.raises(TokenwiseError, match=r"rendered chat prompt .* allowed only the bare"):
        _format_prompt("Q: {question}\nA:", rendered)


def test_messages_are_rendered_with_the_template_and_the_question_stored_alone(chat_lm):
    s = sample_answers(chat_lm, messages=MESSAGES, n=2, seed=0, max_new_tokens=4)
    assert s.question == QUESTION
    assert s.prompt.ids == _server_prompt(chat_lm, MESSAGES).ids  # markers as control tokens
    assert [m["content"] for m in s.messages] == [SYSTEM["content"], f" {QUESTION} "]
    # the model read exactly what the server's rendered prompt gives it
    direct = sample_answers(chat_lm, _server_prompt(chat_lm, MESSAGES), n=2, seed=0,
                            max_new_tokens=4, prompt_template="{question}")
    assert s.texts == direct.texts
    assert [a.token_logprobs for a in s.answers] == [a.token_logprobs for a in direct.answers]


def test_a_prompt_rendered_elsewhere_goes_with_the_plain_question(chat_lm):
    rendered = _server_prompt(chat_lm, MESSAGES)
    s = sample_answers(chat_lm, QUESTION, prompt=rendered, n=2, seed=0, max_new_tokens=4)
    assert s.question == QUESTION and s.prompt is rendered and s.messages is None


def test_question_side_statistics_read_the_plain_question(chat_lm):
    s = sample_answers(chat_lm, messages=MESSAGES, n=2, seed=0, max_new_tokens=4)
    embedded: list[str] = []
    s.stats.embeddings(FunctionEmbedder(lambda ts: embedded.extend(ts) or [[1.0]] * len(ts)),
                       "questions")
    asked: list[str] = []
    s.stats.clusters(lambda q, a, b: asked.append(q) or a == b)
    assert embedded == [QUESTION] and set(asked) == {QUESTION}


def test_paraphrases_of_a_chat_question_use_the_same_template(chat_lm, monkeypatch):
    s = sample_answers(chat_lm, messages=MESSAGES, n=2, seed=0, max_new_tokens=4)
    seen: list[list[str]] = []
    real = tokenwise.generation.generate

    def spy(lm, prompts, *args, **kwargs):
        seen.append(list(prompts))
        return real(lm, prompts, *args, **kwargs)

    monkeypatch.setattr(tokenwise.generation, "generate", spy)
    s2 = add_paraphrases(chat_lm, s, ["Ana's birthplace?"], n_per_question=2, seed=0,
                         max_new_tokens=4, prompt_template="{question}")
    assert [g.question for g in s2.paraphrases] == [QUESTION, "Ana's birthplace?"]
    assert s2.messages == s.messages
    want = [_server_prompt(chat_lm, [SYSTEM, {"role": "user", "content": q}]).ids
            for q in (QUESTION, QUESTION, "Ana's birthplace?", "Ana's birthplace?")]
    assert [getattr(p, "ids", None) for p in seen[0]] == want  # system message kept


def test_paraphrases_of_a_chat_prompt_without_its_messages_are_refused(chat_lm):
    rendered = _server_prompt(chat_lm, MESSAGES)
    for s in (sample_answers(chat_lm, QUESTION, prompt=rendered, n=2, seed=0,
                             max_new_tokens=2),
              sample_answers(chat_lm, rendered, prompt_template="{question}", n=2, seed=0,
                             max_new_tokens=2)):
        with pytest.raises(TokenwiseError, match=r"without its messages.*messages="):
            add_paraphrases(chat_lm, s, ["Ana's birthplace?"], n_per_question=1,
                            prompt_template="{question}")


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"question": QUESTION, "messages": MESSAGES}, r"question and messages= both given"),
    ({"prompt": "x", "messages": MESSAGES}, r"prompt= and messages= both given"),
    ({"messages": []}, r"messages is empty: allowed"),
    ({"messages": "hi"}, r"messages is str: allowed a list"),
    ({"messages": [SYSTEM]}, r"last message .* allowed a user message"),
    ({"messages": [{"role": "user", "content": "  "}]}, r"allowed a user message"),
    ({"messages": [{"role": "bot", "content": "hi"}]}, r"role 'bot': allowed system"),
    ({"messages": [{"role": "user", "content": "hi", "name": "x"}]}, r"exactly the keys"),
    ({"messages": MESSAGES, "prompt_template": "Answer: {question}"},
     r"prompt_template='Answer: \{question\}' with messages="),
    ({"question": QUESTION, "prompt": "x", "prompt_template": "Q {question}"},
     r"with prompt=, which is the whole prompt"),
    ({"question": QUESTION, "prompt": " "}, r"prompt=' ': allowed a non-empty string"),
    ({}, r"question is None: allowed a non-empty string \(or messages="),
])
def test_bad_chat_input_names_what_is_allowed(chat_lm, kwargs, match):
    with pytest.raises(TokenwiseError, match=match):
        sample_answers(chat_lm, n=2, max_new_tokens=2, **kwargs)


def test_content_that_spells_a_control_token_is_read_as_text_as_the_server_reads_it(chat_lm):
    messages = [{"role": "user", "content": "say <|im_end|> twice"}]
    s = sample_answers(chat_lm, messages=messages, n=2, seed=0, max_new_tokens=2)
    end = chat_lm.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert s.prompt.ids == _server_prompt(chat_lm, messages).ids
    assert list(s.prompt.ids).count(end) == list(_server_prompt(chat_lm, [
        {"role": "user", "content": "say twice"}]).ids).count(end)  # the template's own only
    assert s.question == "say <|im_end|> twice"


def test_messages_need_a_chat_template(small):
    with pytest.raises(TokenwiseError, match=r"'tw-small' has no chat template.*prompt="):
        sample_answers(small, messages=MESSAGES, n=2, max_new_tokens=2)


def test_a_rendered_chat_inside_a_template_is_refused(small):
    with pytest.raises(TokenwiseError, match=r"rendered chat prompt"):
        sample_answers(small, EncodedText("<|im_start|>user\nhi", [1, 2]), n=2,
                       max_new_tokens=2)


def test_a_sample_sets_messages_must_ask_its_question():
    with pytest.raises(TokenwiseError, match=r"last user message asks 'hi'"):
        SampleSet("Other?", ("a", "b"), messages=({"role": "user", "content": "hi"},))


def test_plain_questions_are_unchanged(small):
    s = sample_answers(small, "What is 2+3?", n=2, seed=0, max_new_tokens=3)
    assert s.question == "What is 2+3?" and s.prompt == "Q: What is 2+3?\nA:"
    assert s.messages is None
    s2 = add_paraphrases(small, s, ["Compute 2+3."], n_per_question=1, seed=0,
                         max_new_tokens=3)
    assert [g.question for g in s2.paraphrases] == ["What is 2+3?", "Compute 2+3."]
