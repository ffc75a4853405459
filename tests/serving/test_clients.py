"""langchain-openai against ``tokenwise serve``: ``ChatOpenAI.with_structured_output`` by each
of its methods (``json_schema``, its default; ``json_mode``; ``function_calling``), tools
bound with ``bind_tools`` and their results sent back, streamed tool calls, and the legacy
``OpenAI`` completions class with the defaults it always sends.

tw-small serves what needs no chat template; tool calls need one, so a tiny random Llama
with a template (see ``test_tool_calls``) serves those: the grammar writes its calls."""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import BaseModel, Field
from tests.serving.conftest import API_KEY
from tests.serving.test_tool_calls import IGNORES_TOOLS, TERSE, chat_model

from tokenwise.serving.config import ServerConfig

langchain_openai = pytest.importorskip("langchain_openai", reason="needs langchain-openai")
messages = pytest.importorskip("langchain_core.messages")
tools_module = pytest.importorskip("langchain_core.tools")


class Verdict(BaseModel):
    """Whether the sum is right, and a color."""

    ok: bool = Field(description="is the sum right")
    color: Literal["red", "blue"]


@pytest.fixture(scope="module")
def url(tmp_path_factory, small):
    from tokenwise.serving.server import serve_in_thread

    models = {"tw-small": small,
              "tiny-chat": chat_model(tmp_path_factory.mktemp("lc") / "chat", IGNORES_TOOLS)}
    config = ServerConfig(port=0, api_key=API_KEY, max_tokens_limit=256, batch_window_ms=5)
    with serve_in_thread(config, models=models) as base:
        yield base + "/v1"


def chat(url: str, model: str = "tw-small", **kwargs):
    kwargs.setdefault("max_tokens", 30 if model == "tw-small" else 200)
    if model != "tw-small":
        kwargs.setdefault("logit_bias", TERSE)
    return langchain_openai.ChatOpenAI(model=model, base_url=url, api_key=API_KEY,
                                       temperature=0, max_retries=0, timeout=120, **kwargs)


def test_with_structured_output_by_its_default_json_schema_method(url):
    structured = chat(url).with_structured_output(Verdict, include_raw=True)
    out = structured.invoke("Is 7+2=9?")
    assert out["parsing_error"] is None
    assert isinstance(out["parsed"], Verdict)
    assert out["raw"].response_metadata["finish_reason"] == "stop"


def test_with_structured_output_in_json_mode(url):
    out = chat(url).with_structured_output(None, method="json_mode").invoke(
        "Answer in JSON: is 7+2=9?")
    assert isinstance(out, dict)


def test_with_structured_output_by_function_calling(url):
    structured = chat(url, "tiny-chat").with_structured_output(
        Verdict, method="function_calling", include_raw=True)
    out = structured.invoke("Is 7+2=9?")
    assert out["parsing_error"] is None and isinstance(out["parsed"], Verdict)
    (call,) = out["raw"].tool_calls
    assert call["name"] == "Verdict"


@tools_module.tool
def pick(side: Literal["L", "R"]) -> str:
    """Pick a side."""
    return f"picked {side}"


def test_bound_tools_are_called_and_their_results_go_back(url):
    llm = chat(url, "tiny-chat").bind_tools([pick], tool_choice="required")
    question = messages.HumanMessage("Which side?")
    reply = llm.invoke([question])
    assert reply.response_metadata["finish_reason"] == "tool_calls"
    assert reply.tool_calls and all(c["name"] == "pick" for c in reply.tool_calls)
    results = [pick.invoke(c) for c in reply.tool_calls]  # ToolMessages with the call ids
    assert all(isinstance(m, messages.ToolMessage) for m in results)
    answer = chat(url, "tiny-chat", max_tokens=5).bind_tools([pick]).invoke(
        [question, reply, *results])
    assert answer.response_metadata["finish_reason"] in ("stop", "length", "tool_calls")


def test_streamed_tool_calls_join_into_the_calls(url):
    llm = chat(url, "tiny-chat").bind_tools([pick], tool_choice="pick")
    joined = None
    for chunk in llm.stream("Which side?"):
        joined = chunk if joined is None else joined + chunk
    (call,) = joined.tool_calls
    assert call["name"] == "pick" and call["args"]["side"] in ("L", "R")
    plain = llm.invoke("Which side?")
    assert [c["args"] for c in plain.tool_calls] == [call["args"]]


def test_the_legacy_completions_class_with_its_defaults(url, small):
    import tokenwise as tw

    llm = langchain_openai.OpenAI(model="tw-small", base_url=url, api_key=API_KEY,
                                  temperature=0, max_tokens=4, max_retries=0)
    assert llm.invoke("7+2=") == tw.generate(small, "7+2=", max_new_tokens=4).text
    sampled = langchain_openai.OpenAI(model="tw-small", base_url=url, api_key=API_KEY,
                                      temperature=0.7, max_tokens=6, seed=3, max_retries=0)
    assert sampled.invoke("markov: ka") == sampled.invoke("markov: ka")
    assert [c for c in sampled.stream("markov: ka")]  # streamed, with the same defaults
