"""Wire schemas of the requests: OpenAI's fields, the vLLM/llama.cpp sampling extras, and the
one namespaced ``tokenwise`` object.

Every model forbids unknown fields, so a misspelt option is a 400 that names it instead of
a silent default, and validation is strict (``"0.5"`` is not a number, ``true`` is not 1).
Fields OpenAI defines but this server cannot honour (the deprecated ``functions`` and
``function_call``, audio, images, ...) are absent on purpose: they are rejected like any
unknown field, never ignored. ``tools``, ``tool_choice``, ``parallel_tool_calls``, tool
messages and assistant ``tool_calls`` are checked and rendered by
:mod:`tokenwise.serving.tools`; ``response_format`` (``text``, ``json_object``,
``json_schema``) is checked and enforced by :mod:`tokenwise.serving.constraints`. Fields
that change nothing here are accepted: ``user``, and a message's ``name`` (handed to a chat
template that reads it; the question-answer fallback has no place for it).

Example:
    >>> req = ChatCompletionRequest.model_validate_json(
    ...     '{"model": "tw-small", "messages": [{"role": "user", "content": "hi"}]}')
    >>> req.messages[0].text()
    'hi'
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from tokenwise.serving.tools import Tool, ToolCall, ToolChoice

_STRICT = ConfigDict(extra="forbid", strict=True)

#: numbers with a sane range; the engine checks them again with its own messages.
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
NonNegative = Annotated[float, Field(ge=0.0)]


def _integral(value: Any) -> Any:
    """A JSON number with a zero fraction (``3.0``) as the integer it is: JSON does not tell
    ``3.0`` from ``3`` and JSON Schema's ``integer`` takes both (so schema-driven clients
    send either). Anything else is left to the strict check: ``true``, ``"3"`` and ``3.5``
    stay errors.

    Example:
        >>> _integral(3.0), _integral(3.5), _integral(True)
        (3, 3.5, True)
    """
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


_INTEGRAL = BeforeValidator(_integral)
#: an integer field: ``3`` or ``3.0``, never ``3.5``, ``"3"`` or ``true`` (constrained ones
#: put ``Field`` first and ``_INTEGRAL`` last, so the JSON schema shows the bounds)
Int = Annotated[int, _INTEGRAL]


class WireModel(BaseModel):
    """Base of every request object: unknown fields rejected, no type coercion."""

    model_config = _STRICT


class TextPart(WireModel):
    """One text part of a message's content list (images and audio are not supported)."""

    type: Literal["text"]
    text: str


class ChatMessage(WireModel):
    """One chat message.

    ``content`` may be null only in an assistant message that holds ``tool_calls`` (planning
    refuses it elsewhere, naming the message); a ``tool`` message answers the call whose id
    is its ``tool_call_id``.
    """

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    #: an assistant's calls, as a response gave them
    tool_calls: list[ToolCall] | None = None
    #: a tool message's answer to this call id
    tool_call_id: str | None = None
    #: the participant's name (OpenAI's); handed to chat templates that read it
    name: str | None = None
    #: an assistant's refusal: null is accepted (clients send a response's message back as
    #: it came, ``"refusal": null`` included); planning refuses text, which it cannot render
    refusal: str | None = None

    def text(self) -> str:
        """The content as one string (text parts joined without a separator, as OpenAI does;
        null content is "")."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def as_dict(self) -> dict[str, Any]:
        """The message as :func:`tokenwise.serving.tools.render_tool_chat` takes it: role,
        content (one string, or None), and the tool fields that are set.

        Example:
            >>> ChatMessage(role="tool", content="22 C", tool_call_id="call_1").as_dict()
            {'role': 'tool', 'content': '22 C', 'tool_call_id': 'call_1'}
        """
        out: dict[str, Any] = {"role": self.role,
                               "content": None if self.content is None else self.text()}
        if self.tool_calls is not None:
            out["tool_calls"] = [c.model_dump() for c in self.tool_calls]
        for key in ("tool_call_id", "name"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


class StreamOptions(WireModel):
    """``stream_options``: a last chunk with the token usage when ``include_usage``."""

    include_usage: bool = False


class SamplerStep(BaseModel):
    """One step of ``tokenwise.sampler``: ``{"name": "top_h", "alpha": 0.4}``.

    The parameters sit beside the name and are checked by the sampler itself, whose
    error names any parameter it does not take.
    """

    model_config = ConfigDict(extra="allow", strict=True)
    name: str

    def params(self) -> dict[str, float | int | bool | str]:
        """The step's parameters (everything but ``name``)."""
        return dict(self.model_extra or {})


