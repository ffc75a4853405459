"""`Admission`: which completion requests the server takes, and the drain on shutdown.

The server holds at most ``max_queue`` completion requests at once, waiting for the engine
or generating. One more is refused at once with 429 and a ``Retry-After`` header, instead of
waiting without end behind work the server cannot finish in time for it. ``Retry-After`` is
the sooner of two figures, rounded up to whole seconds (at least 1): the time the server
needs to finish what it holds at its recent pace (requests finished per second over the
last minute), and the time until the earliest deadline of a request it holds (by then at
least one place is free for sure).

A drain (``SIGTERM``, see :mod:`tokenwise.serving.server`) refuses new completion requests
with 503 and waits for the held ones, up to a grace period; those still running then are
cut: each ends at once with a 503 (a final error event when streamed), and its rows are
freed at the engine's next step.

Example:
    >>> adm = Admission(max_queue=1)
    >>> slot = adm.admit(timeout_s=120)
    >>> try:
    ...     adm.admit(timeout_s=120)
    ... except RefusedError as exc:
    ...     print(exc.status, exc.headers["Retry-After"] != "")
    429 True
    >>> adm.release(slot)
    >>> adm.report()["requests_held"]
    0
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any

from tokenwise.serving.errors import APIError

#: seconds of finished requests that the pace is measured over.
PACE_WINDOW_S = 60.0
#: most finish times kept for the pace.
PACE_SAMPLES = 256
#: seconds a cut request gets to end before the drain gives up on it (uvicorn's own
#: graceful-shutdown timeout then cancels it).
CUT_WAIT_S = 2.0


class RefusedError(APIError):
    """An :class:`APIError` with response headers (``Retry-After``, ``Connection``).

    Args:
        status: the HTTP status.
        message: what went wrong and what to do.
        code: a short machine-readable code.
        headers: the response headers to send with it.
    """

    def __init__(self, status: int, message: str, *, code: str,
                 headers: dict[str, str]) -> None:
        super().__init__(status, message, code=code)
        self.headers = headers


def draining_error() -> RefusedError:
    """The 503 a new completion request gets while the server drains.

    There is no ``Retry-After``: the server is going away and cannot know when it (or a
    replacement) will be back; clients retry with their own backoff, and a load balancer
    sends the retry to another server. ``Connection: close`` keeps a client from sending
    its next request down this connection.

    Example:
        >>> draining_error().body()["error"]["code"]
        'server_shutting_down'
    """
    return RefusedError(503, "the server is shutting down and takes no new requests; send "
                             "the request to another server, or retry once it has restarted",
                        code="server_shutting_down", headers={"Connection": "close"})


def cut_error() -> APIError:
    """The 503 of a request still running when the drain's grace period ended."""
    return APIError(503, "the server shut down before the request finished (its shutdown "
                         "grace period ended); retry on another server or once it has "
                         "restarted", code="server_shutting_down")


@dataclass(eq=False)
class Slot:
    """One admitted request's place.

    Attributes:
        arrived: ``time.monotonic()`` at admission.
        deadline: ``time.monotonic()`` by which the request ends (504 past it).
        own_timeout: the deadline is the request's own ``timeout`` (sooner than the
            server's).
        timeout: the ``asyncio.Timeout`` of the wait for its next event, while it waits
            (the drain reschedules it to end the wait at once).
        planned: set once the request is planned (only those count towards the pace: a
            request refused with a 400 frees its place at once and says nothing of it).
        cut: set when the drain ends the request.
        released: set once its place is given back.
    """

    arrived: float = field(default_factory=time.monotonic)
    deadline: float = float("inf")
    own_timeout: bool = False
    timeout: Any = None
    planned: bool = False
    cut: bool = False
    released: bool = False


