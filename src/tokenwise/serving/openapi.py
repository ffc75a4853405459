"""The server's OpenAPI document, served at ``GET /openapi.json``: every route, request and
response as the server really takes and answers them.

The completion and tokenizer routes read their bodies themselves (so that a bad body is an
OpenAI-shaped 400 naming the field, never FastAPI's 422), which leaves FastAPI's own
generator with nothing to say about them; :func:`build_document` writes the document from
the request models of :mod:`tokenwise.serving.schemas` and the response models here instead.

What the document says is what this server does, for the server it is built for:

- ``model`` lists the served ids; ``max_tokens``, ``n`` and ``tokenwise.uncertainty.n`` carry
  the server's configured limits (a larger value is a 400).
- Every route lists the errors it can answer, each in OpenAI's shape (:class:`ErrorBody`):
  400 (bad body, bad ``Host``), 401 (only when the server has an API key, on the routes it
  guards), 403 (an origin not allowed), 404, 408 and 415 (POST bodies), 413, 429 (a full
  queue, with ``Retry-After``), 500, 503 (shutting down) and 504 (the request's deadline).
  FastAPI's 422 never occurs: the routes validate their bodies themselves.
- A streamed reply (``stream: true``) is ``text/event-stream``: each ``data:`` line holds a
  chunk (or, when generation fails after the headers went out, an error body), and the stream
  ends with ``data: [DONE]``. The media type's schema describes one event (as OpenAPI 3.1
  tools read an event stream): its ``data`` string, whose ``contentSchema`` is the chunk's.

Example:
    >>> from tokenwise.serving.config import ServerConfig
    >>> from tokenwise.serving.app import create_app
    >>> app = create_app(ServerConfig(models=("tw-small",)))
    >>> document(app)
    >>> doc = app.openapi()
    >>> doc["components"]["schemas"]["ChatCompletionRequest"]["properties"]["model"]["enum"]
    ['tw-small']
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from tokenwise.sampling.penalties import MAX_REPETITION_PENALTY, MIN_REPETITION_PENALTY
from tokenwise.serving.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)

OPENAPI_PATH = "/openapi.json"
#: the largest seed the samplers take (seeds are unsigned 64-bit)
MAX_SEED = 2**64 - 1
_REF = "#/components/schemas/{model}"


class _Out(BaseModel):
    """Base of the response models: a field the server does not document is a violation."""

    model_config = ConfigDict(extra="forbid")


class ErrorDetail(_Out):
    """What went wrong: ``message`` names the bad field and what is allowed."""

    message: str
    #: ``invalid_request_error``, ``rate_limit_error``, ``timeout_error``, ``server_error``
    type: str
    #: the request field at fault, dotted (``tokenwise.sampler.0.alpha``), when one is
    param: str | None
    #: a short machine-readable code (``unknown_field``, ``model_not_found``, ...)
    code: str | None


class ErrorBody(_Out):
    """Every error, in OpenAI's shape."""

    error: ErrorDetail


class Health(_Out):
    """``GET /health``: ``ok`` (200), or ``draining`` (503) once a shutdown began."""

    status: Literal["ok", "draining"]


class ModelCard(_Out):
    """One served model."""

    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    context_length: int = Field(ge=1)
    #: whether the model's tokenizer has a chat template (else chat uses a Q/A fallback)
    chat_template: bool


class ModelList(_Out):
    """``GET /v1/models``."""

    object: Literal["list"]
    data: list[ModelCard]


class Usage(_Out):
    """Token counts of one response."""

    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    total_tokens: int = Field(ge=0)


class TopLogprob(_Out):
    """One of the likeliest tokens at a step."""

    token: str
    logprob: float
    bytes: list[int]


class ChatTokenLogprob(_Out):
    """One generated token of a chat reply, with its entropy (nats)."""

    token: str
    logprob: float | None
    bytes: list[int]
    top_logprobs: list[TopLogprob]
    entropy: float | None
    #: only in a reply held to a constraint (JSON output, a forced tool call)
    constrained_entropy: float | None = None


class ChatLogprobs(_Out):
    """``choices[i].logprobs`` of a chat reply."""

    content: list[ChatTokenLogprob]
    refusal: None


