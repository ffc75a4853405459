"""`ServingMetrics`: the server's Prometheus metrics (``GET /metrics``), with ``prometheus-client``.

Three sources, one registry per app (never the process-wide default registry, so that two
apps in one process, as in the tests, count apart):

* :class:`MetricsMiddleware`, outermost, counts every HTTP request by endpoint (the route's
  path template, ``other`` for paths the app does not serve), model and status, refusals
  of the guards included. ``model`` is the served model a completion request was planned
  for, empty for other endpoints and for requests refused before planning.
* :class:`MeasuredBackend` wraps the backend that generates (any
  :class:`~tokenwise.serving.routes.ServingBackend`) and reads each request's events as they
  pass: prompt tokens (from the plan), completion tokens and finish reasons (from the finish
  events, the numbers ``usage`` reports), the request latency (arrival to last finish
  event), the time to first token of streamed requests, and the requests generating now.
  The embedded engine hands an unstreamed request's tokens over with its finish events
  (one wake-up per sequence), so only streamed requests have a first-token time worth the
  name. A routed request (``tokenwise.route``) is answered whole on the backend's ``call``,
  not through ``events``: :meth:`MeasuredBackend.measure_answer` counts its body the same
  way (its usage's prompt and completion tokens, its finish reason, its latency, generating
  while the router answers) and labels it with the request's model, so each request is
  counted once, by one of the two.
* :class:`AdmissionCollector` reads the server's admission at each scrape: the completion
  requests held (``tokenwise_requests_held``) against ``max_queue``, the refusals by
  reason (``tokenwise_requests_rejected_total``: ``queue_full`` 429s, ``draining`` 503s),
  the requests cut at the end of a shutdown's grace period, and whether it drains.
* :class:`EngineCollector` turns the backend's :meth:`report` (``/tokenwise/stats``) into
  metrics when scraped: batches, rows and their largest, decode steps, busy time, and,
  where the backend reports them, the queue depth (``queue_depth``), the batch sizes
  (``batch_sizes``: rows -> batches of that many rows) and vLLM's unfinished requests.

Names start with ``tokenwise_``; counters end in ``_total`` on the wire.

Example:
    >>> metrics = ServingMetrics(["tw-small"])
    >>> b"tokenwise_http_requests_total" in metrics.render()[0]
    True
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tokenwise.errors import TokenwiseError
from tokenwise.serving.batcher import Event
from tokenwise.serving.engine import FinishEvent
from tokenwise.serving.planning import Plan

log = logging.getLogger("tokenwise.serving")

#: seconds; a request's whole life, up to the default request timeout and past it.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
                   300.0)
#: seconds from a request's arrival to its first generated token.
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: rows per batch (fixed, so that the buckets do not change between scrapes).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

#: report key -> (counter name, help): counters of the backends' ``report()``.
ENGINE_COUNTERS = {
    "requests": ("tokenwise_engine_requests", "Requests the engine was given."),
    "vllm_requests": ("tokenwise_engine_vllm_requests", "Requests sent to vLLM (one per "
                      "choice, plus uncertainty samples)."),
    "batches": ("tokenwise_engine_batches", "Batches decoded."),
    "rows": ("tokenwise_engine_batch_rows", "Sequences decoded, summed over batches (divide "
             "by tokenwise_engine_batches_total for the mean batch size)."),
    "tokens": ("tokenwise_engine_tokens", "Tokens the engine generated."),
    "steps": ("tokenwise_engine_decode_steps", "Decode steps (one forward pass of a batch)."),
    "cancelled": ("tokenwise_engine_cancelled_rows", "Sequences stopped because the client "
                  "left."),
    "timed_out": ("tokenwise_engine_timed_out_rows", "Sequences stopped at the request "
                  "timeout."),
    "skipped": ("tokenwise_engine_skipped_requests", "Requests dropped before their batch "
                "began (the client left)."),
    "aborted": ("tokenwise_engine_aborted_requests", "vLLM requests aborted (stop string, "
                "client left, timeout)."),
    "failed_batches": ("tokenwise_engine_failed_batches", "Batches that raised (their rows "
                       "were decoded again one by one)."),
    "failed_rows": ("tokenwise_engine_failed_rows", "Sequences that failed decoded alone."),
    "calls": ("tokenwise_engine_calls", "Other model work run by the engine (compression, "
              "uncertainty, entropy-adaptive decoding)."),
    "calls_skipped": ("tokenwise_engine_skipped_calls", "Other model work dropped before it "
                      "began (the client left or its deadline passed)."),
    "engine_busy_s": ("tokenwise_engine_busy_seconds", "Seconds the engine's worker spent "
                      "on batches and calls."),
}
#: report key -> (gauge name, help).
ENGINE_GAUGES = {
    "largest_batch": ("tokenwise_engine_largest_batch_rows", "Rows of the largest batch so "
                      "far."),
    "queue_depth": ("tokenwise_engine_queue_depth", "Requests and calls waiting for the "
                    "engine (not decoding yet)."),
    "unfinished": ("tokenwise_engine_unfinished_requests", "Requests inside vLLM now "
                   "(running or waiting)."),
}


def prometheus_available() -> bool:
    """Whether ``prometheus_client`` can be imported (``GET /metrics`` needs it).

    Example:
        >>> isinstance(prometheus_available(), bool)
        True
    """
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


def _number(value: Any) -> float | None:
    """``value`` as a float when it is a real number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


