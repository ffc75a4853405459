"""From a validated request to a :class:`Plan`: the prompts, limits, sampler, seeds and
extras, every check done before a token is generated (so a bad request is a 400, also when
it asks for a stream).

Example:
    >>> from tokenwise.serving.schemas import CompletionRequest
    >>> req = CompletionRequest(model="tw-small", prompt="7+2=", max_tokens=2000)
    >>> check_max_tokens(req.max_tokens, 512)
    Traceback (most recent call last):
    ...
    tokenwise.serving.errors.APIError: max_tokens=2000 is over this server's limit of 512
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tokenwise.errors import TokenwiseError
from tokenwise.generation.engine import MAX_SEED
from tokenwise.models import Codec
from tokenwise.models.language_model import EncodedText
from tokenwise.serving import uncertainty_score
from tokenwise.serving.chat_format import render
from tokenwise.serving.config import ServerConfig
from tokenwise.serving.constraints import (
    Constraint,
    response_format_constraint,
    tool_call_constraint,
)
from tokenwise.serving.control_options import ControlSpec, control_spec
from tokenwise.serving.errors import APIError
from tokenwise.serving.kv_options import describe as describe_kv
from tokenwise.serving.kv_options import kv_setting
from tokenwise.serving.sampler_spec import SamplerSpec, check_vocabulary, sampler_spec
from tokenwise.serving.schemas import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    EADOptions,
    TokenwiseOptions,
    UncertaintyOptions,
)
from tokenwise.serving.tools import ToolSpec, call_constraint, check_tools, render_tool_chat


@dataclass
class Plan:
    """Everything a request will do.

    Attributes:
        kind: ``"chat"`` or ``"completion"``.
        model: the model id; ``lm`` the model, as planning sees it: a
            :class:`~tokenwise.models.Codec` (the backend that generates holds the weights).
        prompts: the prompt texts (chat: one; completions: one per prompt). A prompt given
            as token ids is an :class:`~tokenwise.models.language_model.EncodedText` of its
            decoded text carrying the ids as given (no start id added), so every encode
            reads those ids.
        prompt_tokens: their lengths in tokens, the tokenizer's start ids included.
        n: choices per prompt (choice ``p * n + j`` is prompt p's j-th).
        max_tokens: most tokens per choice.
        stops: stop strings (the request's, plus any the chat format needs).
        spec: the sampler.
        seeds: one per choice (None for greedy decoding).
        logprobs: report per-token logprobs.
        top_logprobs: alternatives per token.
        stream, include_usage: streaming settings.
        ead: entropy-adaptive decoding options (with ``large`` the second model).
        uncertainty: uncertainty options.
        info: the ``tokenwise`` response object so far (settings applied, compression).
        echo: completions: each choice starts with its prompt (and, with ``logprobs``, the
            prompt tokens' logprobs); ``max_tokens`` may then be 0.
        tools: chat: the checked tools (None without tools); replies are parsed into
            ``tool_calls`` with them.
        constraint: what every choice's reply must be (``response_format`` JSON or a forced
            tool call; None: free text).
        kv: the ``tokenwise.kv`` press or quantised cache every choice decodes with (None: a
            plain cache); :func:`~tokenwise.serving.kv_options.check_model` still has to
            check it against the model(s).
    """

    kind: str
    model: str
    lm: Codec
    prompts: list[str]
    prompt_tokens: list[int]
    n: int
    max_tokens: int
    stops: list[str]
    spec: SamplerSpec
    seeds: list[int | None]
    logprobs: bool
    top_logprobs: int
    stream: bool
    include_usage: bool
    ead: EADOptions | None = None
    large: Codec | None = None
    uncertainty: UncertaintyOptions | None = None
    info: dict[str, Any] = field(default_factory=dict)
    echo: bool = False
    tools: ToolSpec | None = None
    constraint: Constraint | None = None
    kv: Any = None

    @property
    def choices(self) -> int:
        """How many choices the response has."""
        return len(self.prompts) * self.n


def check_max_tokens(value: int | None, limit: int) -> None:
    """Raise a 400 when ``max_tokens`` is over the server's limit."""
    if value is not None and value > limit:
        raise APIError(400, f"max_tokens={value} is over this server's limit of {limit}",
                       param="max_tokens", code="max_tokens_too_large")


#: the served models' type: any :class:`~tokenwise.models.Codec` (a caller holding
#: LanguageModels gets a LanguageModel back).
M = TypeVar("M", bound=Codec)


def pick_model(models: Mapping[str, M], name: str, param: str = "model") -> M:
    """The served model ``name`` (404 naming the served ones otherwise).

    Args:
        models: the served models by id.
        name: the id the request gives.
        param: the request field that gave it (named in the error).

    Example:
        >>> pick_model({}, "gpt-9")
        Traceback (most recent call last):
        ...
        tokenwise.serving.errors.APIError: The model 'gpt-9' does not exist on this server; ...
    """
    if name not in models:
        raise APIError(404, f"The model {name!r} does not exist on this server; served: "
                            f"{', '.join(models)}", param=param, code="model_not_found")
    return models[name]


def chat_messages(req: ChatCompletionRequest) -> list[dict[str, str]]:
    """The messages as role/content dicts."""
    return [{"role": m.role, "content": m.text()} for m in req.messages]


def message_dicts(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """The messages as :func:`~tokenwise.serving.tools.render_tool_chat` takes them: a 400
    for a null ``content`` anywhere but in an assistant message that calls tools, and for a
    ``refusal`` that is not null.

    Args:
        messages: the request's messages.

    Example:
        >>> message_dicts([ChatMessage(role="user")])
        Traceback (most recent call last):
        ...
        tokenwise.serving.errors.APIError: messages.0 (role 'user') has no content; only an ...
    """
    for i, m in enumerate(messages):
        if m.refusal is not None:
            raise APIError(400, f"messages.{i}.refusal: this server renders no refusal text; "
                                "send it as the message's content (null is accepted)",
                           param=f"messages.{i}.refusal", code="unsupported_value")
        if m.content is None and not (m.role == "assistant" and m.tool_calls):
            raise APIError(400, f"messages.{i} (role {m.role!r}) has no content; only an "
                                "assistant message that holds tool_calls may leave it out or "
                                "null", param=f"messages.{i}.content",
                           code="missing_required_parameter")
    return [m.as_dict() for m in messages]


def needs_grammar(req: ChatCompletionRequest | CompletionRequest) -> bool:
    """Whether a request asks for a constrained reply (JSON ``response_format``, or
    ``tool_choice`` forcing a call): the routes warm the grammar engine for it first.

    Example:
        >>> needs_grammar(CompletionRequest(model="m", prompt="x"))
        False
    """
    fmt = req.response_format
    if fmt is not None and fmt.type != "text":
        return True
    choice = getattr(req, "tool_choice", None)
    return choice is not None and choice not in ("none", "auto")


def _max_tokens(req: ChatCompletionRequest | CompletionRequest, cfg: ServerConfig
                ) -> tuple[int, bool]:
    """The request's ``max_tokens`` and whether the request set it (False: the default)."""
    given = req.max_tokens
    if isinstance(req, ChatCompletionRequest) and req.max_completion_tokens is not None:
        if given is not None and given != req.max_completion_tokens:
            raise APIError(400, f"max_tokens={given} and max_completion_tokens="
                                f"{req.max_completion_tokens} disagree; give one",
                           param="max_completion_tokens", code="conflicting_fields")
        given = req.max_completion_tokens
    check_max_tokens(given, cfg.max_tokens_limit)
    return (cfg.default_max_tokens, False) if given is None else (given, True)


def check_choices(prompts: int, n: int, limit: int) -> None:
    """Raise a 400 when prompts x ``n`` is over the server's ``max_choices``.

    Args:
        prompts: how many prompts the request sends.
        n: choices per prompt.
        limit: the server's ``max_choices``.

    Example:
        >>> check_choices(1000, 8, 64)
        Traceback (most recent call last):
        ...
        tokenwise.serving.errors.APIError: 1000 prompts x n=8 = 8000 choices: this server ...
    """
    if prompts * n > limit:
        raise APIError(400, f"{prompts} prompt{'s' if prompts != 1 else ''} x n={n} = "
                            f"{prompts * n} choices: this server makes at most {limit} "
                            "choices per request; send fewer prompts or a smaller n",
                       param="prompt" if prompts > 1 else "n", code="too_many_choices")


def check_seed(seed: int | None, choices: int, uncertainty_n: int = 0) -> None:
    """Raise a 400 when a seed the request would use is past what the engine takes.

    Choice ``i`` samples with ``seed + i`` and uncertainty's reference answer with
    ``seed + n``, so the largest seed used is ``seed`` plus the larger offset; every one must
    fit ``torch.Generator.manual_seed`` (0 to 2**64 - 1).

    Args:
        seed: the request's ``seed`` (None: drawn by the server, always in range).
        choices: how many choices the request makes.
        uncertainty_n: ``tokenwise.uncertainty.n`` (0 without it).

    Example:
        >>> check_seed(2**64 - 1, choices=2)
        Traceback (most recent call last):
        ...
        tokenwise.serving.errors.APIError: seed=18446744073709551615: this request samples with ...
    """
    if seed is None:
        return
    offset = max(choices - 1, uncertainty_n)
    if seed + offset > MAX_SEED:
        used = f"this request samples with seeds from seed to seed + {offset}, and " \
            if offset else ""
        raise APIError(400, f"seed={seed}: {used}seeds go up to 2**64 - 1; allowed 0 to "
                            f"{MAX_SEED - offset} for this request", param="seed",
                       code="invalid_seed")


def _check_echo(req: CompletionRequest, prompts: list[str], max_tokens: int) -> None:
    """Refuse (400) ``max_tokens: 0`` without ``echo`` or with uncertainty sampling, ``echo``
    with entropy-adaptive decoding, and compression of token-id prompts."""
    if max_tokens == 0 and not req.echo:
        raise APIError(400, "max_tokens=0 generates nothing and, without echo, returns nothing; "
                            "allowed: 1 or more, or 0 with echo=true (the prompt scored)",
                       param="max_tokens", code="invalid_value")
    opts = req.tokenwise
    if max_tokens == 0 and opts is not None and opts.uncertainty is not None:
        raise APIError(400, "tokenwise.uncertainty samples answers, and max_tokens=0 "
                            "generates none; allowed max_tokens 1 or more with it",
                       param="max_tokens", code="invalid_value")
    if req.echo and opts is not None and opts.ead is not None:
        raise APIError(400, "echo is not supported with tokenwise.ead; send the request "
                            "without one of them", param="echo", code="unsupported_value")
    if opts is not None and opts.compress is not None \
            and any(isinstance(p, EncodedText) for p in prompts):
        raise APIError(400, "tokenwise.compress compresses a text prompt; this prompt is "
                            "token ids", param="tokenwise.compress", code="unsupported_value")


def _render_chat(lm: Codec, messages: list[dict[str, str]], stops: list[str]
                 ) -> tuple[list[str], list[str], str]:
    """The chat prompt, the request's stops plus those the chat format needs, the format.

    A template's prompt carries its token ids (see
    :func:`~tokenwise.serving.chat_format.encode_template`), which every later encode reads.
    """
    try:
        rendered = render(lm.tokenizer, messages)
    except TokenwiseError as exc:
        raise APIError(400, str(exc), param="messages") from exc
    return [rendered.text], stops + [s for s in rendered.stops if s not in stops], \
        rendered.format


def _plan_chat(req: ChatCompletionRequest, lm: Codec, stops: list[str], info: dict[str, Any]
               ) -> tuple[list[str], list[str], ToolSpec | None, Constraint | None]:
    """A chat's prompt (rendered with its tools), stops, tools and constraint."""
    tools = check_tools(req.tools, req.tool_choice, req.parallel_tool_calls)
    messages = message_dicts(req.messages)
    chat = render_tool_chat(lm.tokenizer, messages, tools, model=req.model)
    stops = stops + [s for s in chat.prompt.stops if s not in stops]
    info["chat_format"] = chat.prompt.format
    if tools is not None:
        info["tools"] = {"mode": chat.mode, "call_format":
                         chat.call_format.name if chat.call_format is not None else None,
                         "tool_choice": tools.choice if tools.name is None else
                         {"type": "function", "function": {"name": tools.name}}}
    forced = tool_call_constraint(call_constraint(tools, chat.call_format), tools, lm, stops) \
        if tools is not None else None
    fmt = req.response_format
    if forced is not None and fmt is not None and fmt.type != "text":
        raise APIError(400, f"response_format {fmt.type!r} and tool_choice "
                            f"{info['tools']['tool_choice']!r} both constrain the reply (to JSON "
                            "content, and to a tool call); give one of them",
                       param="response_format", code="conflicting_fields")
    opts = req.tokenwise
    if opts is not None and opts.compress is not None and \
            (tools is not None or any(m.role == "tool" or m.tool_calls for m in req.messages)):
        raise APIError(400, "tokenwise.compress compresses message texts; this chat holds tools "
                            "or tool calls, which it would drop; send it without one of them",
                       param="tokenwise.compress", code="unsupported_value")
    constraint = forced or response_format_constraint(
        fmt.as_dict() if fmt is not None else None, lm, stops)
    return [chat.prompt.text], stops, tools, constraint


def _check_constraint(constraint: Constraint | None, opts: Any) -> None:
    """Refuse (400) the tokenwise extras that would not honour a constrained reply."""
    if constraint is None or opts is None:
        return
    what = "a forced tool call" if constraint.kind == "tool_call" else \
        f"response_format {constraint.kind!r}"
    for name in ("ead", "uncertainty"):
        if getattr(opts, name) is not None:
            raise APIError(400, f"tokenwise.{name} decodes without the grammar that {what} "
                                "needs; send the request without one of them",
                           param=f"tokenwise.{name}", code="unsupported_value")


def token_id_prompt(lm: Codec, ids: list[int], index: int) -> EncodedText:
    """A prompt given as token ids: its decoded text carrying the ids, read as they are.

    No start (BOS) id is added, as vLLM reads token prompts; the text, special tokens
    included (as vLLM decodes a token prompt), is what ``echo`` shows.

    Args:
        lm: the request's model.
        ids: the ids the request sent.
        index: which prompt of the request they are (named in errors).

    Example:
        >>> from tokenwise.models import load
        >>> lm = load("tw-small")
        >>> p = token_id_prompt(lm, lm.encode("7+2="), 0)
        >>> p, p.ids == tuple(lm.encode("7+2="))
        ('7+2=', True)
        >>> token_id_prompt(lm, [5, 4096], 0)
        Traceback (most recent call last):
        ...
        tokenwise.serving.errors.APIError: prompt 0: token id 4096 (at position 1) is not in ...
    """
    if not ids:
        raise APIError(400, f"prompt {index} is empty", param="prompt")
    vocab = lm.vocab_size
    for at, tid in enumerate(ids):
        if not 0 <= tid < vocab:
            raise APIError(400, f"prompt {index}: token id {tid} (at position {at}) is not in "
                                f"this model's vocabulary; allowed ids 0 to {vocab - 1}",
                           param="prompt", code="invalid_token_id")
    return EncodedText(lm.decode(ids), ids)


def _completion_prompts(lm: Codec, raw: str | list[str] | list[int] | list[list[int]]
                        ) -> list[str]:
    """The prompts of a completions request: texts, or token ids as
    :class:`EncodedText` (see :func:`token_id_prompt`)."""
    if isinstance(raw, str):
        return [raw]
    if raw and isinstance(raw[0], int):  # one prompt of token ids
        return [token_id_prompt(lm, raw, 0)]  # type: ignore[arg-type]
    return [token_id_prompt(lm, p, i) if isinstance(p, list) else p
            for i, p in enumerate(raw)]  # type: ignore[misc]


def _count_tokens(lm: Codec, prompts: list[str], kind: str, max_tokens: int,
                  max_tokens_given: bool, check_context: bool) -> list[int]:
    """Each prompt's length in tokens (start ids included); a 400 for an empty prompt, or, with
    ``check_context``, for a prompt that leaves no room for ``max_tokens`` (0: the prompt
    alone must fit)."""
    for i, p in enumerate(prompts):
        # a prompt of token ids may decode to blank text (a space token) and is still a prompt
        if not (p.ids if isinstance(p, EncodedText) else p.strip()):
            raise APIError(400, f"prompt {i} is empty", param="prompt")
    prompt_tokens = [len(lm.encode(p, add_bos=True)) for p in prompts]
    longest = max(prompt_tokens)
    if check_context and longest + max(max_tokens, 1) - 1 > lm.context_length:
        asked = f"max_tokens={max_tokens}" if max_tokens_given else \
            f"the default max_tokens ({max_tokens}, used when a request sets none)"
        fits = lm.context_length - longest + 1  # the most tokens this prompt leaves room for
        advice = "Shorten the prompt." if fits < 1 else \
            f"Shorten the prompt or {'lower' if max_tokens_given else 'set'} max_tokens to " \
            f"{fits} or less."
        passes = f"and {asked} would pass it" if max_tokens else "(echo, max_tokens=0)"
        raise APIError(400, f"This model's maximum context length is {lm.context_length} "
                            f"tokens; the prompt has {longest} {passes}. {advice}",
                       param="max_tokens" if fits > 0 else
                       ("messages" if kind == "chat" else "prompt"),
                       code="context_length_exceeded")
    return prompt_tokens


def plan_request(req: ChatCompletionRequest | CompletionRequest, cfg: ServerConfig,
                 models: Mapping[str, Codec], check_context: bool = True) -> Plan:
    """Check a request against the server's models and limits and plan it.

    Args:
        req: the validated request.
        cfg: the server's settings.
        models: the served models (planning only renders, encodes and counts: any
            :class:`~tokenwise.models.Codec`).
        check_context: check that prompt and ``max_tokens`` fit the context (off when the
            request asks for compression, which may shorten the prompt: then
            :func:`apply_compression` checks it).

    Returns:
        The :class:`Plan`.

    Example:
        >>> from tokenwise.models import load
        >>> req = CompletionRequest(model="tw-small", prompt="7+2=", max_tokens=2, stop="\\n",
        ...                         temperature=0.0)
        >>> plan = plan_request(req, ServerConfig(), {"tw-small": load("tw-small")})
        >>> plan.prompts, plan.stops, plan.seeds
        (['7+2='], ['\\n'], [None])
    """
    kind = "chat" if isinstance(req, ChatCompletionRequest) else "completion"
    lm = pick_model(models, req.model)
    max_tokens, max_tokens_given = _max_tokens(req, cfg)
    if req.n > cfg.max_n:
        raise APIError(400, f"n={req.n}: this server allows at most {cfg.max_n} choices",
                       param="n")
    stops = req.stops()
    if any(not s for s in stops):
        raise APIError(400, "stop strings must not be empty", param="stop")
    spec = sampler_spec(req)
    check_vocabulary(req, spec, lm.vocab_size)
    opts = req.tokenwise
    if opts is not None and opts.control is not None:
        spec = spec.with_control(_control(opts, cfg, lm, max_tokens, req.model))
    info: dict[str, Any] = {"model": req.model, "sampler": spec.describe()}
    tools = None
    if kind == "chat":
        prompts, stops, tools, constraint = _plan_chat(req, lm, stops, info)
        logprobs = req.logprobs
        top = req.top_logprobs or 0
        if top and not logprobs:
            raise APIError(400, "top_logprobs needs logprobs=true", param="top_logprobs")
    else:
        prompts = _completion_prompts(lm, req.prompt)
        logprobs = req.logprobs is not None
        top = req.logprobs or 0
        _check_echo(req, prompts, max_tokens)
        fmt = req.response_format
        constraint = response_format_constraint(fmt.as_dict() if fmt is not None else None,
                                                 lm, stops)
    _check_constraint(constraint, opts)
    if constraint is not None:
        info["constraint"] = constraint.describe()
    check_choices(len(prompts), req.n, cfg.max_choices)
    uncertainty_n = opts.uncertainty.n if opts is not None and opts.uncertainty else 0
    check_seed(req.seed, len(prompts) * req.n, uncertainty_n)
    prompt_tokens = _count_tokens(lm, prompts, kind, max_tokens, max_tokens_given,
                                  check_context)
    choices = len(prompts) * req.n
    if spec.greedy:
        seeds: list[int | None] = [None] * choices
    elif req.seed is not None:
        seeds = [req.seed + c for c in range(choices)]
    else:  # drawn here, reported in the response, so any answer can be reproduced
        seeds = [secrets.randbelow(2**62) for _ in range(choices)]
    info.update({"seeds": seeds, "stop": stops, "max_tokens": max_tokens,
                 "prompt": prompts[0] if len(prompts) == 1 else prompts,
                 "compression": None, "uncertainty": None, "ead": None, "large_share": None,
                 "kv": None})
    kv = None
    if opts is not None and opts.kv is not None:
        kv = kv_setting(opts.kv)
        if opts.uncertainty is not None:
            raise APIError(400, "tokenwise.uncertainty samples its answers with a full cache, "
                                "not the tokenwise.kv one the reply uses; send the request "
                                "without one of them", param="tokenwise.kv",
                           code="unsupported_value")
        # each choice's report is added when it finishes (FinishEvent.kv)
        info["kv"] = {"setting": describe_kv(kv, opts.kv), "choices": None}
    large = None
    if opts is not None and opts.ead is not None:
        large = pick_model(models, opts.ead.large, "tokenwise.ead.large")
        if opts.ead.large == req.model:
            raise APIError(400, "tokenwise.ead.large names the request's own model; EAD "
                                "switches to a different (larger) one",
                           param="tokenwise.ead.large")
    if opts is not None and opts.uncertainty is not None:
        uncertainty_score.check(opts.uncertainty, cfg.max_uncertainty_n)
        if len(prompts) > 1:
            raise APIError(400, "tokenwise.uncertainty scores one prompt; send the prompts "
                                "one per request", param="tokenwise.uncertainty")
    stream_opts = req.stream_options
    if stream_opts is not None and not req.stream:
        raise APIError(400, "stream_options is only allowed with stream=true",
                       param="stream_options")
    return Plan(kind=kind, model=req.model, lm=lm, prompts=prompts,
                prompt_tokens=prompt_tokens, n=req.n, max_tokens=max_tokens, stops=stops,
                spec=spec, seeds=seeds, logprobs=logprobs, top_logprobs=top,
                stream=req.stream,
                include_usage=bool(stream_opts is not None and stream_opts.include_usage),
                ead=opts.ead if opts is not None else None, large=large,
                uncertainty=opts.uncertainty if opts is not None else None, info=info,
                echo=kind == "completion" and req.echo, tools=tools, constraint=constraint,
                kv=kv)


def _control(opts: TokenwiseOptions, cfg: ServerConfig, lm: Codec, max_tokens: int,
             model: str) -> ControlSpec:
    """The request's ``tokenwise.control``, checked (400s name the field)."""
    for other in ("ead", "uncertainty"):
        if getattr(opts, other) is not None:
            raise APIError(400, f"tokenwise.control cannot be combined with "
                                f"tokenwise.{other}: {other} decodes with samplers of its own, "
                                "which the control would not steer; send one of them",
                           param="tokenwise.control", code="conflicting_fields")
    return control_spec(opts.control, cfg.control_probes, lm, max_tokens, model)


def apply_compression(plan: Plan, req: ChatCompletionRequest | CompletionRequest,
                      cfg: ServerConfig, compressed: tuple[Any, dict[str, Any]]) -> Plan:
    """Put a compressed prompt into a plan made with ``check_context=False``, and check
    that it and ``max_tokens`` fit the context.

    Args:
        plan: the request's plan (one prompt); updated in place.
        req: the request it was planned from.
        cfg: the server's settings.
        compressed: ``(prompt, stats)`` from :mod:`~tokenwise.serving.prompt_compression`:
            chat messages or a text, which replace the prompt.

    Returns:
        ``plan``, with the new prompt, its length, its stop strings (chat) and
        ``info["compression"]``.

    Example:
        >>> from tokenwise.models import load
        >>> req = CompletionRequest(model="tw-small", prompt="7 + 2 =", max_tokens=2)
        >>> plan = plan_request(req, ServerConfig(), {"tw-small": load("tw-small")},
        ...                     check_context=False)
        >>> apply_compression(plan, req, ServerConfig(), ("7+2=", {"rate": 0.5})).prompts
        ['7+2=']
    """
    prompt, stats = compressed
    if plan.kind == "chat":
        prompts, stops, plan.info["chat_format"] = _render_chat(plan.lm, prompt, req.stops())
    else:
        prompts, stops = [prompt], plan.stops
    _, max_tokens_given = _max_tokens(req, cfg)
    plan.prompt_tokens = _count_tokens(plan.lm, prompts, plan.kind, plan.max_tokens,
                                       max_tokens_given, check_context=True)
    plan.prompts, plan.stops = prompts, stops
    plan.info.update({"stop": stops, "prompt": prompts[0], "compression": stats})
    return plan