class Admission:
    """The completion requests held, the refusals, and the drain.

    Args:
        max_queue: most completion requests held at once (waiting or generating).

    Raises:
        ValueError: ``max_queue`` is not an integer >= 1.
    """

    def __init__(self, max_queue: int) -> None:
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 1:
            raise ValueError(f"max_queue={max_queue!r}: allowed an integer >= 1")
        self.max_queue = max_queue
        self.held: set[Slot] = set()
        self.rejected_queue_full = 0
        self.rejected_draining = 0
        self.cut = 0
        self.draining = False
        self._finished: collections.deque[float] = collections.deque(maxlen=PACE_SAMPLES)
        self._empty: asyncio.Event | None = None

    def admit(self, timeout_s: float) -> Slot:
        """A place for a new request, or a refusal.

        Args:
            timeout_s: seconds from now by which the request will have ended (the server's
                timeout; :attr:`Slot.deadline` may be lowered once the request's own
                ``timeout`` is read).

        Raises:
            RefusedError: 503 while draining; 429 with ``Retry-After`` when ``max_queue``
                requests are held.
        """
        if self.draining:
            self.rejected_draining += 1
            raise draining_error()
        if len(self.held) >= self.max_queue:
            self.rejected_queue_full += 1
            wait = self.retry_after()
            raise RefusedError(
                429, f"the server is at capacity: {len(self.held)} requests are waiting or "
                     f"generating (max_queue={self.max_queue}); retry in {wait} s",
                code="queue_full", headers={"Retry-After": str(wait)})
        now = time.monotonic()
        slot = Slot(arrived=now, deadline=now + timeout_s)
        self.held.add(slot)
        return slot

    def release(self, slot: Slot) -> None:
        """Give ``slot``'s place back (once; later calls do nothing)."""
        if slot.released:
            return
        slot.released = True
        self.held.discard(slot)
        if slot.planned:
            self._finished.append(time.monotonic())
        if not self.held and self._empty is not None:
            self._empty.set()

    def retry_after(self) -> int:
        """Whole seconds (>= 1) until a refused request is likely to find a place: the
        sooner of the time to finish the held requests at the recent pace and the time to
        the earliest deadline among them.

        Example:
            >>> Admission(4).retry_after()
            1
        """
        now = time.monotonic()
        estimates = [min(s.deadline for s in self.held) - now] if self.held else [0.0]
        recent = [t for t in self._finished if t >= now - PACE_WINDOW_S]
        if len(recent) >= 2 and recent[-1] > recent[0]:
            pace = (len(recent) - 1) / (recent[-1] - recent[0])  # requests per second
            estimates.append(len(self.held) / pace)
        seconds = min(estimates)
        return max(1, math.ceil(seconds)) if math.isfinite(seconds) else 1

    def report(self) -> dict[str, Any]:
        """The counters for ``/tokenwise/stats`` and ``/metrics``.

        Example:
            >>> sorted(Admission(8).report())  # doctest: +NORMALIZE_WHITESPACE
            ['cut_at_shutdown', 'draining', 'max_queue', 'rejected_draining',
             'rejected_queue_full', 'requests_held']
        """
        return {"requests_held": len(self.held), "max_queue": self.max_queue,
                "rejected_queue_full": self.rejected_queue_full,
                "rejected_draining": self.rejected_draining, "cut_at_shutdown": self.cut,
                "draining": self.draining}

    async def drain(self, grace_s: float) -> int:
        """Refuse new requests (503) and wait up to ``grace_s`` seconds for the held ones to
        end; cut those still held then (each ends with a 503).

        Args:
            grace_s: seconds the held requests get to finish.

        Returns:
            How many requests were cut.
        """
        self.draining = True
        self._empty = asyncio.Event()
        if not self.held:
            return 0
        try:
            await asyncio.wait_for(self._empty.wait(), grace_s)
            return 0
        except asyncio.TimeoutError:
            pass
        late = list(self.held)
        loop = asyncio.get_running_loop()
        for slot in late:
            slot.cut = True
            if slot.timeout is not None:  # waiting for its next event: end the wait now
                slot.timeout.reschedule(loop.time())
        self.cut += len(late)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._empty.wait(), CUT_WAIT_S)
        return len(late)
