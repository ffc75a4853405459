"""Tool calling on ``tokenwise serve``: ``tools`` and ``tool_choice`` through the real openai
client. Forced calls (``"required"``, a named function) come back as parseable ``tool_calls``
whatever the model (the grammar writes the call form), tool results go back in, streams hold
call text back and send ``delta.tool_calls``, and what cannot work is a 400 naming the field.

The fast tests use a tiny random Llama with tw-small's tokenizer and a chat template (one
that ignores tools, as SmolLM2's does, and one that renders them); SmolLM2 itself runs in the
``real`` tests once fetched."""

from __future__ import annotations

import json
from typing import Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError
from tests.conftest import save_tiny_llama
from tests.serving.conftest import API_KEY
from tests.serving.helpers import InlineBackend

from tokenwise.models import fetched, load
from tokenwise.serving.config import ServerConfig
from tokenwise.serving.engine import FinishEvent, TokenEvent
from tokenwise.serving.errors import from_validation
from tokenwise.serving.logprobs import WireToken
from tokenwise.serving.schemas import ChatCompletionRequest, CompletionRequest
from tokenwise.vllm.server import refuse_constraints

openai = pytest.importorskip("openai")

#: a ChatML-like template that ignores tools (tokenwise lists them in the system message)
IGNORES_TOOLS = ("{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n"
                 "{% endfor %}{% if add_generation_prompt %}<s>assistant\n{% endif %}")
#: a Hermes-style template that renders tools, calls and results itself
RENDERS_TOOLS = (
    "{% if tools %}<s>system\n<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}"
    "</tools></s>\n{% endif %}"
    "{% for m in messages %}<s>{{ m['role'] }}\n"
    "{% if m['content'] %}{{ m['content'] }}{% endif %}"
    "{% for c in m.get('tool_calls') or [] %}<tool_call>\n"
    "{\"name\": \"{{ c['function']['name'] }}\", "
    "\"arguments\": {{ c['function']['arguments'] | tojson }}}\n</tool_call>{% endfor %}"
    "</s>\n{% endfor %}{% if add_generation_prompt %}<s>assistant\n{% endif %}")

NOW = {"type": "function", "function": {"name": "now", "description": "The time"}}
PICK = {"type": "function", "function": {
    "name": "pick", "description": "Pick a side",
    "parameters": {"type": "object", "properties": {"side": {"enum": ["L", "R"]}},
                   "required": ["side"], "additionalProperties": False}}}
ASK = [{"role": "user", "content": "Which side?"}]


class PickArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    side: Literal["L", "R"]


def chat_model(folder, template: str):
    path = save_tiny_llama(folder, context=1024)
    config = json.loads((path / "tokenizer_config.json").read_text())
    config["chat_template"] = template
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return load(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory, small):
    root = tmp_path_factory.mktemp("tool-models")
    return {"tw-small": small, "tiny-chat": chat_model(root / "chat", IGNORES_TOOLS),
            "tiny-native": chat_model(root / "native", RENDERS_TOOLS)}


@pytest.fixture(scope="module")
def tool_client(models):
    from tokenwise.serving.server import serve_in_thread

    config = ServerConfig(port=0, api_key=API_KEY, max_tokens_limit=256, batch_window_ms=5)
    with serve_in_thread(config, models=models) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


#: tw-small's tokenizer's whitespace tokens (tab, newline, carriage return, space): a random
#: model writes the most whitespace JSON allows; biased away, a call is 3x fewer tokens
TERSE = {"200": -100.0, "201": -100.0, "204": -100.0, "223": -100.0}


def create(client, **kwargs):
    kwargs.setdefault("max_tokens", 200)
    kwargs.setdefault("temperature", 0)
    if str(kwargs["model"]).startswith("tiny"):
        kwargs.setdefault("logit_bias", TERSE)
    return client.chat.completions.create(**kwargs)


def check_call(call, name: str) -> dict:
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == name
    args = json.loads(call.function.arguments)
    if name == "pick":
        PickArgs.model_validate(args)
    else:
        assert args == {}
    return args


# --- forced calls ---


def test_tool_choice_required_gives_parseable_tool_calls(tool_client):
    r = create(tool_client, model="tiny-chat", messages=ASK, tools=[NOW, PICK],
               tool_choice="required", logprobs=True, seed=1)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert choice.message.tool_calls
    for call in choice.message.tool_calls:
        check_call(call, call.function.name)
    info = r.model_extra["tokenwise"]
    assert info["tools"] == {"mode": "system-prompt", "call_format": "tool-call-list",
                             "tool_choice": "required"}
    assert info["constraint"]["kind"] == "tool_call"
    assert info["constraint"]["prefix"] == "<tool_call>"
    # the forced "<tool_call>" tokens left nothing to choose
    first = choice.logprobs.content[0].model_extra
    assert first["constrained_entropy"] == 0.0 < first["entropy"]


