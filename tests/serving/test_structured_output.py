"""Structured output on ``tokenwise serve``: ``response_format`` ``json_object`` and
``json_schema`` constrain the reply (chat and completions, plain and streamed), each token
reports the model's own entropy and the constrained one, rows with different schemas share a
batch, and bad fields are 400s naming them. Through the real openai client on tw-small."""

from __future__ import annotations

import asyncio
import json
from typing import Literal

import pytest
import torch
from pydantic import BaseModel, ConfigDict
from tests.serving.conftest import API_KEY

import tokenwise as tw
from tokenwise.errors import TokenwiseError
from tokenwise.sampling import Chain, Temperature
from tokenwise.sampling.grammar import JsonGrammar
from tokenwise.serving.config import ServerConfig
from tokenwise.serving.constraints import (
    Constraint,
    RowConstraints,
    response_format_constraint,
    whitespace_for,
)
from tokenwise.serving.engine import FinishEvent, Row, TokenEvent, run_batch
from tokenwise.serving.errors import APIError
from tokenwise.serving.planning import plan_request
from tokenwise.serving.sampler_spec import SamplerSpec
from tokenwise.serving.schemas import ChatCompletionRequest

openai = pytest.importorskip("openai")

QUESTION = [{"role": "user", "content": "Is 7+2=9?"}]
QA_PROMPT = "Q: Is 7+2=9?\nA:"  # tw-small's question-answer form of QUESTION