@dataclass
class RequestInfo:
    """What the middleware and the backend wrapper share about one HTTP request.

    Attributes:
        start: ``time.perf_counter()`` at its arrival.
        model: the served model it was planned for (empty until planned).
        status: the HTTP status answered (500 until a response starts).
    """

    start: float = field(default_factory=time.perf_counter)
    model: str = ""
    status: int = 500


#: the HTTP request being served, in its task and the tasks it starts (one shared object).
_REQUEST: contextvars.ContextVar[RequestInfo | None] = contextvars.ContextVar(
    "tokenwise_request", default=None)


class EngineCollector:
    """A collector that reads the backend's ``report()`` at each scrape.

    Keys the backend does not report, or reports as something other than a number, are
    left out.

    Args:
        report: returns the backend's counters (``ServingBackend.report``).

    Example:
        >>> collector = EngineCollector(lambda: {"engine": "x", "batches": 3, "rows": 7})
        >>> sorted(m.name for m in collector.collect())
        ['tokenwise_engine', 'tokenwise_engine_batch_rows', 'tokenwise_engine_batches']
    """

    def __init__(self, report: Callable[[], dict[str, Any]]) -> None:
        self.report = report

    def describe(self) -> list[Any]:
        """Nothing up front: the metrics depend on what the backend reports."""
        return []

    def collect(self) -> Iterator[Any]:
        """The metrics of one scrape."""
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
            InfoMetricFamily,
        )

        stats = self.report()
        yield InfoMetricFamily("tokenwise_engine", "The backend that generates.",
                               value={"engine": str(stats.get("engine", "")),
                                      "batching": str(stats.get("batching", "")).lower()})
        for key, (name, doc) in ENGINE_COUNTERS.items():
            value = _number(stats.get(key))
            if value is not None:
                yield CounterMetricFamily(name, doc, value=value)
        for key, (name, doc) in ENGINE_GAUGES.items():
            value = _number(stats.get(key))
            if value is not None:
                yield GaugeMetricFamily(name, doc, value=value)
        sizes = stats.get("batch_sizes")
        if isinstance(sizes, dict):
            yield batch_histogram(sizes, HistogramMetricFamily)


