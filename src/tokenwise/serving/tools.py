"""OpenAI tool calling, the model's side: checking ``tools``/``tool_choice``, rendering a chat
that holds tools, tool calls and tool results, parsing the reply into ``tool_calls``, and the
JSON schema a forced call must follow.

How tools reach the model depends on its chat template (:func:`render_tool_chat`):

* ``"native"``: the template renders tools itself (it prints a probe tool handed to it as
  ``tools``), so tools and messages go to it as they are, arguments as JSON objects.
* ``"system-prompt"``: the template ignores tools (SmolLM2-Instruct's does). Silently dropping
  them would answer as if the client had sent none, so the tools are listed in the system
  message in the function-calling format documented for SmolLM2-Instruct (its model card's
  function-calling instructions: ``<tools>`` listing, ``<tool_call>[...]</tool_call>``
  answer; :data:`TOOL_CALL_LIST`), in our words::

      {the request's own system message, if any}

      You can call functions to answer the user. ...
      <tools>[{"name": ..., "description": ..., "parameters": {...}}, ...]</tools>
      ...

  An earlier assistant turn that called tools becomes its text followed by
  ``<tool_call>[{"name": ..., "arguments": {...}}, ...]</tool_call>``; the tool results that
  answer it become one user turn of ``<tool_response>{content}</tool_response>`` lines, in
  order (a user turn, since every template knows that role).

  SmolLM2-135M-Instruct seldom calls a function by itself in this form (tried greedy on
  "What is the weather in Paris?" with a weather tool: it answers in prose); with
  ``tool_choice: "required"`` or a named function the serving layer constrains the reply
  to a call (:func:`call_constraint`).
* no template (Gemma-3-270M, the built-ins): the question-answer fallback has no place for
  tools, so tools and tool messages are a 400 naming the model. ``tool_choice: "none"``
  with tools and no tool messages is accepted there: no call may be made, so the reply is
  the same with or without the listing.

With ``tool_choice: "none"`` the listing of the system-prompt form is left out too: it tells
the model to answer with calls only, which "none" forbids. A native template still gets the
tools (as OpenAI's models still see them).

Parsing (:func:`parse_tool_calls`) reads every form these teach: ``<tool_call>`` blocks
holding one call object (Hermes, Qwen) or a list of them (SmolLM2), the last block possibly
unclosed, or a reply that is only a call object or a list of them (bare or in a ```` ```json ````
fence). A call object is ``{"name": ..., "arguments": {...}}`` (``"parameters"`` is read as
``"arguments"``, as Llama 3 writes it). The rule is all or nothing: when any block fails to
parse, names a function the request did not offer (or not the one ``tool_choice`` names),
has arguments that are not a JSON object, or the reply holds more than one call while
``parallel_tool_calls`` is false, the whole reply stays content as the model wrote it
(``finish_reason`` as generated, usually ``"stop"``). Arguments are not checked against the
function's schema (OpenAI's non-strict calls are not either); a forced call is, by the
grammar that :func:`call_constraint` feeds.

Example:
    >>> spec = check_tools([{"type": "function", "function": {"name": "get_weather"}}], "auto")
    >>> reply = parse_tool_calls('<tool_call>[{"name": "get_weather", "arguments": '
    ...                          '{"city": "Paris"}}]</tool_call>', spec, seed=1)
    >>> reply.finish_reason, reply.tool_calls[0]["function"]["arguments"]
    ('tool_calls', '{"city": "Paris"}')
"""

from __future__ import annotations

import json
import random
import re
import secrets
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import jinja2
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError

from tokenwise.errors import TokenwiseError
from tokenwise.models.chat_template import control_strings_in
from tokenwise.serving.chat_format import ChatPrompt, render
from tokenwise.serving.errors import APIError, from_validation

__all__ = [
    "BARE_JSON", "HERMES", "NAME_PATTERN", "TOOL_CALL_LIST", "CallConstraint", "CallFormat",
    "FunctionDefinition", "NamedToolChoice", "ParsedReply", "Tool", "ToolCall", "ToolCallFunction",
    "ToolChat", "ToolChoice", "ToolChoiceFunction", "ToolSpec", "call_constraint", "check_tools",
    "parse_tool_calls", "render_tool_chat", "stream_safe_prefix", "template_supports_tools",
    "tools_system_text",
]

