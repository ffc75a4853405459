"""Run the app with uvicorn: in the foreground (``tokenwise serve``) or in a background
thread of the current process (tests, benchmarks, notebooks).

Connections are read with :class:`TimedH11Protocol`, uvicorn's h11 protocol with read
deadlines: uvicorn's own ``timeout_keep_alive`` only covers the quiet time between
requests, so a client sending its headers or its body one byte at a time would otherwise
hold a connection for as long as it likes.

``SIGTERM`` drains the server (:class:`DrainingServer`): the completion requests in
flight finish, up to ``drain_timeout_s``, while the server keeps listening and answers new
completion requests and ``/health`` with 503 (a load balancer sees it leave, a client gets
an answer it can act on, not a refused connection); then those still running end with a
503, and the process exits with status 0. uvicorn's own handling of the signal would stop
listening at once (new connections refused), cut responses still open after its 5-second
graceful-shutdown timeout, and end the process by raising the signal again (status 143 in a
shell). A second ``SIGTERM``, or ``SIGINT`` (Ctrl+C), is
uvicorn's own: stop now.

Example:
    >>> from tokenwise.serving.config import ServerConfig
    >>> with serve_in_thread(ServerConfig(models=("tw-small",), port=0)) as url:  # doctest: +SKIP
    ...     print(url)
    http://127.0.0.1:40123
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import signal
import socket
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

import h11
import uvicorn
from uvicorn.config import LOGGING_CONFIG
from uvicorn.protocols.http.h11_impl import H11Protocol

from tokenwise.errors import TokenwiseError
from tokenwise.serving.app import create_app
from tokenwise.serving.config import ServerConfig

#: seconds an idle keep-alive connection stays open.
KEEP_ALIVE_S = 15
#: the protocol's body deadline comes this much after the app's, which answers with a 408.
BODY_GRACE_S = 1.0
#: seconds uvicorn waits for open responses once it stops (after the drain, or at once on
#: a second SIGTERM or on SIGINT) before it cancels them.
GRACEFUL_SHUTDOWN_S = 5

log = logging.getLogger("tokenwise.serving.security")
drain_log = logging.getLogger("tokenwise.serving")


class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with deadlines on reading a request.

    A request's line and headers must arrive within ``header_timeout_s`` of its first byte
    (a new connection: of its opening), else the client gets a 408 and the connection is
    closed. Its body must arrive within ``body_timeout_s`` (+ ``BODY_GRACE_S``) of its
    headers, else the connection is closed: the app's own deadline (see
    :class:`~tokenwise.serving.security.GuardMiddleware`) answers first with a 408; this
    one also bounds bodies the app never reads. Use :func:`timed_protocol` to set the
    deadlines.
    """

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0

    def connection_made(self, transport: Any) -> None:
        self._read_timer: Any = None
        self._read_stage: str | None = None
        super().connection_made(transport)
        self._arm("headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self._arm(None)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        state = self.conn.their_state
        # IDLE after data: part of a request's head came (or the last of a body the app did
        # not read); either way the next request's head is due.
        self._arm("headers" if state is h11.IDLE else "body" if state is h11.SEND_BODY
                  else None)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Quiet until the next request: uvicorn's keep-alive timeout covers that. A body
        # still coming (answered before it was read, or pipelined) keeps its deadline.
        self._arm("body" if self.conn.their_state is h11.SEND_BODY else None)

    def _arm(self, stage: str | None) -> None:
        if stage == self._read_stage:
            return  # the deadline runs from the stage's start, not from the last byte
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
        self._read_stage = stage
        if stage is not None:
            seconds = self.header_timeout_s if stage == "headers" else \
                self.body_timeout_s + BODY_GRACE_S
            self._read_timer = self.loop.call_later(seconds, self._expired)

    def _expired(self) -> None:
        stage, self._read_timer, self._read_stage = self._read_stage, None, None
        if self.transport.is_closing():
            return
        seconds = self.header_timeout_s if stage == "headers" else self.body_timeout_s
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "-"
        log.info("%s: connection closed: request %s not received within %g s", client,
                 stage, seconds)
        if stage == "headers" and self.conn.our_state is h11.IDLE:
            body = f"request headers not received within {seconds:g} s\n".encode()
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\n"
                                 b"content-type: text/plain; charset=utf-8\r\n"
                                 b"connection: close\r\n"
                                 b"content-length: " + str(len(body)).encode() + b"\r\n\r\n"
                                 + body)
        self.transport.close()


def timed_protocol(header_timeout_s: float, body_timeout_s: float) -> type[TimedH11Protocol]:
    """A :class:`TimedH11Protocol` with these deadlines (uvicorn's ``http=`` takes a class).

    Args:
        header_timeout_s: seconds for a request's line and headers.
        body_timeout_s: seconds for its body.

    Example:
        >>> timed_protocol(5, 20).header_timeout_s
        5
    """
    return type("TimedH11Protocol", (TimedH11Protocol,),
                {"header_timeout_s": header_timeout_s, "body_timeout_s": body_timeout_s})