class AdmissionCollector:
    """A collector of the server's admission (:mod:`tokenwise.serving.admission`) at each
    scrape: the completion requests held, the limit, the refusals by reason and whether
    the server drains.

    Args:
        report: returns the admission's counters (``Admission.report``).

    Example:
        >>> from tokenwise.serving.admission import Admission
        >>> names = sorted(m.name for m in AdmissionCollector(Admission(4).report).collect())
        >>> names  # doctest: +NORMALIZE_WHITESPACE
        ['tokenwise_draining', 'tokenwise_requests_cut_at_shutdown', 'tokenwise_requests_held',
         'tokenwise_requests_max_queue', 'tokenwise_requests_rejected']
    """

    def __init__(self, report: Callable[[], dict[str, Any]]) -> None:
        self.report = report

    def describe(self) -> list[Any]:
        """Nothing up front (as :class:`EngineCollector`)."""
        return []

    def collect(self) -> Iterator[Any]:
        """The metrics of one scrape."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stats = self.report()
        yield GaugeMetricFamily("tokenwise_requests_held", "Completion requests the server "
                                "holds (waiting for the engine or generating).",
                                value=stats["requests_held"])
        yield GaugeMetricFamily("tokenwise_requests_max_queue", "Most completion requests "
                                "held at once (max_queue); one more is refused with 429.",
                                value=stats["max_queue"])
        rejected = CounterMetricFamily("tokenwise_requests_rejected", "Completion requests "
                                       "refused before any work: queue_full (429, the "
                                       "server held max_queue requests) or draining (503, "
                                       "shutting down).", labels=["reason"])
        rejected.add_metric(["queue_full"], stats["rejected_queue_full"])
        rejected.add_metric(["draining"], stats["rejected_draining"])
        yield rejected
        yield CounterMetricFamily("tokenwise_requests_cut_at_shutdown", "Completion requests "
                                  "still running when the shutdown grace period ended (503).",
                                  value=stats["cut_at_shutdown"])
        yield GaugeMetricFamily("tokenwise_draining", "1 while the server drains for "
                                "shutdown (new completion requests get 503), else 0.",
                                value=float(stats["draining"]))


def batch_histogram(sizes: dict[Any, Any], family: Any) -> Any:
    """The ``tokenwise_engine_batch_size_rows`` histogram from exact counts.

    Args:
        sizes: rows -> batches of that many rows (keys may be strings, as in JSON).
        family: ``prometheus_client.core.HistogramMetricFamily``.

    Example:
        >>> from prometheus_client.core import HistogramMetricFamily
        >>> h = batch_histogram({"1": 2, "3": 1}, HistogramMetricFamily)
        >>> [(s.labels["le"], s.value) for s in h.samples if "le" in s.labels][:3]
        [('1.0', 2.0), ('2.0', 2.0), ('4.0', 3.0)]
    """
    counts = {int(rows): int(n) for rows, n in sizes.items()}
    buckets = [(str(float(le)), float(sum(n for rows, n in counts.items() if rows <= le)))
               for le in BATCH_BUCKETS]
    buckets.append(("+Inf", float(sum(counts.values()))))
    return family("tokenwise_engine_batch_size_rows", "Rows per batch.", buckets=buckets,
                  sum_value=float(sum(rows * n for rows, n in counts.items())))


class ServingMetrics:
    """The server's metrics, in a registry of their own.

    Args:
        models: the served model ids (their label values are made up front, so that each
            appears at zero before its first request).

    Raises:
        TokenwiseError: ``prometheus_client`` is not installed.

    Example:
        >>> metrics = ServingMetrics(["tw-small"])
        >>> metrics.requests.labels("/health", "", "200").inc()
        >>> b'status="200"' in metrics.render()[0]
        True
    """

    def __init__(self, models: Iterable[str]) -> None:
        try:
            from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        except ImportError:
            raise TokenwiseError("GET /metrics needs the prometheus-client package: pip "
                                 "install 'tokenwise[serve]' (or start the server with "
                                 "metrics off: --no-metrics)") from None
        self.registry = CollectorRegistry(auto_describe=True)
        self.known_paths: frozenset[str] = frozenset()
        registry = self.registry
        self.requests = Counter("tokenwise_http_requests", "HTTP requests answered, by "
                                "endpoint, served model and status.",
                                ["endpoint", "model", "status"], registry=registry)
        self.prompt_tokens = Counter("tokenwise_prompt_tokens", "Prompt tokens of the "
                                     "requests generated for (usage.prompt_tokens).",
                                     ["model"], registry=registry)
        self.completion_tokens = Counter("tokenwise_completion_tokens", "Tokens generated "
                                         "(usage.completion_tokens).", ["model"],
                                         registry=registry)
        self.finished = Counter("tokenwise_finished_sequences", "Choices finished, by "
                                "finish reason.", ["model", "reason"], registry=registry)
        self.latency = Histogram("tokenwise_request_latency_seconds", "Seconds from a "
                                 "completion request's arrival to its last finish event.",
                                 ["model", "kind"], buckets=LATENCY_BUCKETS,
                                 registry=registry)
        self.ttft = Histogram("tokenwise_time_to_first_token_seconds", "Seconds from a "
                              "streamed completion request's arrival to its first token.",
                              ["model"], buckets=TTFT_BUCKETS, registry=registry)
        self.generating = Gauge("tokenwise_requests_generating", "Completion requests "
                                "between the backend's first event and their last.",
                                registry=registry)
        self._per_model: dict[str, tuple[Any, Any, Any, Any, Any]] = {}
        self._finished: dict[tuple[str, str], Any] = {}
        for model in models:
            self._children(model)

    def _children(self, model: str) -> tuple[Any, Any, Any, Any, Any]:
        """``model``'s label children (looked up once, not per event)."""
        children = self._per_model.get(model)
        if children is None:
            children = (self.prompt_tokens.labels(model), self.completion_tokens.labels(model),
                        self.latency.labels(model, "chat"),
                        self.latency.labels(model, "completion"), self.ttft.labels(model))
            self._per_model[model] = children
        return children

    def _finished_child(self, model: str, reason: str) -> Any:
        child = self._finished.get((model, reason))
        if child is None:
            child = self._finished[model, reason] = self.finished.labels(model, reason)
        return child

    def watch_engine(self, backend: Any) -> None:
        """Export ``backend.report()`` at each scrape (:class:`EngineCollector`)."""
        self.registry.register(EngineCollector(backend.report))

    def watch_admission(self, report: Callable[[], dict[str, Any]]) -> None:
        """Export the admission's counters at each scrape (:class:`AdmissionCollector`).

        Args:
            report: :meth:`tokenwise.serving.admission.Admission.report`.
        """
        self.registry.register(AdmissionCollector(report))

    def render(self) -> tuple[bytes, str]:
        """``(body, content type)`` of a scrape in Prometheus' text format."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def endpoint(self, scope: dict[str, Any]) -> str:
        """The endpoint label of a request: its route's path template, else its path when
        the app serves it (a guard refused it before routing), else ``other`` (so that
        probes of random paths add no series)."""
        route = scope.get("route")
        path = getattr(route, "path", None)
        if isinstance(path, str) and path:
            return path
        path = scope.get("path", "")
        return path if path in self.known_paths else "other"

    async def measure(self, plan: Plan, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
        """Pass ``events`` (one request's) through, counting as they go.

        Args:
            plan: the planned request.
            events: the backend's events for it.
        """
        info = _REQUEST.get()
        start = info.start if info is not None else time.perf_counter()
        prompt, completion, chat, text, ttft = self._children(plan.model)
        latency = chat if plan.kind == "chat" else text
        prompt.inc(sum(plan.prompt_tokens))
        waiting_first = plan.stream
        open_choices = plan.choices
        self.generating.inc()
        try:
            async for item in events:
                event = item[1]
                if isinstance(event, FinishEvent):
                    completion.inc(event.completion_tokens)
                    self._finished_child(plan.model, event.reason).inc()
                    open_choices -= 1
                    if not open_choices:
                        latency.observe(time.perf_counter() - start)
                elif waiting_first:
                    waiting_first = False
                    ttft.observe(time.perf_counter() - start)
                yield item
        finally:
            self.generating.dec()
            await events.aclose()  # the backend stops the request's work when closed early

    async def measure_answer(self, model: str, kind: str,
                             answer: Awaitable[dict[str, Any]]) -> dict[str, Any]:
        """Await a response body made whole outside the backend's events (a routed
        request's), counting it as :meth:`measure` counts events: the prompt and completion
        tokens its ``usage`` reports, each choice's finish reason and the latency once it is
        made; the request is generating while it is awaited. Nothing is counted but the
        gauge when ``answer`` raises (a refusal, a timeout).

        Args:
            model: the request's model (the one the response names).
            kind: ``"chat"`` or ``"completion"``.
            answer: makes the body (an OpenAI completion object with ``usage``).

        Example:
            >>> import asyncio
            >>> metrics = ServingMetrics(["tw-small"])
            >>> async def body():
            ...     return {"choices": [{"finish_reason": "stop"}],
            ...             "usage": {"prompt_tokens": 5, "completion_tokens": 2}}
            >>> _ = asyncio.run(metrics.measure_answer("tw-small", "chat", body()))
            >>> b'tokenwise_completion_tokens_total{model="tw-small"} 2.0' in metrics.render()[0]
            True
        """
        info = _REQUEST.get()
        start = info.start if info is not None else time.perf_counter()
        prompt, completion, chat, text, _ = self._children(model)
        self.generating.inc()
        try:
            body = await answer
        finally:
            self.generating.dec()
        use = body["usage"]
        prompt.inc(use["prompt_tokens"])
        completion.inc(use["completion_tokens"])
        for choice in body["choices"]:
            self._finished_child(model, choice["finish_reason"]).inc()
        (chat if kind == "chat" else text).observe(time.perf_counter() - start)
        return body


class MeasuredBackend:
    """A :class:`~tokenwise.serving.routes.ServingBackend` that counts what passes through
    ``backend`` into ``metrics``; everything else is ``backend``'s own.

    Args:
        backend: the backend that generates.
        metrics: where to count.

    Example:
        >>> class Engine:
        ...     def report(self):
        ...         return {"engine": "x"}
        >>> MeasuredBackend(Engine(), ServingMetrics([])).report()
        {'engine': 'x'}
    """

    def __init__(self, backend: Any, metrics: ServingMetrics) -> None:
        self.backend = backend
        self.metrics = metrics

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)

    def check_plan(self, plan: Plan) -> None:
        """The backend's check; the request is counted under the planned model from here
        on (the model is one the server serves, so the label's values stay few)."""
        info = _REQUEST.get()
        if info is not None:
            info.model = plan.model
        self.backend.check_plan(plan)

    def events(self, plan: Plan, deadline: float) -> AsyncIterator[Event]:
        """The backend's events for ``plan``, counted."""
        return self.metrics.measure(plan, self.backend.events(plan, deadline))

    def measure_answer(self, model: str, kind: str,
                       answer: Awaitable[dict[str, Any]]) -> Awaitable[dict[str, Any]]:
        """``answer`` (a body made on the backend's ``call``, not through :meth:`events`: a
        routed request's), counted (:meth:`ServingMetrics.measure_answer`); the request is
        counted under ``model`` from here on, as :meth:`check_plan` does for a planned one.

        Args:
            model: the request's model, one the server serves.
            kind: ``"chat"`` or ``"completion"``.
            answer: makes the body.
        """
        info = _REQUEST.get()
        if info is not None:
            info.model = model
        return self.metrics.measure_answer(model, kind, answer)


class MetricsMiddleware:
    """Counts every HTTP request (``tokenwise_http_requests_total``); put it outermost, so
    that the guards' refusals are counted too.

    Args:
        app: the ASGI app.
        metrics: where to count.
    """

    def __init__(self, app: Any, metrics: ServingMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        info = RequestInfo()
        token = _REQUEST.set(info)

        async def status_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                info.status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, status_send)
        finally:
            _REQUEST.reset(token)
            self.metrics.requests.labels(self.metrics.endpoint(scope), info.model,
                                         str(info.status)).inc()
