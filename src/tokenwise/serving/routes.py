"""The completion endpoints: parse, plan, generate through the backend, answer or stream.

The routes talk to a :class:`ServingBackend` only: the embedded one
(:class:`~tokenwise.serving.batcher.Batcher`, the default) or vLLM's
(:class:`~tokenwise.vllm.server.VLLMBackend`); which one serves is decided once,
when the app is built.

A request is cancelled when its client disconnects: a streamed one when the server's send
fails (Starlette cancels the stream), a plain one by a task that waits for the client's
``http.disconnect``. Cancelling closes the backend's event stream for the request, and the
backend drops the request's work (the embedded one before its batch starts or at the next
decode step; vLLM aborts the request). A request unfinished after its deadline is stopped
the same way and answered with 504 (streamed: a final error event): the deadline is the
server's ``request_timeout_s`` from the request's arrival, or the request's own ``timeout``
when that is sooner.

The server holds at most ``max_queue`` completion requests (waiting or generating); one more
gets 429 with ``Retry-After``, and while the server drains for shutdown new ones get 503
(:mod:`tokenwise.serving.admission`). A failure while a request generates is a 500 that
names nothing of the server's insides (the server log has the traceback); the batcher keeps
it to that request.

``echo`` on ``/v1/completions`` puts each choice's prompt (and, with ``logprobs``, its
tokens' logprobs, top alternatives and entropies) in front of the choice's text and logprobs;
streamed, it is the choice's first chunk. A backend serves it by sending a
:class:`~tokenwise.serving.engine.PromptEvent` first and saying so with
``serves_echo = True``; on any other backend an echo request is a 400.

With ``tools`` a chat reply is parsed into ``tool_calls``
(:func:`~tokenwise.serving.tools.parse_tool_calls`): when it holds calls the message has
them, its ``content`` is the text outside them (null when none) and ``finish_reason`` is
``"tool_calls"``. Streamed, content goes out as it is written up to where a call may begin
(:func:`~tokenwise.serving.tools.stream_safe_prefix`); the rest is held until the choice
ends, then sent as content, or as one ``delta.tool_calls`` chunk holding each call whole.
A reply held to a constraint (``response_format`` JSON, a forced call) reports each token's
``constrained_entropy`` beside its ``entropy``, and the ``tokenwise`` object its
``mean_constrained_entropy``.

``tokenwise.route`` (a router the server was started with, :mod:`tokenwise.serving.
route_options`) is answered by the router on the backend's ``call``, not through
``events``: the whole answer at once, within the request's deadline. A backend that counts
requests (:class:`~tokenwise.serving.metrics.MeasuredBackend`) counts it through its
``measure_answer``, read with ``getattr`` (a backend without it counts nothing there).

``tokenwise.kv`` (a press or a quantised cache, :mod:`tokenwise.serving.kv_options`) is
built by the planner and checked against the request's model(s) through the backend's
``call`` (on the thread that runs the model) before any reply starts, so a bad setting is a
400 for a stream too; each choice's finish event carries what its cache held, which the
``tokenwise`` object reports under ``kv.choices``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from tokenwise.compression.counting import TokenCounter
from tokenwise.models import Codec
from tokenwise.serving.admission import Admission, Slot, cut_error
from tokenwise.serving.batcher import Event
from tokenwise.serving.config import ServerConfig
from tokenwise.serving.constraints import warm_up
from tokenwise.serving.engine import FinishEvent, PromptEvent, TokenEvent
from tokenwise.serving.errors import APIError, parse_body
from tokenwise.serving.kv_options import check_model as check_kv_model
from tokenwise.serving.logprobs import (
    WireToken,
    chat_logprobs,
    completion_logprobs,
    echo_logprobs,
    prompt_logprobs,
)
from tokenwise.serving.planning import (
    Plan,
    apply_compression,
    chat_messages,
    needs_grammar,
    plan_request,
)
from tokenwise.serving.prompt_compression import compress_prompt
from tokenwise.serving.responses import (
    DONE,
    Envelope,
    chat_choice,
    chat_delta,
    sse,
    text_choice,
    tool_call_deltas,
    usage,
)
from tokenwise.serving.route_options import LoadedRouter, RoutePlan, route_plan
from tokenwise.serving.route_options import answer as route_answer
from tokenwise.serving.schemas import ChatCompletionRequest, CompletionRequest
from tokenwise.serving.tools import parse_tool_calls, stream_safe_prefix

log = logging.getLogger("tokenwise.serving")


class ServingBackend(Protocol):
    """What the routes need from the backend that generates.

    ``check`` refuses (400) what the backend cannot do, before any work; ``check_plan``
    refuses a planned request past the backend's own limits (vLLM counts the context one
    token more strictly than the planner's rule); ``call`` runs
    blocking model work (prompt compression) off the event loop; ``events`` yields every
    choice's :class:`TokenEvent` s and exactly one :class:`FinishEvent` per choice, and
    stops the request's work when closed early; ``uncertainty`` computes the
    ``tokenwise.uncertainty`` object; ``report`` gives ``/tokenwise/stats``. A backend
    that serves ``echo`` sets ``serves_echo = True`` and sends each choice of an echo request
    a :class:`~tokenwise.serving.engine.PromptEvent` before its tokens (read with
    ``getattr``: a backend without the attribute has echo refused).
    """

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def check(self, req: ChatCompletionRequest | CompletionRequest) -> None: ...

    def check_plan(self, plan: Plan) -> None: ...

    async def call(self, fn: Callable[[], Any]) -> Any: ...

    def events(self, plan: Plan, deadline: float) -> AsyncIterator[Event]: ...

    async def uncertainty(self, plan: Plan) -> dict[str, Any]: ...

    def report(self) -> dict[str, Any]: ...


class CompletionService:
    """Serves ``/v1/chat/completions`` and ``/v1/completions``.

    Args:
        config: the server's settings.
        models: the served models; the routes only render, encode and count with them (any
            :class:`~tokenwise.models.Codec`): the backend generates.
        backend: the backend that generates.
        admission: the places for held requests (default: ``config.max_queue`` of them).
        routers: the routers ``tokenwise.route`` may name
            (:func:`~tokenwise.serving.route_options.load_routers`; default none).
    """

    def __init__(self, config: ServerConfig, models: Mapping[str, Codec],
                 backend: ServingBackend, admission: Admission | None = None,
                 routers: Mapping[str, LoadedRouter] | None = None) -> None:
        self.config = config
        self.models = models
        self.backend = backend
        self.admission = admission or Admission(config.max_queue)
        self.routers = dict(routers or {})

    async def handle(self, request: Request, kind: str) -> Response:
        """Answer one request (``kind``: ``"chat"`` or ``"completion"``)."""
        body = await request.body()  # read first: a client slow to send holds no place
        slot = self.admission.admit(self.config.request_timeout_s)
        try:
            schema = ChatCompletionRequest if kind == "chat" else CompletionRequest
            req = parse_body(body, schema)
            if req.timeout is not None and req.timeout < self.config.request_timeout_s:
                slot.deadline, slot.own_timeout = slot.arrived + req.timeout, True
            if req.tokenwise is not None and req.tokenwise.route is not None:
                routed = self._route_plan(req)
                slot.planned = True
                return await self._until_done(request, self._routed(routed, slot))
            plan = await self._plan(req, kind)
            slot.planned = True
            if plan.stream:
                response = _HeldStream(self._stream(plan, slot),
                                       lambda s=slot: self.admission.release(s),
                                       media_type="text/event-stream",
                                       headers={"Cache-Control": "no-cache",
                                                "X-Accel-Buffering": "no"})
                slot = None  # released when the stream ends
                return response
            return await self._until_done(request, self._complete(plan, slot))
        finally:
            if slot is not None:
                self.admission.release(slot)

    async def _until_done(self, request: Request,
                          job: Coroutine[Any, Any, dict[str, Any]]) -> Response:
        """The body ``job`` makes, or 499 (and ``job`` cancelled) when the client leaves."""
        work = asyncio.ensure_future(job)
        gone = asyncio.ensure_future(_client_gone(request))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not work.done():
                work.cancel()  # the client left (or the server stops): stop its decoding
            gone.cancel()
        if not work.done() or work.cancelled():
            return Response(status_code=499)
        return JSONResponse(work.result())

    def _route_plan(self, req: ChatCompletionRequest | CompletionRequest) -> RoutePlan:
        """A ``tokenwise.route`` request checked: by the backend first (vLLM refuses it,
        saying why), then against the server's routers."""
        self.backend.check(req)
        return route_plan(req, self.config, self.models, self.routers)

    async def _routed(self, plan: RoutePlan, slot: Slot) -> dict[str, Any]:
        """Answer a routed request on the backend's model thread (between batches), within
        the request's deadline: past it, or when the drain cuts it, the request ends (504,
        503); a router already answering finishes its few tokens in the background."""
        when = asyncio.get_running_loop().time() + (slot.deadline - time.monotonic())
        answer = self.backend.call(lambda: route_answer(plan))
        measure = getattr(self.backend, "measure_answer", None)
        job = _once(answer if measure is None else measure(plan.model, plan.kind, answer))
        try:
            _, body = await _next_event(job, when, slot)
        except asyncio.TimeoutError:
            raise cut_error() if slot.cut else self._timeout(slot) from None
        finally:
            await job.aclose()
        return body

    async def _plan(self, req: ChatCompletionRequest | CompletionRequest, kind: str) -> Plan:
        plan = await self._plan_checked(req, kind)
        self.backend.check_plan(plan)
        if plan.kv is not None:
            # building a press's cache hooks the model's attention: on the model's thread
            models = [(plan.model, "tokenwise.kv")]
            if plan.ead is not None:
                models.append((plan.ead.large, "tokenwise.kv"))
            for name, field in models:
                lm = self.models[name]
                await self.backend.call(lambda lm=lm, f=field: check_kv_model(lm, plan.kv, f))
        return plan

    async def _plan_checked(self, req: ChatCompletionRequest | CompletionRequest,
                            kind: str) -> Plan:
        if isinstance(req, CompletionRequest) and req.echo \
                and not getattr(self.backend, "serves_echo", False):
            raise APIError(400, "echo is not supported by this server's engine; serve with "
                                "--engine tokenwise (the default) for echo and prompt logprobs",
                           param="echo", code="unsupported_on_engine")
        self.backend.check(req)
        opts = req.tokenwise
        grammar = needs_grammar(req)
        if opts is None or opts.compress is None:
            if grammar or getattr(req, "tools", None):
                # building the grammar engine's view of a vocabulary, compiling a schema and
                # rendering tools can take seconds: not on the event loop
                return await asyncio.to_thread(plan_request, req, self.config, self.models)
            return plan_request(req, self.config, self.models)
        if grammar and req.model in self.models:
            await asyncio.to_thread(warm_up, self.models[req.model])
        # Every cheap check first; the context check waits for the shorter prompt.
        plan = plan_request(req, self.config, self.models, check_context=False)
        if kind == "chat":
            payload: Any = chat_messages(req)
        elif len(plan.prompts) == 1:
            payload = plan.prompts[0]
        else:
            raise APIError(400, "tokenwise.compress takes one prompt; send the prompts one "
                                "per request", param="tokenwise.compress")
        # budgets count the served model's tokens; its tokenizer is all compression reads
        options, fixed = opts.compress, self.config.compress_models
        counter = TokenCounter(plan.lm.tokenizer, plan.lm.name)
        compressed = await self.backend.call(lambda: compress_prompt(options, payload, counter,
                                                                      fixed))
        return apply_compression(plan, req, self.config, compressed)

    async def _events(self, plan: Plan, slot: Slot) -> AsyncIterator[Event]:
        """Every choice's token and finish events, in the order they happen; a 504 past the
        request's deadline, a 503 once the drain cuts it, a 500 for a choice that failed."""
        events = self.backend.events(plan, slot.deadline)
        open_choices = plan.choices
        loop = asyncio.get_running_loop()
        when = loop.time() + (slot.deadline - time.monotonic())
        try:
            while open_choices:
                if slot.cut:
                    raise cut_error()
                try:
                    c, event = await _next_event(events, when, slot)
                except asyncio.TimeoutError:
                    raise cut_error() if slot.cut else self._timeout(slot) from None
                if isinstance(event, FinishEvent):
                    open_choices -= 1
                    if event.reason == "timeout":
                        raise cut_error() if slot.cut else self._timeout(slot)
                    if event.reason == "error":
                        raise APIError(500, "the server failed while generating this "
                                            "request's reply; see the server log",
                                       code="generation_failed")
                    if event.reason == "cancelled":
                        raise APIError(500, "the server stopped generating this request's "
                                            "reply early; see the server log",
                                       code="generation_failed")
                yield c, event
        finally:
            await events.aclose()  # stops the request's work when it ends early

    def _timeout(self, slot: Slot) -> APIError:
        """The 504 of a request past its deadline, naming the limit that applied."""
        if slot.own_timeout:
            return APIError(504, f"the request did not finish within its timeout of "
                                 f"{slot.deadline - slot.arrived:g} s", param="timeout",
                            code="timeout")
        return APIError(504, f"the request did not finish within the server's timeout of "
                             f"{self.config.request_timeout_s:g} s", code="timeout")

    async def _uncertainty(self, plan: Plan) -> None:
        if plan.uncertainty is not None:
            plan.info["uncertainty"] = await self.backend.uncertainty(plan)

    def _finish_info(self, plan: Plan, tokens: list[list[WireToken]],
                     finished: Mapping[int, FinishEvent]) -> dict[str, Any]:
        info = plan.info
        if info.get("kv") is not None:  # what each choice's cache held
            info["kv"]["choices"] = [finished[c].kv if c in finished else None
                                     for c in range(plan.choices)]
        # None where the backend reported no entropy (vLLM computes it only with logprobs)
        info["mean_entropy"] = _means(tokens, "entropy")
        if plan.constraint is not None:
            info["mean_constrained_entropy"] = _means(tokens, "constrained_entropy")
        if plan.large is not None:
            written = [t for ts in tokens for t in ts]
            large = sum(t.model == plan.large.name for t in written)
            info["large_share"] = large / len(written) if written else 0.0
        return info

    async def _complete(self, plan: Plan, slot: Slot) -> dict[str, Any]:
        tokens: list[list[WireToken]] = [[] for _ in range(plan.choices)]
        finished: dict[int, FinishEvent] = {}
        prompts: dict[int, PromptEvent] = {}
        async for c, event in self._events(plan, slot):
            if isinstance(event, TokenEvent):
                tokens[c].append(event.token)
            elif isinstance(event, PromptEvent):
                prompts[c] = event
            else:
                finished[c] = event
        await self._uncertainty(plan)
        env = Envelope(plan.kind, plan.model)
        choices = []
        for c in range(plan.choices):
            done = finished[c]
            if plan.kind == "chat":
                lp = chat_logprobs(tokens[c]) if plan.logprobs else None
                parsed = parse_tool_calls(done.text, plan.tools, index=c)
                if parsed.tool_calls:
                    choices.append(chat_choice(c, parsed.content, "tool_calls", lp,
                                               parsed.tool_calls))
                else:
                    choices.append(chat_choice(c, done.text, done.reason, lp))
            elif plan.echo:
                echoed = _echoed(prompts, c)
                lp = echo_logprobs(_scored(echoed), echoed.hidden, echoed.text, tokens[c]) \
                    if plan.logprobs else None
                choices.append(text_choice(c, echoed.text + done.text, lp, done.reason))
            else:
                lp = completion_logprobs(tokens[c]) if plan.logprobs else None
                choices.append(text_choice(c, done.text, lp, done.reason))
        use = usage(sum(plan.prompt_tokens),
                    sum(f.completion_tokens for f in finished.values()))
        return env.body(choices, use, self._finish_info(plan, tokens, finished))

    async def _stream(self, plan: Plan, slot: Slot) -> AsyncIterator[bytes]:
        env = Envelope(plan.kind, plan.model, plan.include_usage)
        chat = plan.kind == "chat"
        tokens: list[list[WireToken]] = [[] for _ in range(plan.choices)]
        offsets = [0] * plan.choices
        completion_tokens = 0
        last_finish: dict[str, Any] | None = None
        finished: dict[int, FinishEvent] = {}
        calls = chat and plan.tools is not None and plan.tools.choice != "none"
        written = [""] * plan.choices  # calls: each choice's text so far
        sent = [0] * plan.choices  # calls: how much of it went out as content
        try:
            if chat:
                yield sse(env.chunk([chat_delta(c, {"role": "assistant", "content": ""})
                                     for c in range(plan.choices)]))
            async for c, event in self._events(plan, slot):
                if isinstance(event, PromptEvent):
                    lp = prompt_logprobs(_scored(event), event.hidden) \
                        if plan.logprobs else None
                    offsets[c] = len(event.text)
                    yield sse(env.chunk([text_choice(c, event.text, lp)]))
                    continue
                if isinstance(event, TokenEvent):
                    tokens[c].append(event.token)
                    lp = None
                    if plan.logprobs:
                        lp = chat_logprobs([event.token]) if chat else \
                            completion_logprobs([event.token], offsets[c])
                    offsets[c] += len(event.token.text)
                    delta = event.delta
                    if calls:  # hold back what may be a call
                        written[c] += delta
                        safe = max(stream_safe_prefix(written[c]), sent[c])
                        delta, sent[c] = written[c][sent[c]:safe], safe
                    if not delta and lp is None:
                        continue
                    choice = chat_delta(c, {"content": delta}, lp) if chat else \
                        text_choice(c, delta, lp)
                    yield sse(env.chunk([choice]))
                    continue
                completion_tokens += event.completion_tokens
                finished[c] = event
                if last_finish is not None:
                    yield sse(last_finish)
                reason, rest = event.reason, event.delta
                if calls:
                    parsed = parse_tool_calls(event.text, plan.tools, index=c)
                    rest = event.text[sent[c]:]
                    if parsed.tool_calls:
                        reason, rest = "tool_calls", _content_left(parsed.content,
                                                                   event.text[:sent[c]])
                        if rest:
                            yield sse(env.chunk([chat_delta(c, {"content": rest})]))
                        rest = ""
                        yield sse(env.chunk([chat_delta(
                            c, {"tool_calls": tool_call_deltas(parsed.tool_calls)})]))
                delta = {"content": rest} if rest else {}
                choice = chat_delta(c, delta, None, reason) if chat else \
                    text_choice(c, rest, None, reason)
                last_finish = env.chunk([choice])
            await self._uncertainty(plan)
            assert last_finish is not None
            last_finish["tokenwise"] = self._finish_info(plan, tokens, finished)
            yield sse(last_finish)
            if plan.include_usage:
                yield sse(env.usage_chunk(usage(sum(plan.prompt_tokens), completion_tokens)))
        except APIError as exc:  # headers are sent: the error travels as an event
            yield sse(exc.body())
        except Exception:  # the same, saying nothing of the failure but that it happened
            log.exception("a streamed %s request failed", plan.kind)
            yield sse(internal_error().body())
        yield DONE