class Verdict(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ok: bool
    color: Literal["red", "blue"]


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    answer: Literal["yes", "no", "maybe"]


def schema_format(model: type[BaseModel]) -> dict:
    return {"type": "json_schema",
            "json_schema": {"name": model.__name__, "schema": model.model_json_schema(),
                            "strict": True}}


def constraint_of(lm, model: type[BaseModel], stops=("\n",)) -> Constraint:
    return response_format_constraint(schema_format(model), lm, list(stops))


def replay(lm, prompt_ids: list[int], ids: list[int], schema: dict | None, ws: int):
    """Per token: the model's own entropy and its entropy renormalised over what the grammar
    allowed, recomputed from scratch with a fresh grammar (nats)."""
    grammar = JsonGrammar.for_model(lm, schema, max_whitespace=ws)
    own, constrained, seq = [], [], list(prompt_ids)
    with torch.no_grad():
        for tok in ids:
            logits = lm.hf_model(torch.tensor([seq])).logits[0, -1].float()[None]
            own.append(float(tw.signals.entropy(logits)[0]))
            constrained.append(float(tw.signals.entropy(grammar(logits))[0]))
            grammar.observe(torch.tensor([tok]))
            seq.append(tok)
    return own, constrained


# --- through the API ---


def test_a_json_schema_reply_validates_and_reports_both_entropies(client, small):
    r = client.chat.completions.create(model="tw-small", messages=QUESTION, max_tokens=30,
                                       temperature=0, logprobs=True,
                                       response_format=schema_format(Verdict))
    choice = r.choices[0]
    Verdict.model_validate_json(choice.message.content)
    assert choice.finish_reason == "stop"
    # the question-answer form ends a turn at "\n": the JSON is compact
    assert r.model_extra["tokenwise"]["constraint"] == {
        "kind": "json_schema", "prefix": "", "suffix": "", "max_whitespace": 0}
    # the library with the same constraint writes the same tokens
    rows = RowConstraints(small, [constraint_of(small, Verdict)])
    ref = tw.generate(small, QA_PROMPT, Chain([rows, Temperature(0)]), seed=0,
                      max_new_tokens=30, stop="\n")
    assert choice.message.content == ref.text
    own, constrained = replay(small, small.encode(QA_PROMPT, add_bos=True),
                              [t.id for t in ref.tokens], Verdict.model_json_schema(), 0)
    entries = choice.logprobs.content
    assert len(entries) == len(own)
    assert max(abs(e.model_extra["entropy"] - h) for e, h in zip(entries, own,
                                                                 strict=True)) < 1e-3
    assert max(abs(e.model_extra["constrained_entropy"] - h)
               for e, h in zip(entries, constrained, strict=True)) < 1e-3
    # the first token can only be "{": nothing left to choose, whatever the model thought
    assert entries[0].model_extra["constrained_entropy"] == 0.0 < entries[0].model_extra["entropy"]
    info = r.model_extra["tokenwise"]
    assert info["mean_constrained_entropy"][0] == pytest.approx(sum(constrained) / len(entries),
                                                                abs=1e-3)


def test_a_free_reply_has_no_constrained_entropy(client):
    r = client.chat.completions.create(model="tw-small", messages=QUESTION, max_tokens=4,
                                       temperature=0, logprobs=True)
    assert all("constrained_entropy" not in e.model_extra for e in r.choices[0].logprobs.content)
    assert "mean_constrained_entropy" not in r.model_extra["tokenwise"]
    assert "constraint" not in r.model_extra["tokenwise"]


def test_json_object_on_chat_and_on_completions(client):
    chat = client.chat.completions.create(model="tw-small", messages=QUESTION, max_tokens=30,
                                          temperature=0, response_format={"type": "json_object"})
    assert isinstance(json.loads(chat.choices[0].message.content), dict)
    # completions takes response_format too (as vLLM does); no stop string with whitespace,
    # so whitespace between JSON tokens is allowed
    r = client.completions.create(model="tw-small", prompt="7+2=", max_tokens=40, temperature=0,
                                  logprobs=0, extra_body={"response_format":
                                                          {"type": "json_object"}})
    choice = r.choices[0]
    assert isinstance(json.loads(choice.text), dict) and choice.finish_reason == "stop"
    assert r.model_extra["tokenwise"]["constraint"]["max_whitespace"] == 16
    lp = choice.logprobs.model_extra
    assert len(lp["token_constrained_entropies"]) == len(lp["token_entropies"]) > 0


def test_an_echoed_prompt_has_no_constrained_entropy(client):
    r = client.completions.create(model="tw-small", prompt="7+2=", max_tokens=20, temperature=0,
                                  echo=True, logprobs=0, stop=["\n"],
                                  extra_body={"response_format": {"type": "json_object"}})
    choice = r.choices[0]
    assert choice.text.startswith("7+2=")
    assert isinstance(json.loads(choice.text[len("7+2="):]), dict)
    lp = choice.logprobs.model_extra
    prompt = r.usage.prompt_tokens
    assert lp["token_constrained_entropies"][:prompt] == [None] * prompt
    generated = lp["token_constrained_entropies"][prompt:]
    assert generated and all(isinstance(h, float) for h in generated)


def test_a_sampled_json_schema_reply_validates_for_each_choice(client):
    r = client.chat.completions.create(model="tw-small", messages=QUESTION, max_tokens=30,
                                       temperature=1.0, seed=4, n=3,
                                       response_format=schema_format(Verdict))
    for choice in r.choices:
        assert choice.finish_reason == "stop"
        Verdict.model_validate_json(choice.message.content)


def test_a_streamed_json_schema_reply_validates_and_carries_both_entropies(client):
    kwargs = dict(model="tw-small", messages=QUESTION, max_tokens=30, temperature=0,
                  logprobs=True, response_format=schema_format(Verdict))
    plain = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(**kwargs, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    Verdict.model_validate_json(text)
    entries = [e for c in chunks if c.choices and c.choices[0].logprobs
               for e in c.choices[0].logprobs.content]
    assert [e.model_extra["constrained_entropy"] for e in entries] == \
        [e.model_extra["constrained_entropy"] for e in plain.choices[0].logprobs.content]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert "mean_constrained_entropy" in chunks[-1].model_extra["tokenwise"]


def test_the_openai_clients_parse_helper_gets_the_pydantic_object(client):
    r = client.chat.completions.parse(model="tw-small", messages=QUESTION, max_tokens=30,
                                      temperature=0, response_format=Verdict)
    parsed = r.choices[0].message.parsed
    assert isinstance(parsed, Verdict)
    assert parsed == Verdict.model_validate_json(r.choices[0].message.content)


def test_two_concurrent_requests_with_different_schemas_both_validate(server, client):
    def body(model: type[BaseModel], seed: int) -> dict:
        return dict(model="tw-small", messages=QUESTION, max_tokens=30, temperature=1.0,
                    seed=seed, response_format=schema_format(model))

    async def both():
        async with openai.AsyncOpenAI(base_url=server + "/v1", api_key=API_KEY,
                                      max_retries=0, timeout=60) as aclient:
            return await asyncio.gather(aclient.chat.completions.create(**body(Verdict, 1)),
                                        aclient.chat.completions.create(**body(Answer, 2)))

    verdict, answer = asyncio.run(both())
    Verdict.model_validate_json(verdict.choices[0].message.content)
    Answer.model_validate_json(answer.choices[0].message.content)
    # seeded rows give the same text together or alone
    alone = client.chat.completions.create(**body(Answer, 2))
    assert alone.choices[0].message.content == answer.choices[0].message.content


@pytest.mark.parametrize("fmt, param, fragment", [
    ({"type": "json_schema", "json_schema": {"name": "v", "schema": {
        "type": "object", "properties": {"a": {"type": "nonsense"}}}}},
     "response_format.json_schema.schema", "bad JSON schema"),
    # compiles but admits no document: a 400 at planning, not a failed batch
    ({"type": "json_schema", "json_schema": {"name": "v", "schema": {"$ref": "#"}}},
     "response_format.json_schema.schema", "no document can be written"),
    ({"type": "json_schema"}, "response_format.json_schema", "missing"),
    ({"type": "json_schema", "json_schema": {"name": "v w", "schema": {}}},
     "response_format.json_schema.name", "'v w'"),
    ({"type": "json_object", "schema": {}}, "response_format.schema", "unknown field"),
    ({"type": "text", "json_schema": {}}, "response_format.json_schema", "unknown field"),
    ({"type": "xml"}, "response_format.type", "'xml': allowed one of 'text'"),
])
def test_bad_response_formats_are_400s_naming_the_field(client, fmt, param, fragment):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tw-small", messages=QUESTION, max_tokens=2,
                                       response_format=fmt)
    assert err.value.body["param"] == param
    assert fragment in err.value.body["message"]


@pytest.mark.parametrize("extra, param", [
    ({"ead": {"large": "tw-large"}}, "tokenwise.ead"),
    ({"uncertainty": {"n": 2}}, "tokenwise.uncertainty"),
])
def test_extras_that_would_ignore_the_grammar_are_refused(client, extra, param):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tw-small", messages=QUESTION, max_tokens=2,
                                       response_format={"type": "json_object"},
                                       extra_body={"tokenwise": extra})
    assert err.value.body["param"] == param
    assert "response_format 'json_object'" in err.value.body["message"]


