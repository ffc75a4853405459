"""Planning a request that asks for compression: every check once, the context checked on
the compressed prompt (the routes, with a backend that runs calls inline)."""

from __future__ import annotations

import asyncio

import pytest
from tests.serving.helpers import InlineBackend

from tokenwise.serving import planning, routes
from tokenwise.serving.config import ServerConfig
from tokenwise.serving.errors import APIError
from tokenwise.serving.schemas import ChatCompletionRequest, CompletionRequest


def plan(small, req, kind):
    service = routes.CompletionService(ServerConfig(), {"tw-small": small}, InlineBackend())
    return asyncio.run(service._plan(req, kind))


def fake_compress(options, prompt, lm, fixed):
    """Keeps the last 4 words of a text, or of each message."""
    def cut(text):
        return " ".join(text.split()[-4:])
    if isinstance(prompt, str):
        return cut(prompt), {"method": options.method}
    return [{"role": m["role"], "content": cut(m["content"])} for m in prompt], \
        {"method": options.method}


@pytest.fixture
def counted(monkeypatch):
    calls = []
    real = routes.plan_request

    def plan_request(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(routes, "plan_request", plan_request)
    monkeypatch.setattr(routes, "compress_prompt", fake_compress)
    return calls


def test_a_compressed_request_is_planned_once(small, counted):
    req = CompletionRequest(model="tw-small", prompt="ka ro " * 200 + "ki ko", max_tokens=8,
                            temperature=0.7, stop="\n",
                            tokenwise={"compress": {"method": "perplexity", "rate": 0.5}})
    got = plan(small, req, "completion")
    assert len(counted) == 1  # was 2: once before compressing, once after
    assert got.prompts == ["ka ro ki ko"]
    assert got.prompt_tokens == [len(small.encode("ka ro ki ko", add_bos=True))]
    assert got.info["prompt"] == "ka ro ki ko" and got.info["compression"] == {
        "method": "perplexity"}
    assert got.info["seeds"] == got.seeds and got.stops == ["\n"]


def test_a_compressed_chat_is_rendered_from_the_compressed_messages(small, counted):
    messages = [{"role": "user", "content": "lo " * 300 + "Where was Tavoun born?"}]
    req = ChatCompletionRequest(model="tw-small", messages=messages, max_tokens=8,
                                tokenwise={"compress": {"method": "perplexity",
                                                        "rate": 0.5}})
    got = plan(small, req, "chat")
    assert len(counted) == 1
    assert got.prompts == ["Q: Where was Tavoun born?\nA:"]  # the QA fallback format
    assert got.stops == ["\n"] and got.info["stop"] == ["\n"]
    assert got.info["chat_format"] == "qa-fallback"


def test_the_context_is_checked_on_the_compressed_prompt(small, counted):
    long = "ka ro " * 200  # past tw-small's 256 tokens, compressed far under it
    fits = CompletionRequest(model="tw-small", prompt=long, max_tokens=250,
                             tokenwise={"compress": {"method": "perplexity", "rate": 0.5}})
    assert plan(small, fits, "completion").max_tokens == 250
    too_long = fits.model_copy(update={"max_tokens": 256})
    with pytest.raises(APIError, match="maximum context length is 256") as err:
        plan(small, too_long, "completion")
    assert err.value.body()["error"]["code"] == "context_length_exceeded"
    plain = fits.model_copy(update={"tokenwise": None})
    with pytest.raises(APIError, match="maximum context length is 256"):
        planning.plan_request(plain, ServerConfig(), {"tw-small": small})