class EADOptions(WireModel):
    """Entropy-adaptive decoding: the request's model writes, ``large`` takes over where the
    rolling entropy (bits) rises above ``up``."""

    large: str
    up: Annotated[float, Field(gt=0.0)] = 1.0
    down: NonNegative | None = None
    window: Annotated[int, Field(ge=1), _INTEGRAL] = 5
    min_run: Annotated[int, Field(ge=1), _INTEGRAL] = 1
    judge: Literal["active", "small"] = "active"


class CompressOptions(WireModel):
    """Prompt compression before generation (see :func:`tokenwise.compression.compress`).

    The method's model is fixed when the server starts (``--compress-model``); nothing
    in a request names a file.
    """

    method: str
    rate: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    target_tokens: Annotated[int, Field(ge=1), _INTEGRAL] | None = None
    threshold: float | None = None
    question: str | None = None
    force_tokens: list[str] = []
    keep_digits: bool = False
    protect: bool = True
    percentile: Literal["global", "chunk"] = "global"
    context_filter: bool = False
    context_rate: Annotated[float, Field(gt=0.0, le=1.0)] | None = None


class UncertaintyOptions(WireModel):
    """Score how sure the model is of its answer: sample ``n`` answers to the same prompt at
    ``temperature`` and apply the estimator ``method`` (higher = less certain)."""

    method: str = "semantic_entropy"
    n: Annotated[int, Field(ge=2), _INTEGRAL] = 5
    temperature: Annotated[float, Field(gt=0.0)] = 1.0


class KVOptions(BaseModel):
    """KV-cache compression while the reply is decoded (:mod:`tokenwise.kv`): one of
    ``press`` (a name in :data:`tokenwise.kv.PRESSES`: ``{"press": "snapkv", "budget": 0.25,
    "window": 16}``) or ``quantize`` (``"kivi"`` or ``"saq"``: ``{"quantize": "kivi",
    "bits": 2}``), the settings beside it.

    The settings are checked by the press or quantiser itself (see
    :mod:`tokenwise.serving.kv_options`), whose error names any it does not take. A request
    with ``kv`` is decoded on its own, one prompt at a time (its cache keeps other tokens than
    a shared batch's rows would).
    """

    model_config = ConfigDict(extra="allow", strict=True)
    press: str | None = None
    quantize: str | None = None

    def settings(self) -> dict[str, Any]:
        """The settings (everything but ``press`` and ``quantize``)."""
        return dict(self.model_extra or {})


class ControlOptions(WireModel):
    """Semantic control (:class:`tokenwise.sampling.SemanticControl`): steer the reply towards
    the attribute of a probe the server was started with (``--control-probe NAME=FILE``,
    files written by ``tokenwise control train``); ``probe`` is that NAME, never a path.

    ``top_k`` candidates each get a rollout of ``horizon`` tokens per generated token (that
    many forward passes without a KV cache), so both are capped; the rollouts stop at
    ``max_tokens`` (the finished reply is what the probe judges).
    """

    probe: str
    strength: Annotated[float, Field(ge=0.0, le=10.0)] = 1.0
    top_k: Annotated[int, Field(ge=1, le=16), _INTEGRAL] = 4
    horizon: Annotated[int, Field(ge=0, le=32), _INTEGRAL] = 4
    spread: bool = True
    seed: Annotated[int, Field(ge=0, le=2**63 - 1), _INTEGRAL] = 0


class RouteOptions(WireModel):
    """Adaptive compute (:mod:`tokenwise.routing`): a router the server was started with
    (``--router NAME=DIR``, directories written by ``tokenwise route train``) picks the
    strategy that answers; ``router`` is that NAME, never a path. ``"route": NAME`` is short
    for ``{"router": NAME}``."""

    router: str


class TokenwiseOptions(WireModel):
    """The namespaced extras."""

    sampler: list[SamplerStep] | None = None
    control: ControlOptions | None = None
    route: str | RouteOptions | None = None
    ead: EADOptions | None = None
    compress: CompressOptions | None = None
    uncertainty: UncertaintyOptions | None = None
    kv: KVOptions | None = None