class TextLogprobs(_Out):
    """``choices[i].logprobs`` of a legacy completion: parallel lists, one entry a token."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]
    token_entropies: list[float | None]
    #: only in a reply held to a constraint
    token_constrained_entropies: list[float | None] | None = None


class CallFunction(_Out):
    """The function a tool call names, with its arguments as a JSON text."""

    name: str
    arguments: str


class ToolCallOut(_Out):
    """One tool call of a reply."""

    id: str
    type: Literal["function"]
    function: CallFunction


class ToolCallDelta(ToolCallOut):
    """One tool call of a stream (each call whole, with its position)."""

    index: int = Field(ge=0)


class AssistantMessage(_Out):
    """The reply of a chat choice; ``content`` is null when it holds only tool calls."""

    role: Literal["assistant"]
    content: str | None
    refusal: None
    tool_calls: list[ToolCallOut] | None = None


FinishReason = Literal["stop", "length", "tool_calls"]


class ChatChoice(_Out):
    """One choice of a chat reply."""

    index: int = Field(ge=0)
    message: AssistantMessage
    logprobs: ChatLogprobs | None
    finish_reason: FinishReason


class TextChoice(_Out):
    """One choice of a legacy completion (or of one of its stream chunks, where
    ``finish_reason`` is null until the choice ends)."""

    index: int = Field(ge=0)
    text: str
    logprobs: TextLogprobs | None
    finish_reason: FinishReason | None


class TokenwiseInfo(BaseModel):
    """The ``tokenwise`` object of a reply: how it was made. The nested objects of the
    optional features (compression, uncertainty, EAD, tools, constraint) are described in
    their modules and may grow."""

    model_config = ConfigDict(extra="forbid")
    model: str
    #: the sampler steps as run, each ``{"name", ...its parameters}``
    sampler: list[dict[str, Any]]
    #: chat only: ``"template"`` or the Q/A fallback's name
    chat_format: str | None = None
    tools: dict[str, Any] | None = None
    constraint: dict[str, Any] | None = None
    #: one seed per choice (null for a choice decoded greedily, which draws nothing)
    seeds: list[int | None]
    stop: list[str]
    max_tokens: int = Field(ge=0)
    #: the prompt as fed to the model (one per prompt when several), text or token ids
    prompt: str | list[str] | list[int] | list[list[int]]
    compression: dict[str, Any] | None
    uncertainty: dict[str, Any] | None
    ead: dict[str, Any] | None
    #: with EAD: the share of tokens the large model wrote
    large_share: float | None
    #: with ``tokenwise.kv``: ``{"setting": the press or quantiser as applied, "choices": one
    #: report per choice of what its cache held (prompt, seen and kept tokens, cache, full
    #: and peak bytes; with EAD one per model under "small" and "large")}``
    kv: dict[str, Any] | None = None
    #: each choice's mean per-token entropy (nats); null where the engine reported none
    mean_entropy: list[float | None] | None = None
    mean_constrained_entropy: list[float | None] | None = None
    #: with ``tokenwise.route``: ``{"router", "strategy", "model" (null when it abstained),
    #: "feature_model", "policy", "decision": {"label", "probabilities", "reason"},
    #: "abstained", "flops", "n", "samples", "votes", "seed"}``
    route: dict[str, Any] | None = None


class ChatCompletion(_Out):
    """``POST /v1/chat/completions`` (not streamed)."""

    id: str = Field(pattern=r"^chatcmpl-")
    object: Literal["chat.completion"]
    created: int
    model: str
    system_fingerprint: None
    choices: list[ChatChoice]
    usage: Usage
    tokenwise: TokenwiseInfo


class TextCompletion(_Out):
    """``POST /v1/completions`` (not streamed)."""

    id: str = Field(pattern=r"^cmpl-")
    object: Literal["text_completion"]
    created: int
    model: str
    system_fingerprint: None
    choices: list[TextChoice]
    usage: Usage
    tokenwise: TokenwiseInfo


class ChatDelta(_Out):
    """What a chat stream chunk adds to a choice."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatChunkChoice(_Out):
    """One choice of a chat stream chunk."""

    index: int = Field(ge=0)
    delta: ChatDelta
    logprobs: ChatLogprobs | None
    finish_reason: FinishReason | None


class ChatCompletionChunk(_Out):
    """One event of a streamed chat reply. With ``stream_options.include_usage`` every chunk
    has ``usage: null`` and a last one with no choices carries the usage; the chunk with the
    last ``finish_reason`` carries the ``tokenwise`` object."""

    id: str = Field(pattern=r"^chatcmpl-")
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    system_fingerprint: None
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    tokenwise: TokenwiseInfo | None = None