def test_a_named_tool_choice_calls_that_function_once(tool_client):
    r = create(tool_client, model="tiny-chat", messages=ASK, tools=[NOW, PICK],
               tool_choice={"type": "function", "function": {"name": "pick"}},
               parallel_tool_calls=False, temperature=1.0, seed=3)
    calls = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls" and len(calls) == 1
    check_call(calls[0], "pick")
    # seeded: the same call, but a fresh id (ids must stay unique across an agent's turns)
    again = create(tool_client, model="tiny-chat", messages=ASK, tools=[NOW, PICK],
                   tool_choice={"type": "function", "function": {"name": "pick"}},
                   parallel_tool_calls=False, temperature=1.0, seed=3)
    (repeat,) = again.choices[0].message.tool_calls
    assert repeat.function == calls[0].function and repeat.id != calls[0].id


def test_a_template_that_renders_tools_gets_its_own_call_form(tool_client):
    r = create(tool_client, model="tiny-native", messages=ASK, tools=[PICK],
               tool_choice="required")
    info = r.model_extra["tokenwise"]
    assert info["tools"]["mode"] == "native" and info["tools"]["call_format"] == "hermes"
    assert info["constraint"]["prefix"] == "<tool_call>\n"
    assert "<tools>" in info["prompt"]
    (call,) = r.choices[0].message.tool_calls
    check_call(call, "pick")


def test_the_calls_and_their_results_go_back_in(tool_client):
    first = create(tool_client, model="tiny-chat", messages=ASK, tools=[PICK],
                   tool_choice="required", parallel_tool_calls=False)
    message = first.choices[0].message
    (call,) = message.tool_calls
    # the response's message goes back as the client got it ("refusal": null included)
    history = [*ASK, message, {"role": "tool", "tool_call_id": call.id, "content": "left"}]
    second = create(tool_client, model="tiny-chat", messages=history, tools=[PICK],
                    max_tokens=5)
    prompt = second.model_extra["tokenwise"]["prompt"]
    args = json.loads(call.function.arguments)
    assert f'<tool_call>[{{"name": "pick", "arguments": {json.dumps(args)}}}]</tool_call>' \
        in prompt
    assert "<tool_response>left</tool_response>" in prompt
    assert second.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_a_streamed_forced_call_arrives_as_tool_call_deltas(tool_client):
    kwargs = dict(model="tiny-chat", messages=ASK, tools=[NOW, PICK], tool_choice="required",
                  seed=5, temperature=1.0)
    plain = create(tool_client, **kwargs)
    chunks = list(create(tool_client, **kwargs, stream=True,
                         stream_options={"include_usage": True}))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == ""  # the call text is never sent as content
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or ()]
    # the same calls as the plain reply (ids are fresh per response)
    assert [(d.index, d.function.name, d.function.arguments) for d in deltas] == \
        [(k, t.function.name, t.function.arguments)
         for k, t in enumerate(plain.choices[0].message.tool_calls)]
    assert all(d.id.startswith("call_") for d in deltas)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices
              and c.choices[0].finish_reason]
    assert finish == ["tool_calls"]
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_the_stream_helper_of_the_openai_client_joins_the_call(tool_client):
    with tool_client.chat.completions.stream(model="tiny-chat", messages=ASK, tools=[PICK],
                                             tool_choice="required", max_tokens=200,
                                             temperature=0, logit_bias=TERSE) as stream:
        final = stream.get_final_completion()
    (call,) = final.choices[0].message.tool_calls
    check_call(call, "pick")


# --- streaming text that may hold calls (tool_choice "auto"), with scripted replies ---


class ScriptedBackend(InlineBackend):
    """Generates nothing: each choice's reply is the given pieces, one token each."""

    def __init__(self, replies: list[list[str]]) -> None:
        self.replies = replies

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def report(self) -> dict[str, Any]:
        return {}

    async def events(self, plan, deadline):
        for c in range(plan.choices):
            pieces = self.replies[c]
            for k, piece in enumerate(pieces):
                yield c, TokenEvent(WireToken(k, piece, list(piece.encode()), -0.1, 0.5), piece)
            yield c, FinishEvent("stop", "", "".join(pieces), len(pieces))