class SamplingFields(WireModel):
    """Sampling fields shared by both endpoints (OpenAI's, then vLLM/llama.cpp's)."""

    model: str
    max_tokens: Annotated[int, Field(ge=1), _INTEGRAL] | None = None
    n: Annotated[int, Field(ge=1), _INTEGRAL] = 1
    seed: Annotated[int, Field(ge=0), _INTEGRAL] | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Probability | None = None
    top_k: Int | None = None
    min_p: Probability | None = None
    typical_p: Probability | None = None
    top_h: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    #: OpenAI's penalties, in [-2, 2] (0 = off; ranges checked by the sampler, which names them)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    #: vLLM's repetition penalty, > 0 (1 = off)
    repetition_penalty: float | None = None
    #: token id (a string of an integer, as JSON keys are) -> bias in [-100, 100]
    logit_bias: dict[str, float] | None = None
    #: OpenAI's end-user id, accepted so clients that always send it work; never stored.
    user: str | None = None
    #: seconds this request may take before it is stopped and answered 504 (> 0 and finite;
    #: None: the server's ``request_timeout_s``)
    timeout: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] | None = None
    tokenwise: TokenwiseOptions | None = None

    def stops(self) -> list[str]:
        """The stop strings as a list."""
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ResponseFormat(BaseModel):
    """``response_format``: ``{"type": "text"}`` (the default), ``{"type": "json_object"}``
    or ``{"type": "json_schema", "json_schema": {...}}``. The other fields are kept as given
    and checked by :func:`tokenwise.sampling.grammar.from_response_format`, whose errors name
    the bad field (``response_format.json_schema.schema``)."""

    model_config = ConfigDict(extra="allow", strict=True)
    type: str

    def as_dict(self) -> dict[str, Any]:
        """The field as the client sent it."""
        return {"type": self.type, **(self.model_extra or {})}


class ChatCompletionRequest(SamplingFields):
    """``POST /v1/chat/completions``."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1), _INTEGRAL] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20), _INTEGRAL] | None = None
    #: the functions the model may call (checked by :func:`tokenwise.serving.tools.check_tools`)
    tools: list[Tool] | None = None
    #: ``"none"``, ``"auto"`` (the default with tools), ``"required"`` or a named function;
    #: the last two constrain the reply to a call
    tool_choice: ToolChoice | None = None
    #: False: a reply holds at most one call (a no-op without tools)
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None


class CompletionRequest(SamplingFields):
    """``POST /v1/completions`` (the legacy endpoint): ``logprobs`` is the number of top
    alternatives per token (0 = the chosen token's logprob only).

    ``prompt`` is a text, a list of texts, token ids (a list of ints), or a list of such
    lists, as OpenAI's and vLLM's servers take it. Token ids are read as they are: no start
    (BOS) token is added, as vLLM does, so a client that wants one sends it. ``echo`` puts the
    prompt in front of each choice's text and, with ``logprobs``, its tokens' logprobs, top
    alternatives and entropies in front of the completion's (the first prompt token's are
    null: nothing predicts it). ``max_tokens: 0`` is allowed with ``echo`` only: the prompt
    is scored and nothing generated (lm-evaluation-harness's loglikelihood requests).
    """

    prompt: (str | Annotated[list[str], Field(min_length=1)]
             | Annotated[list[Int], Field(min_length=1)]
             | Annotated[list[list[Int]], Field(min_length=1)])
    #: 0 only with ``echo`` (checked by planning, which names the rule)
    max_tokens: Annotated[int, Field(ge=0), _INTEGRAL] | None = None
    logprobs: Annotated[int, Field(ge=0, le=20), _INTEGRAL] | None = None
    echo: bool = False
    #: structured output, as on chat (vLLM takes it here too; OpenAI's legacy endpoint not)
    response_format: ResponseFormat | None = None


class TokenizeRequest(WireModel):
    """``POST /tokenize`` (vLLM's shape): a ``prompt`` or chat ``messages`` to token ids.

    ``add_special_tokens`` puts the tokenizer's start ids first (default), so the ids are
    those a completion request with the same prompt, or a chat request with the same
    messages (and ``tools``, as ``tool_choice: "auto"`` renders them), feeds the model.
    """

    model: str | None = None
    prompt: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = None
    #: with ``messages``: the tools the chat is rendered with, as a chat request gives them
    tools: list[Tool] | None = None
    add_special_tokens: bool = True
    return_token_strs: bool = False


class DetokenizeRequest(WireModel):
    """``POST /detokenize`` (vLLM's shape): token ids to text."""

    model: str | None = None
    tokens: list[Int]