def _means(tokens: list[list[WireToken]], field: str) -> list[float | None]:
    """Each choice's mean of a per-token value: None where a token lacks it, 0 for none."""
    out: list[float | None] = []
    for ts in tokens:
        values = [getattr(t, field) for t in ts]
        out.append(None if None in values else sum(values) / len(values) if values else 0.0)
    return out


def _content_left(content: str | None, sent: str) -> str:
    """What of a parsed reply's ``content`` a stream has not sent yet: it sent the text
    before the first call (``sent``); the content is the text outside the calls, stripped,
    so what follows that text in it is left (a stream may thus hold whitespace around a call
    that the content strips).

    Example:
        >>> _content_left("Sure. \\n Done.", "Sure. ")
        '\\n Done.'
        >>> _content_left("Sure.", "Sure. ")
        ''
    """
    content, head = content or "", sent.lstrip()
    for start in (head, head.rstrip()):
        if content.startswith(start):
            return content[len(start):]
    return ""


def _echoed(prompts: dict[int, PromptEvent], choice: int) -> PromptEvent:
    """Choice ``choice``'s prompt event (a backend that serves echo sends one per choice)."""
    if choice not in prompts:
        raise APIError(500, "the engine did not send the prompt of an echo request; see the "
                            "server log")
    return prompts[choice]


