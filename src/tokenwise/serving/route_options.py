"""``tokenwise.route`` of a request: answer with a strategy router the server was started with.

The server loads every router it is given (``tokenwise serve --router NAME=DIR``, directories
written by ``tokenwise route train``) and every model those routers run when it starts
(:func:`load_routers`), so a missing directory or a model that does not load stops the
server instead of failing a client. A served model a router names is shared with it, not
loaded twice. A request names a router by NAME (``"tokenwise": {"route": NAME}`` or
``{"route": {"router": NAME}}``), never by path.

A routed request is answered by the router, not by the request's model: the feature model
reads the question, the probe picks a strategy of the router's table, and that strategy
answers (:meth:`tokenwise.routing.Router.answer`; its own model, sampler, token budget,
stop string, prompt template and ``n``-sample vote). So :func:`route_plan` refuses (400,
naming the field) what the router would not honour: ``stream``, ``n > 1``, sampling fields,
``stop``, logprobs, ``echo``, tools, a JSON ``response_format``, the other ``tokenwise``
extras, and a ``max_tokens`` below a strategy's budget. The question is the completion's
prompt (one text), or a chat's one user message (the strategies' templates are applied, not
the model's chat template). ``seed`` seeds a sampled strategy (drawn and reported when not
given). The request's ``model`` must be served; the response names it, and its
``tokenwise.route`` object names the strategy, the model that answered (null when the router
abstained), the decision (label, probabilities, reason), ``abstained``, the FLOPs spent (the
probe's read and the strategy's generation), the samples and their votes. ``usage`` counts
the prompt as the answering model read it (the feature model's when the router abstained)
and every sample's generated tokens.

Example:
    >>> from tokenwise.serving.schemas import RouteOptions, TokenwiseOptions
    >>> router_name(TokenwiseOptions(route="math")), router_name(
    ...     TokenwiseOptions(route=RouteOptions(router="math")))
    ('math', 'math')
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tokenwise.errors import TokenwiseError
from tokenwise.models import Codec, LanguageModel
from tokenwise.serving.config import ServerConfig
from tokenwise.serving.errors import APIError
from tokenwise.serving.planning import check_seed, pick_model
from tokenwise.serving.responses import Envelope, chat_choice, text_choice, usage
from tokenwise.serving.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    TokenwiseOptions,
)

#: the sampling fields a routed request may not set: the chosen strategy samples its own way
SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "min_p", "typical_p", "top_h",
                   "presence_penalty", "frequency_penalty", "repetition_penalty",
                   "logit_bias")
#: the other ``tokenwise`` extras, none of which a router's strategies run with
OTHER_EXTRAS = ("sampler", "control", "ead", "compress", "uncertainty", "kv")


@dataclass
class LoadedRouter:
    """A router of the server, with the models it runs.

    Attributes:
        name: its NAME on this server.
        path: its directory.
        router: the :class:`~tokenwise.routing.Router`.
        models: model name (as the router's table gives it) -> loaded model.
    """

    name: str
    path: str
    router: Any
    models: dict[str, LanguageModel]

    @property
    def max_new_tokens(self) -> int:
        """The largest token budget of the router's strategies (0 when all abstain)."""
        return max((s.max_new_tokens for s in self.router.strategies if not s.abstain),
                   default=0)

    @property
    def max_n(self) -> int:
        """The most samples a strategy of the router draws."""
        return max((s.n for s in self.router.strategies if not s.abstain), default=1)


def load_routers(paths: Mapping[str, str], served: Mapping[str, Codec] | None = None,
                 device: str = "cpu") -> dict[str, LoadedRouter]:
    """Load every router now, and every model it runs.

    Args:
        paths: router NAME -> directory written by ``tokenwise route train``.
        served: the server's models by id; a router naming one of them shares it.
        device: where the other models are loaded.

    Returns:
        NAME -> :class:`LoadedRouter`.

    Raises:
        TokenwiseError: naming NAME=DIR and what is wrong (no router there, a model that
            does not load).

    Example:
        >>> load_routers({"math": "/no/such/router"})
        Traceback (most recent call last):
        ...
        tokenwise.errors.TokenwiseError: router math=/no/such/router: '/no/such/router' holds ...
    """
    from tokenwise.models import load
    from tokenwise.routing import Router, check_layer

    own: dict[str, LanguageModel] = {}
    out = {}
    for name, path in paths.items():
        try:
            router = Router.load(path)
        except TokenwiseError as exc:
            raise TokenwiseError(f"router {name}={path}: {exc}") from None
        except (OSError, ValueError, KeyError) as exc:
            raise TokenwiseError(f"router {name}={path}: a damaged router ({exc})") from None
        models: dict[str, LanguageModel] = {}
        for model in router.models_needed():
            shared = (served or {}).get(model)
            if isinstance(shared, LanguageModel):
                models[model] = shared
                continue
            if model not in own:
                try:
                    own[model] = load(model, device=device)
                except (TokenwiseError, OSError, ValueError) as exc:
                    raise TokenwiseError(f"router {name}={path} runs model {model!r}, which "
                                         f"does not load: {exc}") from None
            models[model] = own[model]
        try:
            check_layer(models[router.feature_model], router.layer)
        except TokenwiseError as exc:
            raise TokenwiseError(f"router {name}={path}: {exc}") from None
        out[name] = LoadedRouter(name, path, router, models)
    return out


def router_name(opts: TokenwiseOptions) -> str:
    """The router NAME a request's ``tokenwise.route`` gives.

    Args:
        opts: the request's ``tokenwise`` object (with ``route`` set).
    """
    route = opts.route
    assert route is not None
    return route if isinstance(route, str) else route.router


@dataclass
class RoutePlan:
    """A routed request, checked.

    Attributes:
        kind: ``"chat"`` or ``"completion"``.
        model: the request's model id.
        routed: the router.
        question: what the router reads and its strategy answers.
        seed: the base seed of a sampled strategy.
    """

    kind: str
    model: str
    routed: LoadedRouter
    question: str
    seed: int


def _refuse(field: str, why: str, code: str = "conflicting_fields") -> APIError:
    return APIError(400, f"{field} cannot be combined with tokenwise.route: {why}",
                    param=field, code=code)


def route_plan(req: ChatCompletionRequest | CompletionRequest, cfg: ServerConfig,
               models: Mapping[str, Codec], routers: Mapping[str, LoadedRouter]) -> RoutePlan:
    """Check a routed request (400s name the field) and plan it.

    Args:
        req: the validated request, with ``tokenwise.route``.
        cfg: the server's settings.
        models: the served models (the request's ``model`` must be one).
        routers: the server's routers by NAME.

    Raises:
        APIError: 400 for an unknown router (the allowed names listed) or a field the
            router would not honour; 404 for an unknown model.
    """
    opts = req.tokenwise
    assert opts is not None and opts.route is not None
    name = router_name(opts)
    if name not in routers:
        allowed = (f"allowed {', '.join(sorted(routers))}" if routers else
                   "this server was started with none (tokenwise serve --router NAME=DIR)")
        raise APIError(400, f"tokenwise.route: {name!r} is not a router of this server: "
                            f"{allowed}", param="tokenwise.route", code="invalid_value")
    routed = routers[name]
    pick_model(models, req.model)
    kind = "chat" if isinstance(req, ChatCompletionRequest) else "completion"
    for extra in OTHER_EXTRAS:
        if getattr(opts, extra) is not None:
            raise _refuse(f"tokenwise.{extra}", "the router's strategies answer with their "
                                                "own model and sampler; send one of them")
    given = [f for f in SAMPLING_FIELDS if getattr(req, f) is not None]
    if given:
        raise _refuse(given[0], f"the chosen strategy samples its own way (fields given: "
                                f"{', '.join(given)}); leave them out")
    if req.stream:
        raise _refuse("stream", "a routed answer is given whole, once the strategy has "
                                "answered (with n samples, once they have voted); send "
                                "stream=false")
    if req.stream_options is not None:
        raise _refuse("stream_options", "a routed answer is not streamed")
    if req.n != 1:
        raise _refuse("n", f"n={req.n}: a router gives one answer (a strategy with n samples "
                           "votes on them); send n=1")
    if req.stops():
        raise _refuse("stop", "each strategy stops at its own stop string; leave stop out")
    limit = routed.max_new_tokens
    given_max = req.max_tokens
    if isinstance(req, ChatCompletionRequest) and req.max_completion_tokens is not None:
        given_max = req.max_completion_tokens
    if given_max is not None and given_max > cfg.max_tokens_limit:
        raise APIError(400, f"max_tokens={given_max} is over this server's limit of "
                            f"{cfg.max_tokens_limit}", param="max_tokens",
                       code="max_tokens_too_large")
    if given_max is not None and given_max < limit:
        raise _refuse("max_tokens", f"max_tokens={given_max} is below the {limit} tokens "
                                    f"router {name!r}'s strategies may write; leave it out "
                                    f"or give {limit} or more")
    if limit > cfg.max_tokens_limit:
        raise _refuse("tokenwise.route", f"router {name!r}'s strategies write up to {limit} "
                                         f"tokens, over this server's limit of "
                                         f"{cfg.max_tokens_limit}", code="max_tokens_too_large")
    fmt = req.response_format
    if fmt is not None and fmt.type != "text":
        raise _refuse("response_format", "the router's strategies write free text")
    if kind == "chat":
        assert isinstance(req, ChatCompletionRequest)
        question = _chat_question(req)
    else:
        assert isinstance(req, CompletionRequest)
        question = _completion_question(req)
    check_seed(req.seed, routed.max_n)
    seed = req.seed if req.seed is not None else secrets.randbelow(2**62)
    return RoutePlan(kind, req.model, routed, question, seed)


def _chat_question(req: ChatCompletionRequest) -> str:
    if req.logprobs or req.top_logprobs:
        raise _refuse("logprobs", "a routed answer may be a vote of several samples, or no "
                                  "model's at all (abstained); it has no per-token logprobs")
    if req.tools is not None or req.tool_choice is not None:
        raise _refuse("tools" if req.tools is not None else "tool_choice",
                      "the router's strategies do not call tools")
    if len(req.messages) != 1 or req.messages[0].role != "user":
        roles = ", ".join(m.role for m in req.messages)
        raise _refuse("messages", f"a router answers one question: send one user message "
                                  f"(got {len(req.messages)}: {roles})")
    text = req.messages[0].text()  # content parts joined, as a chat renders them
    if not text.strip():
        raise APIError(400, "messages.0 is empty: a router needs a question", param="messages")
    return text


def _completion_question(req: CompletionRequest) -> str:
    if req.logprobs is not None:
        raise _refuse("logprobs", "a routed answer may be a vote of several samples, or no "
                                  "model's at all (abstained); it has no per-token logprobs")
    if req.echo:
        raise _refuse("echo", "a router reads its question with its own prompt templates")
    prompt = req.prompt
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise _refuse("prompt", "a router answers one question given as text (not token ids, "
                                "not several prompts)")
    if not prompt.strip():
        raise APIError(400, "prompt 0 is empty", param="prompt")
    return prompt


def answer(plan: RoutePlan) -> dict[str, Any]:
    """Route and answer the planned question (blocking model work: run it where the models
    run) and give the response body.

    Args:
        plan: from :func:`route_plan`.

    Raises:
        APIError: 400 when a strategy refuses the question (e.g. longer than its model's
            context), naming what it said.
    """
    routed = plan.routed
    router = routed.router
    try:
        result = router.answer(routed.models, plan.question, seed=plan.seed)
    except TokenwiseError as exc:
        raise APIError(400, f"tokenwise.route: router {routed.name!r} could not answer this "
                            f"question: {exc}", param="tokenwise.route",
                       code="invalid_value") from None
    strategy = router.by_name[result.decision.strategy]
    ran = not strategy.abstain
    prompt = strategy.prompt.format(prompt=plan.question) if ran else plan.question
    # the answering model's read of its prompt; when abstaining, the feature model's
    prompt_tokens = result.answer.prompt_tokens if ran else len(
        routed.models[router.feature_model].encode(prompt, add_bos=True))
    sampled = ran and not strategy.greedy
    finish = "length" if (ran and strategy.n == 1
                          and result.answer.tokens >= strategy.max_new_tokens) else "stop"
    info = {"model": plan.model, "sampler": [dict(s) for s in strategy.sampler] if ran else [],
            "seeds": [plan.seed if sampled else None],
            "stop": [strategy.stop] if ran and strategy.stop else [],
            "max_tokens": strategy.max_new_tokens if ran else 0, "prompt": prompt,
            "compression": None, "uncertainty": None, "ead": None, "large_share": None,
            "kv": None, "mean_entropy": [result.answer.mean_entropy],
            "route": {"router": routed.name, "strategy": strategy.name,
                      "model": strategy.model if ran else None,
                      "feature_model": router.feature_model, "policy": router.policy,
                      "decision": {"label": result.decision.label,
                                   "probabilities": result.decision.probabilities,
                                   "reason": result.decision.reason},
                      "abstained": result.abstained, "flops": result.flops,
                      "n": strategy.n if ran else 0, "samples": result.answer.samples,
                      "votes": result.answer.votes, "seed": plan.seed if sampled else None}}
    env = Envelope(plan.kind, plan.model)
    choice = chat_choice(0, result.text, finish, None) if plan.kind == "chat" else \
        text_choice(0, result.text, None, finish)
    return env.body([choice], usage(prompt_tokens, result.answer.tokens), info)