_STRICT = ConfigDict(extra="forbid", strict=True)

#: what OpenAI allows in a function's name.
NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"
#: most tools one request may offer (OpenAI's limit).
MAX_TOOLS = 128


# --- wire models (the request schema imports these) ---


class FunctionDefinition(BaseModel):
    """A tool's ``function``: its name, what it does, its arguments' JSON schema."""

    model_config = _STRICT
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    description: str | None = None
    #: a JSON schema of ``"type": "object"``; left out (or ``{}``), the function takes none
    parameters: dict[str, Any] | None = None
    #: accepted; a forced call follows the schema exactly whatever it says
    strict: bool | None = None


class Tool(BaseModel):
    """One entry of ``tools``: only function tools exist here."""

    model_config = _STRICT
    type: Literal["function"]
    function: FunctionDefinition


class ToolChoiceFunction(BaseModel):
    """The function a named ``tool_choice`` forces."""

    model_config = _STRICT
    name: str


class NamedToolChoice(BaseModel):
    """``tool_choice: {"type": "function", "function": {"name": ...}}``."""

    model_config = _STRICT
    type: Literal["function"]
    function: ToolChoiceFunction


def _choice_kind(value: Any) -> str:
    """Which member of :data:`ToolChoice` validates ``value``: an object the named choice,
    anything else the strings (whose error lists them)."""
    return "dict[str, object]" if isinstance(value, (dict, NamedToolChoice)) else "str"


#: ``tool_choice`` as the wire gives it. Tagged by the value's JSON kind, so a bad value gets
#: the one member's error, and its location names the field, not a member (the tags are
#: what :func:`tokenwise.serving.errors.from_validation` leaves out of a location).
ToolChoice = Annotated[
    Annotated[Literal["none", "auto", "required"], Tag("str")]
    | Annotated[NamedToolChoice, Tag("dict[str, object]")],
    Discriminator(_choice_kind)]


class ToolCallFunction(BaseModel):
    """A call's function: its name and its arguments as a JSON string."""

    model_config = _STRICT
    name: str
    arguments: str


class ToolCall(BaseModel):
    """One entry of an assistant message's ``tool_calls``."""

    model_config = _STRICT
    id: str
    type: Literal["function"]
    function: ToolCallFunction


class _ToolFields(BaseModel):
    """The two request fields, validated together so that errors name them."""

    model_config = _STRICT
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None


# --- checking ---


@dataclass(frozen=True)
class ToolSpec:
    """A request's tools, checked.

    Attributes:
        functions: each tool's function as ``{"name", "description"?, "parameters"}``, its
            parameters a JSON schema of an object (``{"type": "object", "properties": {}}``
            for a function that takes none).
        choice: ``"none"``, ``"auto"``, ``"required"`` or ``"function"`` (a named one).
        name: the function a named choice forces; None otherwise.
        parallel: whether a reply may hold several calls (``parallel_tool_calls``).
    """

    functions: tuple[dict[str, Any], ...]
    choice: Literal["none", "auto", "required", "function"]
    name: str | None = None
    parallel: bool = True

    def openai_tools(self) -> list[dict[str, Any]]:
        """The tools in OpenAI's shape, as templates' ``tools`` variable takes them."""
        return [{"type": "function", "function": dict(f)} for f in self.functions]

    def callable_names(self) -> list[str]:
        """The functions a reply may call: the named one, or all of them."""
        return [self.name] if self.name else [f["name"] for f in self.functions]


_NO_PARAMETERS = {"type": "object", "properties": {}}


def _validated(tools: Any, tool_choice: Any) -> _ToolFields:
    """The two fields as models, validated (models given are dumped and checked again)."""
    def plain(value: Any) -> Any:
        return value.model_dump() if isinstance(value, BaseModel) else value

    try:
        return _ToolFields.model_validate(
            {"tools": [plain(t) for t in tools] if isinstance(tools, (list, tuple)) else tools,
             "tool_choice": plain(tool_choice)})
    except ValidationError as exc:
        raise from_validation(exc) from None