class TextCompletionChunk(_Out):
    """One event of a streamed legacy completion (see :class:`ChatCompletionChunk`)."""

    id: str = Field(pattern=r"^cmpl-")
    object: Literal["text_completion"]
    created: int
    model: str
    system_fingerprint: None
    choices: list[TextChoice]
    usage: Usage | None = None
    tokenwise: TokenwiseInfo | None = None


class TokenizeResponse(_Out):
    """``POST /tokenize``."""

    count: int = Field(ge=0)
    max_model_len: int = Field(ge=1)
    tokens: list[int]
    #: the tokens' strings, with ``return_token_strs``
    token_strs: list[str] | None


class DetokenizeResponse(_Out):
    """``POST /detokenize``."""

    prompt: str


class Options(_Out):
    """``GET /tokenwise/options``: what a request may choose."""

    models: list[str]
    #: each sampler: ``{"name", "class", "params": {name: default}, "summary"}``
    samplers: list[dict[str, Any]]
    #: prompt compression methods
    compression: list[str]
    #: uncertainty estimators
    uncertainty: list[str]
    #: ``tokenwise.kv`` choices: ``{"press": [names], "quantize": ["kivi", "saq"]}``
    kv: dict[str, list[str]]
    #: the probe names ``tokenwise.control.probe`` may give (``--control-probe``)
    control_probes: list[str]
    #: the router names ``tokenwise.route`` may give (``--router``)
    routers: list[str]


class Stats(BaseModel):
    """``GET /tokenwise/stats``: the engine's counters (which counters depends on the
    engine: the embedded one's are listed; others add their own)."""

    model_config = ConfigDict(extra="allow")
    engine: str


_RESPONSE_MODELS: tuple[type[BaseModel], ...] = (
    ErrorBody, Health, ModelCard, ModelList, ChatCompletion, TextCompletion,
    ChatCompletionChunk, TextCompletionChunk, TokenizeResponse, DetokenizeResponse, Options,
    Stats)
_REQUEST_MODELS: tuple[type[BaseModel], ...] = (
    ChatCompletionRequest, CompletionRequest, TokenizeRequest, DetokenizeRequest)

#: each error status: when the server answers it
_ERRORS = {
    400: "The request is invalid: a bad body (the message names the field and what is "
         "allowed) or a Host header that does not name this server.",
    401: "No API key, or a wrong one (send 'Authorization: Bearer KEY').",
    403: "The request came from a web page whose origin this server does not allow.",
    404: "The model (or route) does not exist on this server.",
    408: "The request body did not arrive within the server's body timeout.",
    413: "The request body is larger than the server's limit.",
    415: "The body was not declared 'Content-Type: application/json'.",
    429: "The server's queue is full; retry after the seconds in Retry-After.",
    500: "The server failed; the message names nothing internal (see the server log).",
    503: "The server is shutting down (a completion route during a drain; /metrics when "
         "prometheus-client is not installed).",
    504: "The request did not finish within its timeout.",
}
#: the paths the API key guards (see :mod:`tokenwise.serving.security`)
_PROTECTED = ("/v1/", "/tokenwise/", "/tokenize", "/detokenize", "/metrics")


