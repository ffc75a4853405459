"""`Batcher`: collect concurrent requests for a moment, decode compatible ones together.

All model work runs on one worker thread, so the event loop stays free to accept
connections and stream tokens while a batch decodes. When the thread is idle and a request
arrives, the batcher waits ``window_s`` for company; while a batch decodes, new requests
queue up and the next batch takes all compatible ones at once. Compatible means the same
model and the same sampler spec, and a longest prompt plus longest ``max_tokens`` that fit
the model's context; ``max_tokens``, stop strings, seeds, logprob settings and constraints
(JSON schemas, forced tool calls: each row is held to its own, see
:mod:`tokenwise.serving.constraints`) may differ.
Requests whose client left before their batch began are not decoded at all.

No request can fail another: when a batch raises, its rows still open are decoded again one
by one, each replaying the tokens it already delivered (checked, not sent twice), so only a
row that fails alone gets an error. A failure outside the batch runner (scheduling, the
worker's own bookkeeping) ends the open rows of the requests it touched with an error, and
the worker goes on with the next batch.

Other model work (compression, uncertainty sampling, entropy-adaptive decoding) goes
through :meth:`Batcher.call`, on the same thread, between batches.

A request with ``tokenwise.kv`` (a press or a quantised cache) is a batch of its own: its
cache keeps other tokens than a padded batch's rows would, so its choices are decoded one
after another, each with its own compressed cache, while other requests batch as before
(streaming, cancellation and deadlines work as for any batch). A request with
``tokenwise.control`` (semantic control, :mod:`tokenwise.serving.control_options`) is
decoded the same way, one choice at a time: the sampler's rollouts draw from one random
stream for the batch, so a row's tokens would depend on the rows beside it, and a seed must
give the same reply alone or in any batch.

The batcher is the embedded backend behind the completion routes: :meth:`Batcher.events`
turns a planned request into its choices' token and finish events (the interface
:class:`tokenwise.serving.routes.ServingBackend` that another backend, e.g. vLLM's,
implements too). Each batch goes through the batch runner
(:func:`tokenwise.serving.engine.run_batch`).

With ``batching=False`` every request is decoded alone, in arrival order: the baseline of
the load benchmark.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from tokenwise.models import LanguageModel
from tokenwise.serving.ead_step import run_ead
from tokenwise.serving.engine import (
    BatchStats,
    FinishEvent,
    PromptEvent,
    Row,
    TokenEvent,
    run_batch,
)
from tokenwise.serving.logprobs import TokenBytes
from tokenwise.serving.planning import Plan
from tokenwise.serving.sampler_spec import SamplerSpec
from tokenwise.serving.schemas import ChatCompletionRequest, CompletionRequest
from tokenwise.serving.uncertainty_score import score_uncertainty

log = logging.getLogger("tokenwise.serving")

#: ``(choice index, event)``: what a backend yields for a request (a
#: :class:`~tokenwise.serving.engine.PromptEvent` only for an ``echo`` request, and only
#: from a backend that serves echo).
Event = tuple[int, PromptEvent | TokenEvent | FinishEvent]


@dataclass
class Job:
    """One request's sequences (its ``n`` choices), decoded in the same batch.

    Attributes:
        model: the model id.
        spec: the sampler spec.
        rows: the sequences.
        cancelled: set when the client leaves.
        finished: per row, whether its finish event went out.
        kv: the request's ``tokenwise.kv`` press or quantised cache (None: a plain cache).
            Such a job shares no batch, and its rows are decoded one at a time, as are
            those of a job whose spec has semantic control (:attr:`alone`).
    """

    model: str
    spec: SamplerSpec
    rows: list[Row]
    cancelled: threading.Event = field(default_factory=threading.Event)
    kv: Any = None

    @property
    def alone(self) -> bool:
        """Whether the job shares no batch and decodes its rows one at a time (a compressed
        cache, or semantic control)."""
        return self.kv is not None or self.spec.control is not None

    def __post_init__(self) -> None:
        self.finished = [False] * len(self.rows)
        for i, row in enumerate(self.rows):
            row.cancelled = self.cancelled.is_set
            row.sink = self._tracked(i, row.sink)

    def _tracked(self, i: int, sink: Callable[[Any], None]) -> Callable[[Any], None]:
        def tracked(event: Any) -> None:
            if isinstance(event, FinishEvent):
                self.finished[i] = True
            sink(event)
        return tracked

    def fail(self) -> None:
        """End every row still open with an "error" finish (its request gets a 500)."""
        for i, row in enumerate(self.rows):
            if not self.finished[i]:
                row.sink(FinishEvent("error", "", "", 0))


@dataclass
class _Call:
    fn: Callable[[], Any]
    future: asyncio.Future


@dataclass
class BatcherStats:
    """Counters since start (read them for monitoring and the load benchmark)."""

    requests: int = 0
    batches: int = 0
    rows: int = 0
    tokens: int = 0
    steps: int = 0
    cancelled: int = 0
    timed_out: int = 0
    skipped: int = 0
    largest_batch: int = 0
    failed_batches: int = 0
    failed_rows: int = 0
    calls: int = 0
    #: calls whose caller left while they waited (not run)
    calls_skipped: int = 0
    engine_busy_s: float = 0.0
    #: rows per batch -> batches of that size (the distribution /metrics reports)
    batch_sizes: dict[int, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, with the mean batch size."""
        out = dict(self.__dict__)
        out["batch_sizes"] = dict(self.batch_sizes)
        out["mean_batch_rows"] = self.rows / self.batches if self.batches else 0.0
        return out


