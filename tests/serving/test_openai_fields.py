"""OpenAI's sampling fields (``logit_bias``, ``presence_penalty``, ``frequency_penalty``),
vLLM's ``repetition_penalty``, and the fields that are no-ops here (``user``,
``parallel_tool_calls``, ``response_format: text``, ``tool_choice: "none"``), through the
real openai client against a live server, checked against the library and naive loops."""

from __future__ import annotations

import pytest
import torch

import tokenwise as tw
from tokenwise.sampling import Chain, Temperature
from tokenwise.sampling.logit_bias import LogitBias
from tokenwise.sampling.penalties import Penalties

openai = pytest.importorskip("openai")

PROMPT = "markov: ka"
QUESTION = "Where was Tavoun born?"
MESSAGES = [{"role": "user", "content": QUESTION}]


def naive_entropies(lm, prompt: str, token_ids: list[int]) -> list[float]:
    """Entropy (nats) of the model's own next-token distribution before each given token."""
    ids = lm.encode(prompt, add_bos=True)
    out = []
    with torch.no_grad():
        for tok in token_ids:
            logp = lm.hf_model(torch.tensor([ids])).logits[0, -1].double().log_softmax(-1)
            out.append(float(-(logp.exp() * logp).sum()))
            ids.append(tok)
    return out


def test_langchain_legacy_defaults_are_accepted_no_ops(client):
    # what langchain-openai's legacy OpenAI class sends with its defaults (zeros, {}, nulls)
    plain = client.completions.create(model="tw-small", prompt=[PROMPT], max_tokens=8,
                                      temperature=0.7, seed=5)
    sent = client.completions.create(model="tw-small", prompt=[PROMPT], max_tokens=8,
                                     temperature=0.7, seed=5, top_p=1, frequency_penalty=0,
                                     presence_penalty=0, n=1, logit_bias={}, logprobs=None,
                                     user="someone")
    assert sent.choices[0].text == plain.choices[0].text
    assert sent.model_extra["tokenwise"]["sampler"] == \
        [{"name": "temperature", "temperature": 0.7}]
    greedy = client.completions.create(model="tw-small", prompt=PROMPT, max_tokens=4,
                                       temperature=0, frequency_penalty=0.0,
                                       extra_body={"repetition_penalty": 1.0})
    assert greedy.model_extra["tokenwise"]["sampler"] == []  # still plain greedy decoding


def test_logit_bias_on_completions_equals_the_library_and_keeps_the_models_entropy(client,
                                                                                    small):
    banned, boosted = small.encode(" tu")[0], small.encode(" fe")[0]
    bias = {banned: -100.0, boosted: 3.0}
    r = client.completions.create(model="tw-small", prompt=PROMPT, max_tokens=8, temperature=0,
                                  logit_bias={str(k): v for k, v in bias.items()}, logprobs=0)
    ref = tw.generate(small, PROMPT, Chain([LogitBias(bias), Temperature(0)]),
                      max_new_tokens=8, seed=0)
    assert r.choices[0].text == ref.text
    assert r.choices[0].text != tw.generate(small, PROMPT, max_new_tokens=8).text
    assert r.model_extra["tokenwise"]["sampler"][0] == {
        "name": "logit_bias", "bias": {str(banned): -100.0, str(boosted): 3.0}}
    ids = [t.id for t in ref.tokens]
    assert banned not in ids
    lp = r.choices[0].logprobs
    assert lp.model_extra["token_entropies"] == pytest.approx(
        naive_entropies(small, PROMPT, ids), abs=1e-4)


def test_logit_bias_on_chat_forces_a_token(client, small):
    forced = small.encode(" 7")[0]
    r = client.chat.completions.create(model="tw-small", messages=MESSAGES, max_tokens=3,
                                       temperature=0, logit_bias={str(forced): 100})
    assert r.choices[0].message.content == small.decode([forced]) * 3