def _component_schemas(config: Any, models: Mapping[str, Any]) -> dict[str, Any]:
    """Every request and response schema, the request ones narrowed to this server."""
    _, request = models_json_schema([(m, "validation") for m in _REQUEST_MODELS],
                                    ref_template=_REF)
    _, response = models_json_schema([(m, "serialization") for m in _RESPONSE_MODELS],
                                     ref_template=_REF)
    schemas = {**request["$defs"], **response["$defs"]}
    served = list(models)
    _sampling_rules(schemas, _vocabulary(models))
    for name in ("ChatCompletionRequest", "CompletionRequest"):
        props = schemas[name]["properties"]
        props["model"]["enum"] = served
        for field in ("max_tokens", "max_completion_tokens"):
            if field in props:
                _bound(props[field], "maximum", config.max_tokens_limit)
        props["n"]["maximum"] = config.max_n
        _bound(props["seed"], "maximum", MAX_SEED)
    schemas["UncertaintyOptions"]["properties"]["n"]["maximum"] = config.max_uncertainty_n
    for name in ("TokenizeRequest", "DetokenizeRequest"):
        _bound(schemas[name]["properties"]["model"], "enum", served)
    schemas["EADOptions"]["properties"]["large"]["enum"] = served
    for name, field, allowed in _choices():
        schemas[name]["properties"][field]["enum"] = allowed
    from tokenwise.kv import PRESSES
    from tokenwise.serving.kv_options import QUANTIZERS

    probes = sorted(getattr(config, "control_probes", None) or {})
    if probes:  # none: any string is refused by the planner, naming how to add one
        schemas["ControlOptions"]["properties"]["probe"]["enum"] = probes
    routers = sorted(getattr(config, "routers", None) or {})
    if routers:  # none: any string is refused by the routes, naming how to add one
        schemas["RouteOptions"]["properties"]["router"]["enum"] = routers
        for option in schemas["TokenwiseOptions"]["properties"]["route"]["anyOf"]:
            if option.get("type") == "string":
                option["enum"] = routers
    kv = schemas["KVOptions"]["properties"]  # one of them is needed: the planner says so
    for field, allowed in (("press", sorted(PRESSES)), ("quantize", list(QUANTIZERS))):
        kv[field] = {"anyOf": [{"type": "string", "enum": allowed}, {"type": "null"}],
                     "default": None}
    return schemas


def _choices() -> list[tuple[str, str, list[str]]]:
    """The string fields whose allowed values come from a registry: (schema, field, values)."""
    from tokenwise.compression import names as compression_names
    from tokenwise.sampling import describe
    from tokenwise.serving.uncertainty_score import available

    return [("SamplerStep", "name", [s["name"] for s in describe()]),
            ("CompressOptions", "method", compression_names()),
            ("UncertaintyOptions", "method", available()),
            ("ResponseFormat", "type", ["text", "json_object", "json_schema"])]


def _vocabulary(models: Mapping[str, Any]) -> int | None:
    """The vocabulary size the served models share (None when they differ or cannot say)."""
    sizes = set()
    for lm in models.values():
        try:
            sizes.add(len(lm.tokenizer))
        except Exception:  # a codec without a sized tokenizer: no bound documented
            return None
    return sizes.pop() if len(sizes) == 1 else None


def _sampling_rules(schemas: dict[str, Any], vocab: int | None) -> None:
    """The rules the planner and the samplers check, where a JSON schema can say them (the
    request models leave them to those checks, whose messages explain them)."""
    token_id: dict[str, Any] = {"type": "integer", "minimum": 0}
    if vocab is not None:
        token_id["maximum"] = vocab - 1
    for name in ("ChatCompletionRequest", "CompletionRequest"):
        props = schemas[name]["properties"]
        for field in ("top_p", "typical_p"):  # 0 keeps nothing
            _bound(props[field], "exclusiveMinimum", 0.0)
            _unbound(props[field], "minimum")
        _bound(props["top_k"], "minimum", -1)  # 0 and -1: off
        for field in ("presence_penalty", "frequency_penalty"):
            _bound(props[field], "minimum", -2.0)
            _bound(props[field], "maximum", 2.0)
        _bound(props["repetition_penalty"], "minimum", MIN_REPETITION_PENALTY)
        _bound(props["repetition_penalty"], "maximum", MAX_REPETITION_PENALTY)
        _bound(props["logit_bias"], "propertyNames", {"pattern": "^[0-9]+$"})
        _bound(props["logit_bias"], "additionalProperties",
               {"type": "number", "minimum": -100, "maximum": 100})
        for member in props["stop"]["anyOf"]:  # an empty stop string stops everywhere
            if member.get("type") == "string":
                member["minLength"] = 1
            elif member.get("type") == "array":
                member["items"]["minLength"] = 1
    prompt = schemas["CompletionRequest"]["properties"]["prompt"]
    for member in prompt["anyOf"]:
        if member.get("type") == "string":
            member["minLength"] = 1
        elif member["items"].get("type") == "string":
            member["items"]["minLength"] = 1
        elif member["items"].get("type") == "integer":
            member["items"] = dict(token_id)
        else:
            member["items"]["items"] = dict(token_id)
    schemas["DetokenizeRequest"]["properties"]["tokens"]["items"] = dict(token_id)
    schemas["ChatMessage"] = _chat_message(schemas["ChatMessage"])
    # /tokenize takes a prompt or messages, exactly one of them
    schemas["TokenizeRequest"]["oneOf"] = [
        {"required": ["prompt"], "properties": {"prompt": {"type": "string"}}},
        {"required": ["messages"], "properties": {"messages": {"type": "array"}}}]