def scripted_client(models, replies):
    from fastapi.testclient import TestClient

    from tokenwise.serving.app import create_app

    app = create_app(ServerConfig(api_key=API_KEY), {"tiny-chat": models["tiny-chat"]},
                     engine=ScriptedBackend(replies))
    http = TestClient(app, base_url="http://127.0.0.1")
    return openai.OpenAI(base_url="http://127.0.0.1/v1", api_key=API_KEY, max_retries=0,
                         http_client=http)


CALL = '<tool_call>[{"name": "pick", "arguments": {"side": "L"}}]</tool_call>'


@pytest.mark.parametrize("pieces, content, calls", [
    # text before a call streams as it comes; the call is held and sent as tool_calls
    (["Let me ", "check. ", "<tool", "_call>[{", '"name": "pick", "arguments": {"side": ',
      '"L"}}]</tool_call>'], "Let me check.", 1),
    # a reply that only looks like it starts a call is sent whole at the end
    (["Use ", "<tool", "s> ", "wisely"], "Use <tools> wisely", 0),
    # a call the request did not offer stays content, as written
    ([CALL.replace("pick", "drop")], CALL.replace("pick", "drop"), 0),
])
def test_a_stream_with_tools_holds_back_what_may_be_a_call(models, pieces, content, calls):
    client = scripted_client(models, [pieces])
    kwargs = dict(model="tiny-chat", messages=ASK, tools=[PICK], max_tokens=20)
    chunks = list(client.chat.completions.create(**kwargs, stream=True))
    streamed = [c.choices[0].delta.content for c in chunks[1:] if c.choices
                and c.choices[0].delta.content]
    assert "".join(streamed).strip() == content
    assert all("<tool_call>" not in s for s in streamed) or not calls
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or ()]
    assert len(deltas) == calls
    plain = client.chat.completions.create(**kwargs).choices[0]
    assert plain.finish_reason == ("tool_calls" if calls else "stop")
    assert (plain.message.content or "") == content
    assert len(plain.message.tool_calls or ()) == calls
    if calls:
        assert deltas[0].function.arguments == plain.message.tool_calls[0].function.arguments
        assert json.loads(plain.message.tool_calls[0].function.arguments) == {"side": "L"}