def _parameters(fn: FunctionDefinition, i: int) -> dict[str, Any]:
    """The function's parameters schema; a 400 unless it describes a JSON object."""
    if not fn.parameters:
        return dict(_NO_PARAMETERS)
    kind = fn.parameters.get("type")
    if kind != "object":
        raise APIError(400, f"Invalid schema for function {fn.name!r}: parameters must be a "
                            f"JSON schema of type 'object' (the arguments of a call are a "
                            f"JSON object); got type {kind!r}",
                       param=f"tools.{i}.function.parameters", code="invalid_value")
    return fn.parameters


def check_tools(tools: Sequence[Tool | dict[str, Any]] | None,
                tool_choice: str | NamedToolChoice | dict[str, Any] | None = None,
                parallel_tool_calls: bool | None = None) -> ToolSpec | None:
    """Check a request's ``tools`` and ``tool_choice``; a 400 naming the bad field otherwise.

    Args:
        tools: the request's ``tools``, as :class:`Tool` models or plain dicts.
        tool_choice: ``"none"``, ``"auto"``, ``"required"``, a :class:`NamedToolChoice` or
            its dict; None means ``"auto"`` when there are tools.
        parallel_tool_calls: None or True lets a reply hold several calls; False, one.

    Returns:
        The :class:`ToolSpec`, or None when the request has no tools (then ``tool_choice``
        may only be left out or ``"none"``).

    Raises:
        APIError: 400 for an empty ``tools``, a bad entry, two functions of one name, a
            parameters schema that is not an object's, a ``tool_choice`` without tools or
            naming a function that is not among them.

    Example:
        >>> check_tools([{"type": "function", "function": {"name": "f"}}], "required").choice
        'required'
        >>> check_tools(None, "auto")
        Traceback (most recent call last):
        ...
        tokenwise.serving.errors.APIError: tool_choice 'auto' needs tools; give tools or drop ...
    """
    fields = _validated(tools, tool_choice)
    choice = fields.tool_choice
    if fields.tools is None:
        if choice is None or choice == "none":
            return None
        shown = repr(choice) if isinstance(choice, str) else "a named function"
        raise APIError(400, f"tool_choice {shown} needs tools; give tools or drop "
                            "tool_choice", param="tool_choice", code="invalid_value")
    if not fields.tools:
        raise APIError(400, "Invalid value for tools: the list is empty; give at least 1 "
                            "tool or leave tools out", param="tools", code="invalid_value")
    if len(fields.tools) > MAX_TOOLS:  # OpenAI's limit; bounds one request's grammar work
        raise APIError(400, f"Invalid value for tools: {len(fields.tools)} tools; allowed at "
                            f"most {MAX_TOOLS}", param="tools", code="invalid_value")
    functions: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for i, tool in enumerate(fields.tools):
        fn = tool.function
        if fn.name in seen:
            raise APIError(400, f"tools {seen[fn.name]} and {i} both define a function named "
                                f"{fn.name!r}; function names must be unique",
                           param=f"tools.{i}.function.name", code="invalid_value")
        seen[fn.name] = i
        entry: dict[str, Any] = {"name": fn.name}
        if fn.description is not None:
            entry["description"] = fn.description
        entry["parameters"] = _parameters(fn, i)
        functions.append(entry)
    parallel = parallel_tool_calls is not False
    if isinstance(choice, NamedToolChoice):
        name = choice.function.name
        if name not in seen:
            raise APIError(400, f"tool_choice names the function {name!r}, which is not among "
                                f"the tools; tools define: {', '.join(seen)}",
                           param="tool_choice.function.name", code="invalid_value")
        return ToolSpec(tuple(functions), "function", name, parallel)
    return ToolSpec(tuple(functions), choice or "auto", None, parallel)


# --- call formats ---


@dataclass(frozen=True)
class CallFormat:
    """How a model writes its calls.

    Attributes:
        name: ``"tool-call-list"``, ``"hermes"`` or ``"json"``.
        prefix: the text before the call JSON.
        suffix: the text after it.
        as_list: the JSON between prefix and suffix is a list of call objects (else one).
    """

    name: str
    prefix: str
    suffix: str
    as_list: bool