def _chat_message(base: dict[str, Any]) -> dict[str, Any]:
    """A chat message by role: content is required, except in an assistant message that
    holds tool calls; only assistant messages hold calls; a tool message names the call it
    answers. A refusal text cannot be rendered: only null (as a response carries it) is
    taken. (Which calls a tool message may answer depends on the messages before it: the
    planner checks that.)"""
    base = copy.deepcopy(base)
    base["properties"]["refusal"] = {"type": "null", "default": None}
    content = {"anyOf": [{"type": "string"},
                         {"type": "array", "items": {"$ref": _REF.format(model="TextPart")}}]}
    calls = {"type": "array", "minItems": 1,
             "items": {"$ref": _REF.format(model="ToolCall")}}

    def variant(roles: list[str], required: list[str], **props: Any) -> dict[str, Any]:
        out = copy.deepcopy(base)
        out.pop("title", None)
        out.pop("description", None)
        out["properties"].update(role={"enum": roles}, **props)
        out["required"] = required
        return out

    return {"title": "ChatMessage", "description": base.get("description", ""), "anyOf": [
        variant(["system", "developer", "user"], ["role", "content"], content=content,
                tool_calls={"type": "null"}),
        variant(["assistant"], ["role", "content"], content=content),
        variant(["assistant"], ["role", "tool_calls"], tool_calls=calls),
        variant(["tool"], ["role", "content", "tool_call_id"], content=content,
                tool_calls={"type": "null"}, tool_call_id={"type": "string"})]}


def _unbound(prop: dict[str, Any], key: str) -> None:
    for member in prop.get("anyOf", [prop]):
        member.pop(key, None)


def _bound(prop: dict[str, Any], key: str, value: Any) -> None:
    """Set ``key`` on the non-null member of a ``X | None`` property (or on the property)."""
    members = prop.get("anyOf", [prop])
    for member in members:
        if member.get("type") != "null":
            member[key] = value