def test_text_after_a_call_is_sent_with_the_call(models):
    client = scripted_client(models, [["Sure. ", CALL, " Done."]])
    chunks = list(client.chat.completions.create(model="tiny-chat", messages=ASK,
                                                 tools=[PICK], max_tokens=20, stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    plain = client.chat.completions.create(model="tiny-chat", messages=ASK, tools=[PICK],
                                           max_tokens=20).choices[0]
    assert streamed == plain.message.content == "Sure. \n Done."
    assert plain.finish_reason == "tool_calls" and len(plain.message.tool_calls) == 1


# --- what is refused, and what is a no-op ---


def test_tools_on_a_model_without_a_chat_template_are_refused_naming_it(tool_client):
    with pytest.raises(openai.BadRequestError) as err:
        create(tool_client, model="tw-small", messages=ASK, tools=[PICK], max_tokens=2)
    assert err.value.body["param"] == "tools"
    assert "'tw-small' has no chat template" in err.value.body["message"]
    # tool_choice "none": no call can be made, so the question form serves it as it is
    plain = create(tool_client, model="tw-small", messages=ASK, max_tokens=4)
    none = create(tool_client, model="tw-small", messages=ASK, tools=[PICK], tool_choice="none",
                  max_tokens=4)
    assert none.choices[0].message.content == plain.choices[0].message.content


@pytest.mark.parametrize("fields, param, fragment", [
    ({"tool_choice": {"type": "function", "function": {"name": "drop"}}},
     "tool_choice.function.name", "'drop', which is not among the tools"),
    ({"tool_choice": "any"}, "tool_choice", "'none', 'auto' or 'required'"),
    ({"tool_choice": {"type": "function", "function": {}}}, "tool_choice.function.name",
     "Missing required parameter"),
    ({"tools": []}, "tools", "the list is empty"),
    ({"response_format": {"type": "json_object"}}, "response_format",
     "both constrain the reply"),
    ({"extra_body": {"tokenwise": {"compress": {"method": "token_classifier", "rate": 0.5}}}},
     "tokenwise.compress", "holds tools"),
])
def test_bad_tool_fields_are_400s_naming_them(tool_client, fields, param, fragment):
    fields = {"tools": [PICK], "tool_choice": "required", **fields}
    with pytest.raises(openai.BadRequestError) as err:
        create(tool_client, model="tiny-chat", messages=ASK, max_tokens=2, **fields)
    assert err.value.body["param"] == param
    assert fragment in err.value.body["message"]


@pytest.mark.parametrize("messages, param, fragment", [
    ([{"role": "user"}], "messages.0.content", "has no content"),
    ([*ASK, {"role": "tool", "content": "x"}], "messages.1.tool_call_id", "no tool_call_id"),
    ([*ASK, {"role": "assistant", "content": "no", "refusal": "I won't"}], "messages.1.refusal",
     "renders no refusal text"),
    ([*ASK, {"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "pick", "arguments": "{}"}}]}],
     "messages.1.tool_calls", "no answer to 'c1'"),
])
def test_bad_tool_messages_are_400s_naming_them(tool_client, messages, param, fragment):
    with pytest.raises(openai.BadRequestError) as err:
        create(tool_client, model="tiny-chat", messages=messages, tools=[PICK], max_tokens=2)
    assert err.value.body["param"] == param
    assert fragment in err.value.body["message"]


def test_tokenize_renders_messages_with_tools_as_a_chat_request_does(tool_client):
    import httpx

    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "pick",
                                                      "arguments": '{"side": "R"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "right"}]
    chat = create(tool_client, model="tiny-chat", messages=history, tools=[PICK], max_tokens=1)
    counted = httpx.post(str(tool_client.base_url).replace("/v1/", "/tokenize"),
                         headers={"Authorization": f"Bearer {API_KEY}"},
                         json={"model": "tiny-chat", "messages": history, "tools": [PICK]})
    assert counted.status_code == 200
    assert counted.json()["count"] == chat.usage.prompt_tokens


def test_vllm_refuses_what_needs_a_grammar_and_takes_auto_tools():
    messages = [{"role": "user", "content": "x"}]
    for body, param in [({"tools": [PICK], "tool_choice": "required"}, "tool_choice"),
                        ({"tools": [PICK], "tool_choice": {"type": "function",
                                                           "function": {"name": "pick"}}},
                         "tool_choice"),
                        ({"response_format": {"type": "json_object"}}, "response_format.type")]:
        req = ChatCompletionRequest.model_validate({"model": "m", "messages": messages, **body})
        with pytest.raises(Exception) as err:
            refuse_constraints(req)
        assert err.value.param == param and "--engine tokenwise" in err.value.message
    for body in ({"tools": [PICK]}, {"tools": [PICK], "tool_choice": "none"},
                 {"response_format": {"type": "text"}}):
        refuse_constraints(ChatCompletionRequest.model_validate(
            {"model": "m", "messages": messages, **body}))
    with pytest.raises(Exception, match="'json_schema' is not supported"):
        refuse_constraints(CompletionRequest.model_validate(
            {"model": "m", "prompt": "x", "response_format": {"type": "json_schema"}}))


def test_a_union_member_class_name_is_left_out_of_an_error_location():
    class Named(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        name: str

    class Body(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        choice: str | Named

    for value, param in [({"nam": "x"}, "choice.nam"), ({}, "choice.name"), (5, "choice")]:
        with pytest.raises(ValidationError) as err:
            Body.model_validate({"choice": value})
        assert from_validation(err.value).param == param


# --- SmolLM2 (run once fetched: `tokenwise models fetch smollm2-135m`) ---


@pytest.fixture(scope="module")
def smollm2_client():
    if fetched("smollm2-135m") is None:
        pytest.skip("smollm2-135m is not fetched; run `tokenwise models fetch smollm2-135m`")
    from tokenwise.serving.server import serve_in_thread

    config = ServerConfig(port=0, api_key=API_KEY, max_tokens_limit=256)
    with serve_in_thread(config, models={"smollm2-135m": load("smollm2-135m")}) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0, timeout=300)


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"], "additionalProperties": False}}}


@pytest.mark.real
def test_smollm2_calls_a_forced_tool_and_answers_from_its_result(smollm2_client):
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    r = create(smollm2_client, model="smollm2-135m", messages=ask, tools=[WEATHER],
               tool_choice="required", max_tokens=60)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    assert set(json.loads(call.function.arguments)) == {"city"}
    history = [*ask, choice.message,
               {"role": "tool", "tool_call_id": call.id, "content": "22 C and sunny"}]
    answer = create(smollm2_client, model="smollm2-135m", messages=history, tools=[WEATHER],
                    max_tokens=30)
    assert answer.choices[0].message.content
    assert "<tool_response>22 C and sunny</tool_response>" in \
        answer.model_extra["tokenwise"]["prompt"]