def logging_config(log_level: str) -> dict[str, Any]:
    """uvicorn's logging configuration with tokenwise's loggers (``tokenwise.serving.access``,
    ``tokenwise.serving.security``, ...) on the same handler, at ``log_level``.

    Args:
        log_level: a level name (``"info"``, ``"warning"``, ...).

    Example:
        >>> logging_config("info")["loggers"]["tokenwise"]["level"]
        'INFO'
    """
    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["tokenwise"] = {"handlers": ["default"], "level": log_level.upper(),
                                      "propagate": False}
    return config


class DrainingServer(uvicorn.Server):
    """uvicorn's server, whose first ``SIGTERM`` drains before it exits (see the module
    docstring); the drain goes through ``app.state.admission``
    (:meth:`tokenwise.serving.admission.Admission.drain`).

    Args:
        config: uvicorn's config (its ``app`` is a tokenwise app).
        drain_timeout_s: seconds the requests in flight get to finish.
    """

    def __init__(self, config: uvicorn.Config, drain_timeout_s: float) -> None:
        super().__init__(config)
        self.drain_timeout_s = drain_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain: asyncio.Task | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        admission = getattr(getattr(self.config.app, "state", None), "admission", None)
        if sig != signal.SIGTERM or admission is None or self._loop is None \
                or self.should_exit or self._drain is not None:
            super().handle_exit(sig, frame)
            return
        # Not recorded as a captured signal: uvicorn would raise it again on exit.
        self._loop.call_soon_threadsafe(self.start_drain)

    def start_drain(self) -> None:
        """Begin the drain (on the server's event loop); the server exits when it ends."""
        if self._drain is None:
            self._drain = asyncio.ensure_future(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        admission = self.config.app.state.admission
        drain_log.warning("SIGTERM: draining; %d request(s) in flight get up to %g s to "
                          "finish; new completion requests get 503", len(admission.held),
                          self.drain_timeout_s)
        try:
            cut = await admission.drain(self.drain_timeout_s)
            if cut:
                drain_log.warning("drain: %d request(s) still running after %g s were ended "
                                  "with 503", cut, self.drain_timeout_s)
        finally:
            self.should_exit = True


def uvicorn_server(app: Any, config: ServerConfig, log_level: str,
                   log_config: dict[str, Any] | None = LOGGING_CONFIG) -> Any:
    """A ``uvicorn.Server`` for ``app`` with the server's settings: read deadlines, the
    keep-alive time, no uvicorn access log (the app logs its own) and no server header.

    Args:
        app: the ASGI app.
        config: the settings (``host``, ``port``, ``header_timeout_s``, ``body_timeout_s``).
        log_level: uvicorn's log level.
        log_config: a :mod:`logging.config` dict (default: uvicorn's, which leaves
            tokenwise's loggers to propagate to the root logger; None: configure nothing).

    Example:
        >>> server = uvicorn_server(None, ServerConfig(header_timeout_s=3), "warning")
        >>> server.config.http.header_timeout_s
        3
    """
    return DrainingServer(uvicorn.Config(
        app, host=config.host, port=config.port, log_level=log_level, log_config=log_config,
        http=timed_protocol(config.header_timeout_s, config.body_timeout_s),
        access_log=False, timeout_keep_alive=KEEP_ALIVE_S,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S, limit_concurrency=1024,
        server_header=False), config.drain_timeout_s)


def run(config: ServerConfig, log_level: str = "info") -> None:
    """Serve until interrupted; log (uvicorn and tokenwise's access log) to stderr.

    Args:
        config: the settings.
        log_level: the log level.
    """
    app = create_app(config)
    uvicorn_server(app, config, log_level, logging_config(log_level)).run()


@contextlib.contextmanager
def serve_in_thread(config: ServerConfig, models: dict[str, Any] | None = None,
                    log_level: str = "warning", start_timeout_s: float = 120.0
                    ) -> Iterator[str]:
    """Serve in a daemon thread; yield the base URL (``port=0`` picks a free port).

    Logging is left to the caller (tokenwise's loggers propagate to the root logger).

    Args:
        config: the settings.
        models: already loaded models (skips loading).
        log_level: uvicorn's log level.
        start_timeout_s: how long to wait for the server to listen.
    """
    server = uvicorn_server(create_app(config, models), config, log_level)
    thread = threading.Thread(target=server.run, name="tokenwise-serve", daemon=True)
    thread.start()
    waited = 0.0
    while not server.started:
        if not thread.is_alive() or waited > start_timeout_s:
            raise TokenwiseError(f"the server did not start on {config.host}:{config.port} "
                                 "(port in use?); see the log above")
        time.sleep(0.05)
        waited += 0.05
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{config.host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