def _json(ref: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": _REF.format(model=ref)}}}


def _errors(statuses: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status in statuses:
        out[str(status)] = {"description": _ERRORS[status], "content": _json("ErrorBody")}
    if "503" in out:
        out["503"]["headers"] = {"Connection": {
            "description": "close: the server is going away.", "required": False,
            "schema": {"type": "string"}}}
    if "429" in out:
        out["429"]["headers"] = {"Retry-After": {
            "description": "Seconds to wait before retrying.", "required": True,
            "schema": {"type": "string", "pattern": r"^[0-9]+$"}}}
    return out


def _stream(chunk: str) -> dict[str, Any]:
    """A ``text/event-stream`` media type; its schema describes one event, as OpenAPI 3.1
    tools read a sequential media type (3.2's ``itemSchema``)."""
    events = {"oneOf": [{"$ref": _REF.format(model=chunk)},
                        {"$ref": _REF.format(model="ErrorBody")}]}
    return {"text/event-stream": {"schema": {
        "type": "object", "required": ["data"],
        "description": f"One server-sent event: its data is a {chunk} as JSON (or an "
                       "ErrorBody when generation fails after the headers went out); the "
                       "last event's data is '[DONE]'.",
        "properties": {"data": {"anyOf": [
                           {"const": "[DONE]"},
                           {"type": "string", "contentMediaType": "application/json",
                            "contentSchema": events}]},
                       "event": {"const": "message"}}}}}


def _operation(summary: str, ok: dict[str, Any], errors: list[int], path: str,
               keyed: bool, body: str | None = None,
               ok_description: str = "OK") -> dict[str, Any]:
    statuses = [400, 403, 413, 500]
    if keyed and path.startswith(_PROTECTED):
        statuses.append(401)
    if body is not None:
        statuses += [408, 415]
    statuses = sorted(set(statuses + errors))
    op: dict[str, Any] = {"summary": summary,
                          "responses": {"200": {"description": ok_description, "content": ok},
                                        **_errors(statuses)}}
    if body is not None:
        op["requestBody"] = {"required": True, "content": _json(body)}
    if keyed and path.startswith(_PROTECTED):
        op["security"] = [{"bearer": []}]
    return op


def build_document(app: Any) -> dict[str, Any]:
    """The OpenAPI document of an app built by :func:`tokenwise.serving.app.create_app`.

    Args:
        app: the app (its ``state`` holds the config and the served models).

    Example:
        >>> from tokenwise.serving.config import ServerConfig
        >>> from tokenwise.serving.app import create_app
        >>> doc = build_document(create_app(ServerConfig(models=("tw-small",))))
        >>> sorted(doc["paths"]["/v1/completions"]["post"]["responses"])[:3]
        ['200', '400', '403']
    """
    config, models = app.state.config, app.state.models
    keyed = config.resolved_api_key() is not None
    gen = [404, 429, 503, 504]
    health = _operation("Liveness: 200 while serving, 503 once a shutdown drain began",
                        _json("Health"), [503], "/health", keyed)
    health["responses"]["503"]["content"] = _json("Health")
    paths: dict[str, Any] = {
        "/health": {"get": health},
        "/v1/models": {"get": _operation("The served models", _json("ModelList"), [],
                                         "/v1/models", keyed)},
        "/v1/models/{model_id}": {"get": {
            **_operation("One served model", _json("ModelCard"), [404], "/v1/models/",
                         keyed),
            "parameters": [{"name": "model_id", "in": "path", "required": True,
                            "description": "A served model's id (any other is a 404).",
                            "schema": {"type": "string", "enum": list(models)}}]}},
        "/v1/chat/completions": {"post": _operation(
            "A chat reply", {**_json("ChatCompletion"), **_stream("ChatCompletionChunk")},
            gen, "/v1/", keyed, "ChatCompletionRequest",
            "The reply (application/json), or its chunks as server-sent events with "
            "stream: true")},
        "/v1/completions": {"post": _operation(
            "A legacy completion", {**_json("TextCompletion"),
                                    **_stream("TextCompletionChunk")},
            gen, "/v1/", keyed, "CompletionRequest",
            "The completion (application/json), or its chunks as server-sent events with "
            "stream: true")},
        "/tokenize": {"post": _operation("Text or chat messages to token ids (vLLM's shape)",
                                         _json("TokenizeResponse"), [404], "/tokenize",
                                         keyed, "TokenizeRequest")},
        "/detokenize": {"post": _operation("Token ids to text (vLLM's shape)",
                                           _json("DetokenizeResponse"), [404],
                                           "/detokenize", keyed, "DetokenizeRequest")},
        "/tokenwise/options": {"get": _operation("What a request may choose",
                                                 _json("Options"), [], "/tokenwise/", keyed)},
        "/tokenwise/stats": {"get": _operation("The engine's counters", _json("Stats"), [],
                                               "/tokenwise/", keyed)},
    }
    if config.metrics:
        paths["/metrics"] = {"get": _operation(
            "Prometheus metrics (text exposition format)",
            {"text/plain": {"schema": {"type": "string"}}}, [503], "/metrics", keyed)}
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "tokenwise", "version": _version(),
                 "description": __doc__.split("\n\nExample:")[0]},
        "paths": paths,
        "components": {"schemas": _component_schemas(config, models)},
    }
    if keyed:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http",
                                                            "scheme": "bearer"}}
    return doc


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("tokenwise")
    except Exception:  # not installed (a source checkout): the document still loads
        return "0"


def document(app: Any) -> None:
    """Give ``app`` its OpenAPI document: ``app.openapi()`` returns it (built once) and
    ``GET /openapi.json`` serves it.

    Args:
        app: an app built by :func:`tokenwise.serving.app.create_app`.

    Example:
        >>> from tokenwise.serving.config import ServerConfig
        >>> from tokenwise.serving.app import create_app
        >>> app = create_app(ServerConfig(models=("tw-small",)))
        >>> document(app)
        >>> "/v1/chat/completions" in app.openapi()["paths"]
        True
    """
    from starlette.responses import JSONResponse

    cached: list[dict[str, Any]] = []

    def openapi() -> dict[str, Any]:
        if not cached:
            cached.append(build_document(app))
        return copy.deepcopy(cached[0])

    async def serve(_: Any) -> JSONResponse:
        return JSONResponse(openapi())

    app.openapi = openapi
    app.openapi_url = OPENAPI_PATH
    app.add_route(OPENAPI_PATH, serve, methods=["GET"], include_in_schema=False)