def test_penalties_equal_the_library_and_keep_the_models_entropy(client, small):
    fields = dict(presence_penalty=1.5, frequency_penalty=0.5)
    r = client.completions.create(model="tw-small", prompt=PROMPT, max_tokens=16,
                                  temperature=0, logprobs=0, **fields,
                                  extra_body={"repetition_penalty": 1.3})
    penalties = Penalties(repetition_penalty=1.3, **fields)
    ref = tw.generate(small, PROMPT, Chain([penalties, Temperature(0)]), max_new_tokens=16,
                      seed=0)
    plain = tw.generate(small, PROMPT, max_new_tokens=16)
    assert r.choices[0].text == ref.text != plain.text
    assert r.model_extra["tokenwise"]["sampler"] == [
        {"name": "penalties", "presence_penalty": 1.5, "frequency_penalty": 0.5,
         "repetition_penalty": 1.3}, {"name": "temperature", "temperature": 0.0}]
    lp = r.choices[0].logprobs
    assert lp.model_extra["token_entropies"] == pytest.approx(
        naive_entropies(small, PROMPT, [t.id for t in ref.tokens]), abs=1e-4)


def test_each_penalty_alone_on_chat_samples_like_the_library(client, small):
    for field, value in [("presence_penalty", 2.0), ("frequency_penalty", -1.0),
                         ("repetition_penalty", 2.0)]:
        extra = {field: value} if field == "repetition_penalty" else {}
        direct = {} if extra else {field: value}
        r = client.chat.completions.create(model="tw-small", messages=MESSAGES, max_tokens=10,
                                           temperature=0.8, seed=7, **direct,
                                           extra_body=extra or None)
        prompt = r.model_extra["tokenwise"]["prompt"]
        ref = tw.generate(small, prompt, Chain([Penalties(**{field: value}), Temperature(0.8)]),
                          max_new_tokens=10, seed=7, stop="\n")
        assert r.choices[0].message.content == ref.text, field


def test_the_tokenwise_chain_takes_both_steps_and_counts_per_choice(client, small):
    chain = [{"name": "logit_bias", "bias": {str(small.encode(" tu")[0]): -100}},
             {"name": "penalties", "frequency_penalty": 2.0},
             {"name": "temperature", "temperature": 0.0}]
    r = client.completions.create(model="tw-small", prompt=[PROMPT, "7+2="], max_tokens=10,
                                  seed=1, extra_body={"tokenwise": {"sampler": chain}})
    for choice, prompt in zip(r.choices, [PROMPT, "7+2="], strict=True):
        ref = tw.generate(small, prompt, Chain([LogitBias({small.encode(" tu")[0]: -100}),
                                                Penalties(frequency_penalty=2.0),
                                                Temperature(0)]), max_new_tokens=10, seed=0)
        assert choice.text == ref.text


@pytest.mark.parametrize("fields, param, fragment", [
    ({"presence_penalty": 2.5}, "presence_penalty",
     "presence_penalty=2.5: allowed a number in [-2, 2]"),
    ({"frequency_penalty": -3}, "frequency_penalty",
     "frequency_penalty=-3.0: allowed a number in [-2, 2]"),
    ({"extra_body": {"repetition_penalty": 0}}, "repetition_penalty",
     "repetition_penalty=0.0: allowed a number in [1e-06, 1e+06]"),
    ({"logit_bias": {"5": 101}}, "logit_bias", "bias[5]=101.0: allowed a number in [-100, 100]"),
    ({"logit_bias": {"1024": 1}}, "logit_bias",
     "token id 1024 is not in the vocabulary of model 'tw-small': allowed ids 0 to 1023"),
    ({"logit_bias": {"x": 1}}, "logit_bias", "key 'x' is not a token id"),
    ({"logit_bias": {"5": "1"}}, "logit_bias.5", "Input should be a valid number"),
    ({"extra_body": {"tokenwise": {"sampler": [{"name": "logit_bias",
                                                "bias": {"99999": 1}}]}}},
     "tokenwise.sampler.0.bias", "token id 99999 is not in the vocabulary"),
    ({"presence_penalty": 0.5, "extra_body": {"tokenwise": {"sampler": []}}},
     "presence_penalty", "either tokenwise.sampler or the top-level field(s) presence_penalty"),
])
def test_bad_values_are_400_naming_the_field_and_range(client, fields, param, fragment):
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tw-small", prompt="x", max_tokens=2, **fields)
    assert err.value.body["param"] == param
    assert fragment in err.value.body["message"]


def test_no_op_fields_are_accepted_on_chat(client):
    kwargs = dict(model="tw-small", messages=MESSAGES, max_tokens=8, temperature=0)
    plain = client.chat.completions.create(**kwargs)
    sent = client.chat.completions.create(**kwargs, user="u-1", parallel_tool_calls=False,
                                          response_format={"type": "text"}, tool_choice="none")
    assert sent.choices[0].message.content == plain.choices[0].message.content