class Batcher:
    """The embedded backend: queues jobs and calls, runs them on one worker thread.

    It serves ``echo`` (``serves_echo``): an echo request's choices each get a
    :class:`~tokenwise.serving.engine.PromptEvent` before their tokens.

    Args:
        models: model id -> loaded model (the batcher runs their forward passes).
        batching: group compatible jobs (False: one job per batch).
        window_s: how long an idle batcher waits for company.
        max_rows: most sequences per batch.
    """

    #: echo requests get their prompt (scored on request) as a PromptEvent
    serves_echo = True

    def __init__(self, models: dict[str, LanguageModel], *, batching: bool = True,
                 window_s: float = 0.005, max_rows: int = 64) -> None:
        self.models = models
        self.batching = batching
        self.window_s = window_s
        self.max_rows = max_rows
        self.stats = BatcherStats()
        self.names = {k: TokenBytes(lm.tokenizer) for k, lm in models.items()}
        self._queue: asyncio.Queue | None = None
        self._pending: collections.deque = collections.deque()
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenwise-engine")

    async def start(self) -> None:
        """Start the scheduling task on the running event loop."""
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop scheduling and let the worker thread finish its batch."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True, cancel_futures=True)

    def submit(self, job: Job) -> None:
        """Queue a job; its rows' sinks get the events (on the worker thread)."""
        assert self._queue is not None, "Batcher.start() was not awaited"
        self.stats.requests += 1
        self._queue.put_nowait(job)

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn()`` on the worker thread between batches and return its result."""
        assert self._queue is not None, "Batcher.start() was not awaited"
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Call(fn, future))
        return await future

    def check(self, req: ChatCompletionRequest | CompletionRequest) -> None:
        """Every request option is served by this backend: nothing to refuse."""

    def check_plan(self, plan: Plan) -> None:
        """The planner's context rule is this backend's own: nothing more to refuse."""

    def report(self) -> dict[str, Any]:
        """The counters for ``/tokenwise/stats``."""
        # work waiting: jobs and calls not yet taken, and jobs taken but kept for a later batch
        waiting = (self._queue.qsize() if self._queue is not None else 0) + len(self._pending)
        return {"engine": "tokenwise", "batching": self.batching, "queue_depth": waiting,
                **self.stats.as_dict()}

    async def events(self, plan: Plan, deadline: float) -> AsyncIterator[Event]:
        """Every choice's token events and one finish event each, in the order they happen.

        Closing the iterator early (the client left, the request timed out) cancels the
        request's rows: they are skipped if their batch has not begun, else stopped at the
        next decode step.

        Args:
            plan: the planned request.
            deadline: ``time.monotonic()`` after which its rows are stopped.
        """
        if plan.ead is not None:
            async for item in self._ead_events(plan):
                yield item
            return
        inbox = _Inbox(asyncio.get_running_loop(), wake_on_tokens=plan.stream)
        rows = [Row(prompt=plan.prompts[c // plan.n], max_tokens=plan.max_tokens,
                    prompt_tokens=plan.prompt_tokens[c // plan.n], stops=plan.stops,
                    seed=plan.seeds[c], top_logprobs=plan.top_logprobs, deadline=deadline,
                    echo=plan.echo, score_prompt=plan.echo and plan.logprobs,
                    constraint=plan.constraint, sink=lambda ev, c=c: inbox.put((c, ev)))
                for c in range(plan.choices)]
        job = Job(plan.model, plan.spec, rows, kv=plan.kv)
        self.submit(job)
        open_choices = plan.choices
        try:
            while open_choices:
                c, event = await inbox.queue.get()
                open_choices -= isinstance(event, FinishEvent)
                yield c, event
        finally:
            job.cancelled.set()  # no-op once every row has finished

    async def _ead_events(self, plan: Plan) -> AsyncIterator[Event]:
        assert plan.large is not None and plan.ead is not None
        # this backend's own models (the plan's are codecs): EAD runs both forward passes
        small, large = self.models[plan.model], self.models[plan.ead.large]
        decoded = []
        for c in range(plan.choices):
            prompt, seed = plan.prompts[c // plan.n], plan.seeds[c]
            decoded.append(await self.call(
                lambda p=prompt, s=seed: run_ead(small, large, p, plan.spec, plan.ead,
                                                 plan.max_tokens, plan.stops, s,
                                                 plan.top_logprobs, plan.kv)))
        infos = [info for _, info in decoded]
        per_choice = ("large_share", "switches", "flops", "forward_passes")
        # set before the events go out: the reader stops at the last finish event
        plan.info["ead"] = {**{k: v for k, v in infos[0].items() if k not in per_choice},
                            "choices": [{k: i[k] for k in per_choice} for i in infos]}
        for c, (events, _) in enumerate(decoded):
            for event in events:
                yield c, event

    async def uncertainty(self, plan: Plan) -> dict[str, Any]:
        """The request's ``tokenwise.uncertainty`` score (its samples decoded on the worker
        thread)."""
        assert plan.uncertainty is not None
        options, prompt, lm = plan.uncertainty, plan.prompts[0], self.models[plan.model]
        return await self.call(
            lambda: score_uncertainty(options, lm, prompt, plan.max_tokens, plan.stops,
                                      seed=plan.seeds[0]))

    def _fits(self, lm: LanguageModel, rows: list[Row]) -> bool:
        longest = max(r.prompt_tokens for r in rows)
        # an echo-only row (max_tokens=0) needs its prompt to fit, as a one-token row does
        return longest + max(max(r.max_tokens for r in rows), 1) - 1 <= lm.context_length

    def _take_batch(self, first: Job) -> list[Job]:
        jobs, rows = [first], list(first.rows)
        if not self.batching or first.alone:  # a compressed cache or control: alone
            return jobs
        lm = self.models[first.model]
        for other in list(self._pending):
            if not isinstance(other, Job) or other.model != first.model \
                    or other.spec != first.spec or other.alone:
                continue
            if len(rows) + len(other.rows) > self.max_rows \
                    or not self._fits(lm, rows + other.rows):
                continue
            jobs.append(other)
            rows += other.rows
        for other in jobs[1:]:  # taken only once chosen: a failure above loses no job
            self._pending.remove(other)
        return jobs

    def _decode(self, jobs: list[Job]) -> BatchStats:
        first = jobs[0]
        lm, names = self.models[first.model], self.names[first.model]
        rows = [r for j in jobs for r in j.rows]
        if first.alone:  # one job; each row keeps its own compressed cache / rollouts
            done = BatchStats(rows=len(rows))
            for row in rows:
                if row.cancelled():  # its client left while an earlier choice decoded
                    row.sink(FinishEvent("cancelled", "", "", 0))
                    done.cancelled += 1
                    continue
                done.absorb(self._decode_alone(lm, first.spec, row, names, first.kv))
            return done
        if len(rows) == 1:
            return self._decode_alone(lm, first.spec, rows[0], names)
        guards = [_Guard(r) for r in rows]
        try:
            return run_batch(lm, first.spec, [g.batch_row() for g in guards], names)
        except Exception:
            log.exception("a batch of %d row(s) from %d request(s) failed; decoding its open "
                          "rows one by one", len(rows), len(jobs))
        self.stats.failed_batches += 1
        # counted as one batch of all its rows (it ran), plus each row's own run below
        done = BatchStats(rows=len(rows), tokens=sum(len(g.delivered) for g in guards))
        for g in guards:
            if g.finished:
                continue
            alone = self._decode_alone(lm, first.spec, g.replay_row(), names)
            done.absorb(alone, tokens=max(alone.tokens - len(g.delivered), 0))
        return done

    def _decode_alone(self, lm: LanguageModel, spec: SamplerSpec, row: Row,
                      names: TokenBytes, kv: Any = None) -> BatchStats:
        """One row in a batch of its own (with ``kv``: its compressed cache); its failure is
        its own (an "error" finish)."""
        try:
            if kv is None:  # the plain call (tests stand in for run_batch with it)
                return run_batch(lm, spec, [row], names)
            return run_batch(lm, spec, [row], names, kv=kv)
        except Exception:
            log.exception("a request's row failed when decoded alone")
            self.stats.failed_rows += 1
            return BatchStats(rows=1)

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._pending.append(await self._queue.get())
                if self.batching and self.window_s > 0:
                    await asyncio.sleep(self.window_s)
            while not self._queue.empty():
                self._pending.append(self._queue.get_nowait())
            item = self._pending.popleft()
            if isinstance(item, _Call):
                await self._run_call(loop, item)
                continue
            jobs = [item]
            try:
                jobs = [j for j in self._take_batch(item) if not self._skip_if_gone(j)]
                if jobs:
                    await self._run_batch(loop, jobs)
            except Exception:  # the worker keeps serving; only these jobs fail
                log.exception("scheduling or running a batch of %d request(s) failed; "
                              "ending their open rows with an error", len(jobs))
                self.stats.failed_batches += 1
                for job in jobs:
                    job.fail()

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, jobs: list[Job]) -> None:
        start = time.perf_counter()
        try:
            done = await loop.run_in_executor(self._executor, self._decode, jobs)
        finally:
            self.stats.engine_busy_s += time.perf_counter() - start
        self.stats.batches += 1
        self.stats.batch_sizes[done.rows] = self.stats.batch_sizes.get(done.rows, 0) + 1
        self.stats.rows += done.rows
        self.stats.tokens += done.tokens
        self.stats.steps += done.steps
        self.stats.cancelled += done.cancelled
        self.stats.timed_out += done.timed_out
        self.stats.largest_batch = max(self.stats.largest_batch, done.rows)

    def _skip_if_gone(self, job: Job) -> bool:
        if not job.cancelled.is_set():
            return False
        self.stats.skipped += 1
        for row in job.rows:
            row.sink(FinishEvent("cancelled", "", "", 0))
        return True

    async def _run_call(self, loop: asyncio.AbstractEventLoop, call: _Call) -> None:
        if call.future.cancelled():  # its caller left (client gone, deadline): nobody waits
            self.stats.calls_skipped += 1
            return
        self.stats.calls += 1
        start = time.perf_counter()
        try:
            result = await loop.run_in_executor(self._executor, call.fn)
        except Exception as exc:
            if not call.future.done():
                call.future.set_exception(exc)
        else:
            if not call.future.done():
                call.future.set_result(result)
        finally:
            self.stats.engine_busy_s += time.perf_counter() - start


class _Guard:
    """A row in a shared batch whose events pass through, except the "error" finish the
    batch runner sends when the batch fails: the row stays open and is decoded again alone.

    The rerun repeats the row's tokens (its seed gives the same tokens alone or in any
    batch); the ones already delivered are checked and skipped, so the client sees each
    token once, and an echo row's prompt event, if it went out, is not sent again. A rerun
    that strays from them ends the row with an error.
    """

    def __init__(self, row: Row) -> None:
        self.row = row
        self.delivered: list[int] = []
        self.prompt_sent = False
        self.finished = False

    def batch_row(self) -> Row:
        """The row to put in the shared batch."""
        return dataclasses.replace(self.row, sink=self._sink)

    def _sink(self, event: PromptEvent | TokenEvent | FinishEvent) -> None:
        if isinstance(event, FinishEvent):
            if event.reason == "error":
                return  # the batch failed: the row is decoded again alone
            self.finished = True
        elif isinstance(event, PromptEvent):
            self.prompt_sent = True
        else:
            self.delivered.append(event.token.id)
        self.row.sink(event)

    def replay_row(self) -> Row:
        """The row to decode alone after the batch failed."""
        seen = 0
        strayed = False

        def sink(event: PromptEvent | TokenEvent | FinishEvent) -> None:
            nonlocal seen, strayed
            if isinstance(event, PromptEvent):
                if not self.prompt_sent:  # the batch failed before its prompt went out
                    self.row.sink(event)
                return
            if isinstance(event, TokenEvent):
                if strayed:
                    return
                if seen < len(self.delivered):
                    strayed = event.token.id != self.delivered[seen]
                    seen += 1
                    return
            elif strayed or seen < len(self.delivered):
                log.error("a row decoded again alone did not repeat the %d token(s) it had "
                          "delivered; ending it with an error", len(self.delivered))
                event = FinishEvent("error", "", event.text, event.completion_tokens)
            self.row.sink(event)

        cancelled = self.row.cancelled
        return dataclasses.replace(self.row, sink=sink,
                                   cancelled=lambda: strayed or cancelled())


class _Inbox:
    """Events from the worker thread to the event loop, in order.

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
        """Called on the worker thread."""
        with self._lock:
            self._held.append(item)
            if not self.wake_on_tokens and not isinstance(item[1], FinishEvent):
                return
        self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            held, self._held = self._held, []
        for item in held:
            self.queue.put_nowait(item)
