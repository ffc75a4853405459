"""The completion endpoints: parse, plan, generate through the batcher, answer or stream.

A request is cancelled when its client disconnects: a streamed one when the server's send
fails (Starlette cancels the stream), a plain one by a task that waits for the client's
``http.disconnect``. Cancelling marks the request's job; the engine drops it before its
batch starts, or stops decoding it at the next step (and stops the batch once nobody in it
is left). A request unfinished after the server's timeout is stopped the same way and
answered with 504.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from tokenwise.models import LanguageModel
from tokenwise.serving.batcher import Batcher, Job
from tokenwise.serving.config import ServerConfig
from tokenwise.serving.ead_step import run_ead
from tokenwise.serving.engine import FinishEvent, Row, TokenEvent
from tokenwise.serving.errors import APIError, from_validation
from tokenwise.serving.logprobs import WireToken, chat_logprobs, completion_logprobs
from tokenwise.serving.planning import Plan, chat_messages, plan_request
from tokenwise.serving.prompt_compression import compress_prompt
from tokenwise.serving.responses import (
    DONE,
    Envelope,
    chat_choice,
    chat_delta,
    sse,
    text_choice,
    usage,
)
from tokenwise.serving.schemas import ChatCompletionRequest, CompletionRequest
from tokenwise.serving.uncertainty_score import score_uncertainty

Event = tuple[int, TokenEvent | FinishEvent]


class CompletionService:
    """Serves ``/v1/chat/completions`` and ``/v1/completions``.

    Args:
        config: the server's settings.
        models: the served models.
        batcher: the engine's front door.
    """

    def __init__(self, config: ServerConfig, models: dict[str, LanguageModel],
                 batcher: Batcher) -> None:
        self.config = config
        self.models = models
        self.batcher = batcher

    async def handle(self, request: Request, kind: str) -> Response:
        """Answer one request (``kind``: ``"chat"`` or ``"completion"``)."""
        raw = await request.body()
        schema = ChatCompletionRequest if kind == "chat" else CompletionRequest
        if not raw.strip():
            raise APIError(400, "the request body is empty; send a JSON object",
                           code="invalid_json")
        try:
            req = schema.model_validate_json(raw)
        except ValidationError as exc:
            raise from_validation(exc) from None
        plan = await self._plan(req, kind)
        deadline = time.monotonic() + self.config.request_timeout_s
        if plan.stream:
            return StreamingResponse(self._stream(plan, deadline), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache",
                                              "X-Accel-Buffering": "no"})
        work = asyncio.ensure_future(self._complete(plan, deadline))
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

    async def _plan(self, req: ChatCompletionRequest | CompletionRequest, kind: str) -> Plan:
        opts = req.tokenwise
        if opts is None or opts.compress is None:
            return plan_request(req, self.config, self.models)
        # Every cheap check first; the context check waits for the shorter prompt.
        pre = plan_request(req, self.config, self.models, check_context=False)
        if kind == "chat":
            payload: Any = chat_messages(req)
        elif len(pre.prompts) == 1:
            payload = pre.prompts[0]
        else:
            raise APIError(400, "tokenwise.compress takes one prompt; send the prompts one "
                                "per request", param="tokenwise.compress")
        options, lm, fixed = opts.compress, pre.lm, self.config.compress_models
        compressed = await self.batcher.call(lambda: compress_prompt(options, payload, lm,
                                                                     fixed))
        return plan_request(req, self.config, self.models, compressed=compressed)

    async def _events(self, plan: Plan, deadline: float) -> AsyncIterator[Event]:
        """Every choice's token and finish events, in the order they happen."""
        if plan.ead is not None:
            assert plan.large is not None
            infos = []
            for c in range(plan.choices):
                prompt, seed = plan.prompts[c // plan.n], plan.seeds[c]
                events, info = await self.batcher.call(
                    lambda p=prompt, s=seed: run_ead(plan.lm, plan.large, p, plan.spec,
                                                     plan.ead, plan.max_tokens, plan.stops, s))
                infos.append(info)
                for event in events:
                    yield c, event
            plan.info["ead"] = {**{k: v for k, v in infos[0].items()
                                   if k not in ("large_share", "switches", "flops",
                                                "forward_passes")},
                                "choices": [{k: i[k] for k in ("large_share", "switches",
                                                                "flops", "forward_passes")}
                                            for i in infos]}
            return
        inbox = _Inbox(asyncio.get_running_loop(), wake_on_tokens=plan.stream)
        rows = [Row(prompt=plan.prompts[c // plan.n], max_tokens=plan.max_tokens,
                    prompt_tokens=plan.prompt_tokens[c // plan.n], stops=plan.stops,
                    seed=plan.seeds[c], top_logprobs=plan.top_logprobs, deadline=deadline,
                    sink=lambda ev, c=c: inbox.put((c, ev)))
                for c in range(plan.choices)]
        queue = inbox.queue
        job = Job(plan.model, plan.spec, rows)
        self.batcher.submit(job)
        open_choices = plan.choices
        try:
            while open_choices:
                try:
                    c, event = await asyncio.wait_for(queue.get(),
                                                      max(deadline - time.monotonic(), 0.0))
                except asyncio.TimeoutError:
                    raise _timeout(self.config.request_timeout_s) from None
                if isinstance(event, FinishEvent):
                    open_choices -= 1
                    if event.reason == "timeout":
                        raise _timeout(self.config.request_timeout_s)
                    if event.reason in ("error", "cancelled"):
                        raise APIError(500, f"generation ended early ({event.reason}); see the "
                                            "server log")
                yield c, event
        finally:
            job.cancelled.set()  # no-op once every row has finished

    async def _uncertainty(self, plan: Plan) -> None:
        if plan.uncertainty is None:
            return
        options, prompt = plan.uncertainty, plan.prompts[0]
        plan.info["uncertainty"] = await self.batcher.call(
            lambda: score_uncertainty(options, plan.lm, prompt, plan.max_tokens, plan.stops,
                                      seed=plan.seeds[0]))

    def _finish_info(self, plan: Plan, tokens: list[list[WireToken]]) -> dict[str, Any]:
        info = plan.info
        info["mean_entropy"] = [sum(t.entropy for t in ts) / len(ts) if ts else 0.0
                                for ts in tokens]
        if plan.large is not None:
            written = [t for ts in tokens for t in ts]
            large = sum(t.model == plan.large.name for t in written)
            info["large_share"] = large / len(written) if written else 0.0
        return info

    async def _complete(self, plan: Plan, deadline: float) -> dict[str, Any]:
        tokens: list[list[WireToken]] = [[] for _ in range(plan.choices)]
        finished: dict[int, FinishEvent] = {}
        async for c, event in self._events(plan, deadline):
            if isinstance(event, TokenEvent):
                tokens[c].append(event.token)
            else:
                finished[c] = event
        await self._uncertainty(plan)
        env = Envelope(plan.kind, plan.model)
        choices = []
        for c in range(plan.choices):
            done = finished[c]
            if plan.kind == "chat":
                lp = chat_logprobs(tokens[c]) if plan.logprobs else None
                choices.append(chat_choice(c, done.text, done.reason, lp))
            else:
                lp = completion_logprobs(tokens[c]) if plan.logprobs else None
                choices.append(text_choice(c, done.text, lp, done.reason))
        use = usage(sum(plan.prompt_tokens),
                    sum(f.completion_tokens for f in finished.values()))
        return env.body(choices, use, self._finish_info(plan, tokens))

    async def _stream(self, plan: Plan, deadline: float) -> AsyncIterator[bytes]:
        env = Envelope(plan.kind, plan.model, plan.include_usage)
        chat = plan.kind == "chat"
        tokens: list[list[WireToken]] = [[] for _ in range(plan.choices)]
        offsets = [0] * plan.choices
        completion_tokens = 0
        last_finish: dict[str, Any] | None = None
        try:
            if chat:
                yield sse(env.chunk([chat_delta(c, {"role": "assistant", "content": ""})
                                     for c in range(plan.choices)]))
            async for c, event in self._events(plan, deadline):
                if isinstance(event, TokenEvent):
                    tokens[c].append(event.token)
                    lp = None
                    if plan.logprobs:
                        lp = chat_logprobs([event.token]) if chat else \
                            completion_logprobs([event.token], offsets[c])
                    offsets[c] += len(event.token.text)
                    if not event.delta and lp is None:
                        continue
                    choice = chat_delta(c, {"content": event.delta}, lp) if chat else \
                        text_choice(c, event.delta, lp)
                    yield sse(env.chunk([choice]))
                    continue
                completion_tokens += event.completion_tokens
                if last_finish is not None:
                    yield sse(last_finish)
                delta = {"content": event.delta} if event.delta else {}
                choice = chat_delta(c, delta, None, event.reason) if chat else \
                    text_choice(c, event.delta, None, event.reason)
                last_finish = env.chunk([choice])
            await self._uncertainty(plan)
            assert last_finish is not None
            last_finish["tokenwise"] = self._finish_info(plan, tokens)
            yield sse(last_finish)
            if plan.include_usage:
                yield sse(env.usage_chunk(usage(sum(plan.prompt_tokens), completion_tokens)))
        except APIError as exc:  # headers are sent: the error travels as an event
            yield sse(exc.body())
        yield DONE


class _Inbox:
    """Events from the engine thread to the event loop, in order.

    Waking the event loop costs a system call and a turn of the loop; a plain (unstreamed)
    request needs nothing before its sequences finish, so its tokens wait here and travel
    with the finish event, one wake-up per sequence instead of one per token.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, wake_on_tokens: bool) -> None:
        self.loop = loop
        self.wake_on_tokens = wake_on_tokens
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self._held: list[Event] = []
        self._lock = threading.Lock()

    def put(self, item: Event) -> None:
        """Called on the engine thread."""
        with self._lock:
            self._held.append(item)
            if not self.wake_on_tokens and isinstance(item[1], TokenEvent):
                return
        self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            held, self._held = self._held, []
        for item in held:
            self.queue.put_nowait(item)


def _timeout(seconds: float) -> APIError:
    return APIError(504, f"the request did not finish within the server's timeout of "
                         f"{seconds:g} s", code="timeout")


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