def _scored(event: PromptEvent) -> list[WireToken]:
    """The prompt tokens of an event the request asked to be scored."""
    if event.tokens is None:
        raise APIError(500, "the engine did not score the prompt of an echo request with "
                            "logprobs; see the server log")
    return event.tokens


async def _once(awaitable: Awaitable[Any]) -> AsyncIterator[tuple[int, Any]]:
    """``awaitable``'s result as the one event of an event stream (choice 0)."""
    yield 0, await awaitable


async def _next_event(events: AsyncIterator[Any], when: float, slot: Slot) -> Any:
    """The next event, or :class:`asyncio.TimeoutError` at loop time ``when``, or sooner when
    the drain cuts the request while it waits (Python 3.11+: the wait's timeout is
    rescheduled; on 3.10 a cut request notices at its next event or its deadline)."""
    if not hasattr(asyncio, "timeout_at"):  # Python 3.10
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(anext(events), max(when - loop.time(), 0.0))
    async with asyncio.timeout_at(when) as timeout:
        slot.timeout = timeout
        try:
            return await anext(events)
        finally:
            slot.timeout = None


def internal_error() -> APIError:
    """The 500 of an unexpected failure: it names nothing of the server's insides (no
    exception text, type or path); the server log has the traceback.

    Example:
        >>> internal_error().body()["error"]["message"]
        'the server failed to answer this request; see the server log'
    """
    return APIError(500, "the server failed to answer this request; see the server log",
                    code="internal_error")


class _HeldStream(StreamingResponse):
    """A streamed response that gives its request's place back when it ends, however it
    ends (also when the client left before its first byte: its body never started)."""

    def __init__(self, content: AsyncIterator[bytes], release: Callable[[], None],
                 **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._release = release

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


async def _client_gone(request: Request) -> None:
    """Return when the client disconnects."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def register(app: Any, service: CompletionService) -> None:
    """Add the two completion routes to ``app``."""

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await service.handle(request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await service.handle(request, "completion")