#: SmolLM2's documented form: ``<tool_call>[{"name": ..., "arguments": {...}}]</tool_call>``.
TOOL_CALL_LIST = CallFormat("tool-call-list", "<tool_call>", "</tool_call>", True)
#: Hermes / Qwen 2.5: one ``<tool_call>`` block per call.
HERMES = CallFormat("hermes", "<tool_call>\n", "\n</tool_call>", False)
#: a bare call object (Llama 3's form, for native templates without ``<tool_call>``).
BARE_JSON = CallFormat("json", "", "", False)

_PROBE_NAME = "tokenwise_probe_function_q7"
_PROBE = {"type": "function", "function": {"name": _PROBE_NAME, "description": "probe",
                                           "parameters": dict(_NO_PARAMETERS)}}


def template_supports_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template renders the tools it is given.

    A template that ignores its ``tools`` variable renders without error, so the test is
    whether a probe function's name shows in the prompt.

    Args:
        tokenizer: a Hugging Face tokenizer.

    Example:
        >>> from tokenwise.models import load
        >>> template_supports_tools(load("tw-small").tokenizer)  # no template at all
        False
    """
    if not getattr(tokenizer, "chat_template", None):
        return False
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}],
                                             tools=[_PROBE], tokenize=False,
                                             add_generation_prompt=True)
    except Exception:  # a template that fails on tools does not support them
        return False
    return _PROBE_NAME in str(text)


def _native_format(tokenizer: Any) -> CallFormat:
    """The call form a native template teaches: Hermes when it mentions ``<tool_call>``."""
    template = tokenizer.chat_template
    source = template if isinstance(template, str) else json.dumps(template)
    return HERMES if "<tool_call>" in source else BARE_JSON


# --- rendering ---


@dataclass
class ToolChat:
    """A chat rendered with its tools.

    Attributes:
        prompt: the rendered prompt (as :func:`tokenwise.serving.chat_format.render` gives).
        mode: ``"plain"`` (no tools involved), ``"native"`` (the template renders them) or
            ``"system-prompt"`` (listed in the system message, see the module docstring).
        call_format: how the model is taught to write calls; None in ``"plain"`` mode.
    """

    prompt: ChatPrompt
    mode: str
    call_format: CallFormat | None = None


def _text(content: Any) -> str:
    """Message content as one string: None is "", text parts are joined."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part["text"] if isinstance(part, dict) else part.text for part in content)


def _arguments(raw: str) -> Any:
    """A call's arguments for the prompt: the JSON object the string holds, else the string."""
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        return raw
    return value if isinstance(value, dict) else raw


def _check_tool_messages(messages: list[dict[str, Any]]) -> bool:
    """Check that tool results answer the calls before them, each call answered; whether the
    chat holds tool calls or results at all."""
    open_ids: dict[str, int] = {}  # ids of the last assistant turn's calls not yet answered
    any_tools = False
    for i, m in enumerate(messages):
        role = m.get("role")
        calls = m.get("tool_calls") or []
        if calls and role != "assistant":
            raise APIError(400, f"messages.{i} has role {role!r}; only assistant messages may "
                                "hold tool_calls", param=f"messages.{i}.tool_calls",
                           code="invalid_value")
        if role == "tool":
            any_tools = True
            call_id = m.get("tool_call_id")
            if not call_id:
                raise APIError(400, f"messages.{i} has role 'tool' but no tool_call_id; give "
                                    "the id of the call it answers",
                               param=f"messages.{i}.tool_call_id",
                               code="missing_required_parameter")
            if call_id not in open_ids:
                raise APIError(400, f"messages.{i}: a message with role 'tool' must answer a "
                                    f"call of the assistant message just before; no open call "
                                    f"has the id {call_id!r}",
                               param=f"messages.{i}.tool_call_id", code="invalid_value")
            del open_ids[call_id]
            continue
        if open_ids:
            raise APIError(400, f"an assistant message with tool_calls must be followed by "
                                f"tool messages answering each call; no answer to "
                                f"{', '.join(map(repr, open_ids))} before messages.{i}",
                           param=f"messages.{open_ids[next(iter(open_ids))]}.tool_calls",
                           code="invalid_value")
        if calls:
            any_tools = True
            open_ids = {c["id"]: i for c in _call_dicts(m, i)}
    if open_ids:
        raise APIError(400, f"an assistant message with tool_calls must be followed by tool "
                            f"messages answering each call; no answer to "
                            f"{', '.join(map(repr, open_ids))}",
                       param=f"messages.{open_ids[next(iter(open_ids))]}.tool_calls",
                       code="invalid_value")
    return any_tools