# --- the batch runner and the sampler ---


def test_rows_with_different_schemas_share_a_batch_and_equal_their_solo_runs(small):
    constraints = [constraint_of(small, Verdict), None, constraint_of(small, Answer), None]
    prompts = [QA_PROMPT, "7+2=", QA_PROMPT, "markov: ka"]
    spec = SamplerSpec((("temperature", (("temperature", 1.0),)),))

    def rows(indices, events):
        return [Row(prompt=prompts[i], max_tokens=24, seed=10 + i, stops=["\n"],
                    constraint=constraints[i], sink=events[i].append) for i in indices]

    together = [[] for _ in prompts]
    run_batch(small, spec, rows(range(4), together))
    for i in range(4):
        alone = [[] for _ in prompts]
        run_batch(small, spec, rows([i], alone))
        assert [e.token.id for e in together[i] if isinstance(e, TokenEvent)] == \
            [e.token.id for e in alone[i] if isinstance(e, TokenEvent)]
    texts = [ev[-1].text for ev in together]
    Verdict.model_validate_json(texts[0])
    Answer.model_validate_json(texts[2])
    free = [e.token.constrained_entropy for i in (1, 3) for e in together[i]
            if isinstance(e, TokenEvent)]
    assert free and all(h is None for h in free)


def test_a_greedy_batch_with_a_constraint_keeps_its_free_rows_greedy(small):
    events = [[], []]
    rows = [Row(prompt=QA_PROMPT, max_tokens=30, stops=["\n"], sink=events[0].append,
                constraint=constraint_of(small, Verdict)),
            Row(prompt="markov: ka", max_tokens=12, sink=events[1].append)]
    run_batch(small, SamplerSpec(), rows)  # greedy spec: the seeds are None
    Verdict.model_validate_json(events[0][-1].text)
    assert events[1][-1].text == tw.generate(small, "markov: ka", max_new_tokens=12).text


def test_a_prefix_and_suffix_are_forced_around_the_json(small):
    c = Constraint("tool_call", json.dumps(Answer.model_json_schema()), "<call>", "</call>", 0)
    events: list = []
    run_batch(small, SamplerSpec((("temperature", (("temperature", 1.0),)),)),
              [Row(prompt="7+2=", max_tokens=40, seed=3, constraint=c, sink=events.append)])
    finish = events[-1]
    assert isinstance(finish, FinishEvent) and finish.reason == "stop"
    assert finish.text.startswith("<call>") and finish.text.endswith("</call>")
    Answer.model_validate_json(finish.text[len("<call>"):-len("</call>")])
    tokens = [e.token for e in events if isinstance(e, TokenEvent)]
    prefix = len(small.tokenizer("<call>", add_special_tokens=False)["input_ids"])
    suffix = len(small.tokenizer("</call>", add_special_tokens=False)["input_ids"])
    assert all(t.constrained_entropy == 0.0 for t in tokens[:prefix] + tokens[-suffix:])


def test_row_constraints_refuse_a_batch_of_another_size(small):
    rows = RowConstraints(small, [Constraint("json_object", None), None])
    with pytest.raises(TokenwiseError, match="holds 2 row"):
        rows(torch.zeros(3, small.vocab_size))


def test_whitespace_is_left_out_where_a_stop_string_could_end_the_json():
    assert whitespace_for(["\n"]) == whitespace_for(["a b"]) == 0
    assert whitespace_for([]) == whitespace_for(["###", "</s>"]) == 16


def test_planning_refuses_a_schema_the_engine_cannot_compile(small):
    req = ChatCompletionRequest.model_validate({
        "model": "tw-small", "messages": QUESTION,
        "response_format": {"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "object", "minProperties": "two"}}}})
    with pytest.raises(APIError) as err:
        plan_request(req, ServerConfig(), {"tw-small": small})
    assert err.value.status == 400 and err.value.param == "response_format.json_schema.schema"