def _call_dicts(message: dict[str, Any], i: int = 0) -> list[dict[str, Any]]:
    """An assistant message's calls as dicts, each checked as a :class:`ToolCall` (a 400
    naming ``messages.{i}.tool_calls...`` otherwise)."""
    out = []
    for j, call in enumerate(message.get("tool_calls") or []):
        if isinstance(call, ToolCall):
            out.append(call.model_dump())
            continue
        try:
            out.append(ToolCall.model_validate(call).model_dump())
        except ValidationError as exc:
            err = from_validation(exc)
            where = f"messages.{i}.tool_calls.{j}" + (f".{err.param}" if err.param else "")
            said = err.message.replace(err.param, where) if err.param else \
                err.message.replace("the body", where)
            raise APIError(400, said, param=where, code=err.code) from None
    return out


def _plain_messages(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{"role": m["role"], "content": _text(m.get("content"))} for m in messages]


def _native_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages for a template that knows tools: arguments as objects (templates write them
    with ``tojson``, as vLLM hands them over), text parts joined."""
    out = []
    for m in messages:
        msg = {k: v for k, v in m.items() if v is not None}
        if "content" in m:
            msg["content"] = _text(m["content"]) if m["content"] is not None else None
        calls = _call_dicts(m)
        if calls:
            msg["tool_calls"] = [
                {"id": c["id"], "type": "function",
                 "function": {"name": c["function"]["name"],
                              "arguments": _arguments(c["function"]["arguments"])}}
                for c in calls]
        out.append(msg)
    return out


def tools_system_text(spec: ToolSpec) -> str:
    """The listing of the system-prompt form (see the module docstring).

    Args:
        spec: the checked tools.

    Example:
        >>> spec = check_tools([{"type": "function", "function": {"name": "now"}}])
        >>> print(tools_system_text(spec).splitlines()[2])
        <tools>[{"name": "now", "parameters": {"type": "object", "properties": {}}}]</tools>
    """
    listing = json.dumps(list(spec.functions), ensure_ascii=False)
    return ("You can call functions to answer the user. These are the functions, as JSON "
            "schemas:\n\n"
            f"<tools>{listing}</tools>\n\n"
            "To call functions, reply with a JSON list of calls, each with a function's "
            "name and its arguments, between <tool_call> and </tool_call>, and nothing else:\n"
            '<tool_call>[{"name": "function_name", "arguments": {"argument": "value"}}]'
            "</tool_call>\n"
            "Use only the functions listed, with arguments of the types their schemas give. "
            "If no function fits the request, answer in plain text.")


def _call_text(calls: list[dict[str, Any]]) -> str:
    objs = [{"name": c["function"]["name"], "arguments": _arguments(c["function"]["arguments"])}
            for c in calls]
    return TOOL_CALL_LIST.prefix + json.dumps(objs, ensure_ascii=False) + TOOL_CALL_LIST.suffix


def _system_prompt_messages(messages: list[dict[str, Any]], spec: ToolSpec | None
                            ) -> list[dict[str, str]]:
    """Messages for a template that ignores tools (see the module docstring)."""
    out: list[dict[str, str]] = []
    after_tool = False  # the last turn holds tool results: the next one joins it
    for m in messages:
        role, text = m["role"], _text(m.get("content"))
        calls = _call_dicts(m)
        if calls:
            text = (text + "\n" if text else "") + _call_text(calls)
        if role == "tool":
            text = f"<tool_response>{text}</tool_response>"
            if after_tool:
                out[-1]["content"] += "\n" + text
            else:
                out.append({"role": "user", "content": text})
            after_tool = True
            continue
        out.append({"role": role, "content": text})
        after_tool = False
    if spec is not None:
        listing = tools_system_text(spec)
        if out and out[0]["role"] in ("system", "developer"):
            out[0] = {"role": out[0]["role"], "content": out[0]["content"] + "\n\n" + listing}
        else:
            out.insert(0, {"role": "system", "content": listing})
    return out


def render_tool_chat(tokenizer: Any, messages: list[dict[str, Any]], spec: ToolSpec | None,
                     *, model: str) -> ToolChat:
    """Render a chat that may hold tools, tool calls and tool results, for the model's template.

    Without tools and tool messages this is :func:`tokenwise.serving.chat_format.render`
    unchanged (mode ``"plain"``). Otherwise the mode follows the template (module docstring).

    Args:
        tokenizer: the model's Hugging Face tokenizer.
        messages: OpenAI-shaped dicts: ``role`` (system, developer, user, assistant, tool),
            ``content`` (a string, text parts, or None for an assistant that only calls),
            ``tool_calls`` (an assistant's, each ``{"id", "type", "function": {"name",
            "arguments"}}``, dicts or :class:`ToolCall`), ``tool_call_id`` (a tool's).
        spec: the checked tools (:func:`check_tools`), None when the request has none.
        model: the model's id, named in the 400 when it cannot take tools.

    Raises:
        APIError: 400 when tool messages do not answer the calls before them, when the model
            has no chat template but tools or tool messages need one, or when the template
            fails on the chat.

    Example:
        >>> from tokenwise.models import load
        >>> tok = load("tw-small").tokenizer
        >>> render_tool_chat(tok, [{"role": "user", "content": "7+2="}], None,
        ...                  model="tw-small").mode
        'plain'
    """
    has_history = _check_tool_messages(messages)
    live = spec if spec is not None and spec.choice != "none" else None
    if not getattr(tokenizer, "chat_template", None):
        if live is not None or has_history:
            what = "tools" if live is not None else "tool calls or tool messages"
            at = "tools" if live is not None else next(
                f"messages.{i}" for i, m in enumerate(messages)
                if m.get("role") == "tool" or m.get("tool_calls"))
            raise APIError(400, f"The model {model!r} has no chat template, so it cannot take "
                                f"{what}; use a model with a chat template (e.g. smollm2-135m)",
                           param=at, code="tools_not_supported")
        return ToolChat(_render(tokenizer, _plain_messages(messages)), "plain")
    if spec is None and not has_history:
        return ToolChat(_render(tokenizer, _plain_messages(messages)), "plain")
    if template_supports_tools(tokenizer):
        tools = spec.openai_tools() if spec is not None else None
        found = control_strings_in(tokenizer, json.dumps(tools, ensure_ascii=False))
        if tools and found:
            raise APIError(400, f"the tools hold the control token string {found[0]!r}, which "
                                "the chat template would read as the control token; remove it",
                           param="tools", code="invalid_value")
        return ToolChat(_render(tokenizer, _native_messages(messages), tools), "native",
                        _native_format(tokenizer))
    return ToolChat(_render(tokenizer, _system_prompt_messages(messages, live)),
                    "system-prompt", TOOL_CALL_LIST)


def _render(tokenizer: Any, messages: list[dict[str, Any]],
            tools: list[dict[str, Any]] | None = None) -> ChatPrompt:
    """:func:`render`, its failures (a control token that cannot stay text, a template that
    refuses the chat) as 400s about the messages."""
    try:
        return render(tokenizer, messages, tools=tools)
    except TokenwiseError as exc:
        raise APIError(400, str(exc), param="messages", code="invalid_value") from exc
    except jinja2.TemplateError as exc:  # the template refused this chat (raise_exception)
        raise APIError(400, f"the model's chat template cannot render these messages: {exc}",
                       param="messages", code="invalid_value") from exc


# --- parsing ---


@dataclass
class ParsedReply:
    """A reply split into content and calls.

    Attributes:
        content: the text outside the calls, stripped (None when nothing is left), or the
            whole reply as written when it holds no valid call.
        tool_calls: OpenAI-shaped calls, ``[{"id", "type": "function", "function": {"name",
            "arguments": "<JSON>"}}]``; empty when none.
        finish_reason: ``"tool_calls"`` when there are calls; None to keep the generation's.
    """

    content: str | None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None


_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.DOTALL)
_FENCE = re.compile(r"\A```(?:json)?\s*\n?(.*?)\n?```\Z", re.DOTALL)
_ID_CHARS = string.ascii_letters + string.digits


class _NotACall(ValueError):
    """A piece of the reply that is not a valid call (the reply stays content)."""


def _calls_in(value: Any, names: set[str]) -> list[tuple[str, dict[str, Any]]]:
    """``(name, arguments)`` of the call object or list of them ``value`` holds."""
    items = value if isinstance(value, list) else [value]
    calls = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or \
                set(item) - {"name", "arguments", "parameters"} or \
                {"arguments", "parameters"} <= set(item):
            raise _NotACall("not a call object")
        if item["name"] not in names:
            raise _NotACall(f"unknown function {item['name']!r}")
        args = item.get("arguments", item.get("parameters", {}))
        if isinstance(args, str):  # some models write the arguments as a JSON string
            try:
                args = json.loads(args)
            except ValueError as exc:
                raise _NotACall("arguments are not JSON") from exc
        if not isinstance(args, dict):
            raise _NotACall("arguments are not a JSON object")
        calls.append((item["name"], args))
    return calls


def _call_ids(n: int, seed: int | None, index: int) -> list[str]:
    """``n`` distinct ids ``call_`` + 24 letters/digits; from ``seed`` and the choice's
    ``index`` when a seed is given (so a seeded request repeats its ids), random otherwise."""
    draw = random.Random(f"tokenwise-tool-call:{seed}:{index}").choice if seed is not None \
        else secrets.choice
    ids: list[str] = []
    while len(ids) < n:
        new = "call_" + "".join(draw(_ID_CHARS) for _ in range(24))
        if new not in ids:
            ids.append(new)
    return ids


def parse_tool_calls(text: str, spec: ToolSpec | None, *, seed: int | None = None,
                     index: int = 0) -> ParsedReply:
    """Split a generated reply into ``tool_calls`` and content (rule: the module docstring).

    Args:
        text: the reply as generated (stop strings and the end-of-turn token removed).
        spec: the checked tools; None or ``choice == "none"`` parses nothing.
        seed: the request's seed: ids are derived from it and ``index`` when given.
        index: the choice's index (distinct choices of one seeded request get distinct ids).

    Example:
        >>> spec = check_tools([{"type": "function", "function": {"name": "add"}}])
        >>> r = parse_tool_calls('Sure. <tool_call>{"name": "add", "arguments": {"a": 1}}'
        ...                      '</tool_call>', spec, seed=0)
        >>> r.content, r.tool_calls[0]["function"]["name"], r.finish_reason
        ('Sure.', 'add', 'tool_calls')
        >>> parse_tool_calls('<tool_call>{"name": "rm"}</tool_call>', spec).tool_calls
        []
    """
    if spec is None or spec.choice == "none":
        return ParsedReply(text)
    names = set(spec.callable_names())
    calls: list[tuple[str, dict[str, Any]]] = []
    try:
        blocks = list(_BLOCK.finditer(text))
        if blocks:
            for block in blocks:
                calls += _calls_in(json.loads(block.group(1)), names)
            rest = _BLOCK.sub("\n", text).strip()
        else:
            body = text.strip()
            fenced = _FENCE.match(body)
            body = fenced.group(1) if fenced else body
            if not body.startswith(("{", "[")):
                return ParsedReply(text)
            calls = _calls_in(json.loads(body), names)
            rest = ""
    except (ValueError, _NotACall):  # json's errors are ValueErrors
        return ParsedReply(text)
    if not calls or (len(calls) > 1 and not spec.parallel):
        return ParsedReply(text)
    ids = _call_ids(len(calls), seed, index)
    out = [{"id": i, "type": "function",
            "function": {"name": name, "arguments": json.dumps(args, ensure_ascii=False)}}
           for i, (name, args) in zip(ids, calls, strict=True)]
    return ParsedReply(re.sub(r"\n{3,}", "\n\n", rest) or None, out, "tool_calls")


def stream_safe_prefix(text: str) -> int:
    """How many leading characters of a partial reply are content whatever follows.

    For streaming with tools: send these as content deltas, hold the rest until the reply
    ends and :func:`parse_tool_calls` has split it. A reply that starts (after whitespace)
    with ``{``, ``[`` or a fence may be a bare call, so nothing of it is safe; else the text
    up to a ``<tool_call>`` tag, or up to a tail that could begin one, is. (Content parsed
    from a reply with calls is stripped, so whitespace just before a tag that was streamed
    is absent from it.)

    Args:
        text: the reply so far.

    Example:
        >>> stream_safe_prefix("Let me check. <tool_")
        14
        >>> stream_safe_prefix('  {"name"')
        0
    """
    if text.lstrip().startswith(("{", "[", "`")) or not text.strip():
        return 0
    tag = "<tool_call>"
    at = text.find(tag)
    if at >= 0:
        return at
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:k]):
            return len(text) - k
    return len(text)


# --- the schema of a forced call ---


@dataclass(frozen=True)
class CallConstraint:
    """What a forced reply must be: ``prefix`` + JSON following ``schema`` + ``suffix``.

    Attributes:
        schema: the JSON schema of the call object (or of the list of them, in a list form).
        prefix: the text before the JSON (``"<tool_call>"`` in SmolLM2's form).
        suffix: the text after it.
    """

    schema: dict[str, Any]
    prefix: str
    suffix: str


def _moved_refs(node: Any, base: str) -> Any:
    """``node`` with every local ``$ref`` (``#`` or ``#/...``, relative to the document the
    node came from) re-rooted at ``base``, where that document now sits."""
    if isinstance(node, dict):
        out = {k: _moved_refs(v, base) for k, v in node.items()}
        ref = node.get("$ref")
        if isinstance(ref, str) and (ref == "#" or ref.startswith("#/")):
            out["$ref"] = base + ref[1:]
        return out
    if isinstance(node, list):
        return [_moved_refs(v, base) for v in node]
    return node


def _call_schema(function: dict[str, Any], index: int, defs: dict[str, Any]) -> dict[str, Any]:
    """The schema of one call of ``function``. Its ``parameters`` move into ``defs`` (the
    call schema's root ``$defs``) so that their local references (``#/$defs/City`` from a
    nested pydantic model, ``#`` for recursion) still resolve once nested in the call."""
    params = function["parameters"]
    if params == _NO_PARAMETERS:  # takes none: an empty object, not any object
        params = {**params, "additionalProperties": False}
    key = f"tool_{index}_parameters"
    defs[key] = _moved_refs(params, f"#/$defs/{key}")
    return {"type": "object",
            "properties": {"name": {"type": "string", "enum": [function["name"]]},
                           "arguments": {"$ref": f"#/$defs/{key}"}},
            "required": ["name", "arguments"], "additionalProperties": False}


def call_constraint(spec: ToolSpec | None, call_format: CallFormat | None
                    ) -> CallConstraint | None:
    """The constraint a reply must meet when ``tool_choice`` forces a call.

    ``"required"`` forces a call of any of the tools, a named choice one of that function;
    ``"auto"`` and ``"none"`` force nothing (None). In a list form (SmolLM2's) the JSON is a
    list of at least one call (exactly one when ``parallel_tool_calls`` is false); in the
    others, one call object. :func:`parse_tool_calls` reads any text that meets it.

    Args:
        spec: the checked tools.
        call_format: the format :func:`render_tool_chat` reported (``ToolChat.call_format``).

    Example:
        >>> spec = check_tools([{"type": "function", "function": {"name": "now"}}], "required")
        >>> c = call_constraint(spec, TOOL_CALL_LIST)
        >>> c.prefix, c.suffix, c.schema["type"], c.schema["minItems"]
        ('<tool_call>', '</tool_call>', 'array', 1)
    """
    if spec is None or spec.choice in ("none", "auto") or call_format is None:
        return None
    defs: dict[str, Any] = {}
    options = [_call_schema(f, i, defs) for i, f in enumerate(spec.functions)
               if f["name"] in spec.callable_names()]
    call = options[0] if len(options) == 1 else {"anyOf": options}
    if not call_format.as_list:
        return CallConstraint({**call, "$defs": defs}, call_format.prefix, call_format.suffix)
    schema: dict[str, Any] = {"type": "array", "items": call, "minItems": 1}
    if not spec.parallel:
        schema["maxItems"] = 1
    return CallConstraint({**schema, "$defs": defs}, call_format.prefix, call_format.suffix)
