"""The server's guards, as one ASGI middleware in front of the app: where a request may come
from, the API key, the body's type, size and read deadline, and the access log.

In the order they are checked:

- ``Host`` must name this server: a loopback name (``localhost``, ``127.0.0.1``, ``::1``),
  the bound host, any IP address when bound to all interfaces, or a name the operator
  allowed. A web page that rebinds its own domain name to this server's address (DNS
  rebinding) sends its domain name as ``Host`` and is refused (400).
- ``Origin``, when a browser sends one, must be the server's own (the playground) or one the
  operator allowed (``allowed_origins``, ``cors_origins``); otherwise 403. CORS headers are
  sent only to ``cors_origins``, and only they get an answer to a preflight.
- The API key (``/v1/...`` and ``/tokenwise/...``; the playground page and its assets are
  public and send the key the user types), compared with :func:`hmac.compare_digest`.
- A body must be declared ``Content-Type: application/json`` (415 otherwise): a page can send
  a ``text/plain`` POST to any address without asking, but not a JSON one.
- A body larger than the limit is refused with 413 before it is read in full; one that does
  not arrive within ``body_timeout_s`` is answered 408 and the connection is closed.

Refusals are logged at info level on ``tokenwise.serving.security`` (never the key sent),
and every request on ``tokenwise.serving.access`` (method, path, status, milliseconds).

Example:
    >>> key_matches("Bearer s3cret", "s3cret"), key_matches("Bearer guess", "s3cret")
    (True, False)
    >>> host_name("[::1]:8000"), host_name("Example.com:80")
    ('::1', 'example.com')
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from tokenwise.serving.errors import APIError

Scope = dict[str, Any]
#: paths that need the API key: the OpenAI routes, ours, vLLM's tokenizer routes, and the
#: Prometheus scrape (model names and usage; Prometheus sends the key as a bearer token).
# /openapi.json lists the served models and limits, as /v1/models does
_PROTECTED = ("/v1/", "/tokenwise/", "/tokenize", "/detokenize", "/metrics", "/openapi.json")
_BODY_METHODS = ("POST", "PUT", "PATCH")
#: names that always mean this machine.
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
#: bind addresses that listen on every interface.
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}

security_log = logging.getLogger("tokenwise.serving.security")
access_log = logging.getLogger("tokenwise.serving.access")


def key_matches(authorization: str | None, key: str) -> bool:
    """Whether an ``Authorization`` header carries ``key`` as a bearer token.

    Args:
        authorization: the header's value (None when absent).
        key: the server's key.

    Example:
        >>> key_matches("Bearer k", "k"), key_matches(None, "k")
        (True, False)
    """
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        token = ""
    return hmac.compare_digest(token.strip().encode(), key.encode())


def _split_host(host: str) -> tuple[str, int | None] | None:
    """``(name, port)`` of a ``Host`` header (port None when absent); None if malformed."""
    host = host.strip().lower()
    if host.startswith("["):
        name, sep, rest = host[1:].partition("]")
        if not sep:
            return None
        port_text = rest[1:] if rest.startswith(":") else None if not rest else "x"
    elif host.count(":") > 1:
        name, port_text = host, None  # a bare IPv6 address
    else:
        name, sep, port_text = host.partition(":")
        port_text = port_text if sep else None
    if port_text is not None and not (port_text.isdigit() and int(port_text) <= 65535):
        return None
    if not name or any(c.isspace() or c in "/\\@" for c in name):
        return None
    return name, None if port_text is None else int(port_text)


def host_name(host: str) -> str | None:
    """The name in a ``Host`` header, lower-cased, without port or IPv6 brackets; None when
    it is not a well-formed ``host[:port]``.

    Args:
        host: the header's value.

    Example:
        >>> host_name("LOCALHOST:8000"), host_name("a b")
        ('localhost', None)
    """
    split = _split_host(host)
    return None if split is None else split[0]


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def host_allowed(host: str, bound_host: str, allowed_hosts: Iterable[str] = ()) -> bool:
    """Whether a ``Host`` header names this server.

    Args:
        host: the header's value.
        bound_host: the address the server is bound to.
        allowed_hosts: more names the operator allowed (``"*"``: any).

    Example:
        >>> host_allowed("localhost:8000", "127.0.0.1"), host_allowed("evil.test", "127.0.0.1")
        (True, False)
        >>> host_allowed("192.168.1.5:8000", "0.0.0.0")  # an address, not a rebindable name
        True
    """
    allowed = set(allowed_hosts)
    if "*" in allowed:
        return True
    name = host_name(host)
    if name is None:
        return False
    bound = bound_host.strip("[]").lower()
    if name in LOOPBACK_NAMES or name == bound or name in allowed:
        return True
    # Bound to every interface, the server cannot know its own addresses; an address is
    # never a name that a page's author controls, so any address is this server.
    return bound in WILDCARD_HOSTS and _is_ip(name)


def _origin_parts(origin: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(origin.strip().lower())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return parts.scheme, parts.hostname, port or _DEFAULT_PORTS[parts.scheme]


def normal_origin(origin: str) -> str | None:
    """``scheme://host[:port]`` lower-cased, the scheme's default port left out; None for
    an origin that is not one (``null``, a file page).

    Example:
        >>> normal_origin("HTTP://Example.com:80"), normal_origin("null")
        ('http://example.com', None)
    """
    parts = _origin_parts(origin)
    if parts is None:
        return None
    scheme, name, port = parts
    host = f"[{name}]" if ":" in name else name
    return f"{scheme}://{host}" + ("" if port == _DEFAULT_PORTS[scheme] else f":{port}")


def same_origin(origin: str, host: str) -> bool:
    """Whether a page at ``origin`` was served by the server that the ``Host`` header names
    (the playground sends its own origin with every POST).

    A ``Host`` without a port matches the origin's default port, whatever the scheme (a
    proxy in front may end TLS).

    Example:
        >>> same_origin("http://127.0.0.1:8000", "127.0.0.1:8000")
        True
        >>> same_origin("http://evil.test:8000", "127.0.0.1:8000")
        False
    """
    parts, split = _origin_parts(origin), _split_host(host)
    if parts is None or split is None:
        return False
    scheme, origin_name, origin_port = parts
    name, port = split
    return origin_name == name and origin_port == (port or _DEFAULT_PORTS[scheme])


async def _send_error(send: Any, error: APIError,
                      extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()), *(extra or [])]
    if error.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "-"


class GuardMiddleware:
    """Host, origin, API key and body checks, CORS, and the access log, in front of the app.

    Args:
        app: the ASGI app.
        api_key: the key, or None for none.
        max_body_bytes: largest request body.
        body_timeout_s: seconds a body may take to arrive after its headers (None: no
            deadline).
        bound_host: the address the server is bound to (``Host`` checks compare with it).
        allowed_hosts: more names ``Host`` may carry (``"*"``: any).
        allowed_origins: more origins whose pages may send requests (``"*"``: any).
        cors_origins: origins answered with CORS headers (``"*"``: any).

    Example:
        >>> guard = GuardMiddleware(None, api_key=None, max_body_bytes=1000)
        >>> guard.origin_allowed("http://evil.test", "127.0.0.1:8000")
        False
    """

    def __init__(self, app: Any, api_key: str | None, max_body_bytes: int,
                 body_timeout_s: float | None = None, bound_host: str = "127.0.0.1",
                 allowed_hosts: Iterable[str] = (), allowed_origins: Iterable[str] = (),
                 cors_origins: Iterable[str] = ()) -> None:
        self.app = app
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.bound_host = bound_host
        self.allowed_hosts = frozenset(allowed_hosts)
        self.cors_origins = frozenset(filter(None, (o if o == "*" else normal_origin(o)
                                                    for o in cors_origins)))
        self.allowed_origins = self.cors_origins | frozenset(
            filter(None, (o if o == "*" else normal_origin(o) for o in allowed_origins)))

    def origin_allowed(self, origin: str, host: str | None) -> bool:
        """Whether a request from a page at ``origin`` may reach the server.

        Args:
            origin: the ``Origin`` header.
            host: the ``Host`` header (None when absent).
        """
        if host is not None and same_origin(origin, host):
            return True
        return "*" in self.allowed_origins or normal_origin(origin) in self.allowed_origins

    def _cors_headers(self, origin: str | None) -> list[tuple[bytes, bytes]]:
        if origin is None or not self.cors_origins:
            return []
        if "*" not in self.cors_origins and normal_origin(origin) not in self.cors_origins:
            return []
        return [(b"access-control-allow-origin", origin.encode("latin-1")),
                (b"vary", b"Origin")]

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status: list[int] = []
        cors: list[tuple[bytes, bytes]] = []

        async def logged_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
                if cors:
                    message = {**message, "headers": [*message.get("headers", []), *cors]}
            await send(message)

        try:
            await self._guarded(scope, receive, logged_send, cors)
        except Exception:
            if not status:
                status.append(500)  # answered by the server-error handler outside this one
            raise
        finally:
            access_log.info('%s "%s %s" %s %.1f ms', _client(scope), scope.get("method"),
                            scope.get("path"), status[0] if status else "-",
                            (time.monotonic() - started) * 1000)

    async def _refuse(self, scope: Scope, send: Any, error: APIError, why: str,
                      extra: list[tuple[bytes, bytes]] | None = None) -> None:
        security_log.info('%s "%s %s" refused %d: %s', _client(scope), scope.get("method"),
                          scope.get("path"), error.status, why)
        await _send_error(send, error, extra)

    async def _guarded(self, scope: Scope, receive: Any, send: Any,
                       cors: list[tuple[bytes, bytes]]) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        path, method = scope.get("path", ""), scope.get("method", "")
        host, origin = headers.get("host"), headers.get("origin")
        # No Host (HTTP/1.0) carries no name a page could have chosen.
        if host is not None and not host_allowed(host, self.bound_host, self.allowed_hosts):
            await self._refuse(scope, send, APIError(
                400, f"Host {host!r} is not a name of this server (allowed: loopback names, "
                     "the address it is bound to, and names its operator allows with "
                     "--allowed-host)", code="invalid_host"), f"Host {host!r}")
            return
        if origin is not None and not self.origin_allowed(origin, host):
            await self._refuse(scope, send, APIError(
                403, f"requests from pages at {origin!r} are not allowed (the operator can "
                     "allow an origin with --allowed-origin or --cors-origin)",
                code="origin_not_allowed"), f"Origin {origin!r}")
            return
        cors.extend(self._cors_headers(origin))
        if cors and method == "OPTIONS" and "access-control-request-method" in headers:
            await send({"type": "http.response.start", "status": 204, "headers": [
                (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
                (b"access-control-allow-headers", b"Authorization, Content-Type"),
                (b"access-control-max-age", b"600")]})
            await send({"type": "http.response.body", "body": b""})
            return
        if self.api_key is not None and path.startswith(_PROTECTED) \
                and not key_matches(headers.get("authorization"), self.api_key):
            sent = "no key" if "authorization" not in headers else "a wrong key"
            await self._refuse(scope, send, APIError(
                401, "Incorrect or missing API key: send it as 'Authorization: Bearer KEY'",
                code="invalid_api_key"), f"{sent} sent")
            return
        limit = self.max_body_bytes
        too_large = APIError(413, f"request body is larger than this server's limit of "
                                  f"{limit} bytes", code="request_too_large")
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(scope, send, too_large, f"Content-Length {declared}")
            return
        if method not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        kind = headers.get("content-type")
        if kind is None or kind.partition(";")[0].strip().lower() != "application/json":
            got = "no Content-Type" if kind is None else f"Content-Type {kind!r}"
            await self._refuse(scope, send, APIError(
                415, f"{got}: send the body as JSON with 'Content-Type: application/json'",
                param="Content-Type", code="unsupported_media_type"), got)
            return
        body = await self._read_body(scope, receive, send, too_large)
        if body is None:
            return
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # afterwards: http.disconnect when the client leaves

        await self.app(scope, replay, send)

    async def _read_body(self, scope: Scope, receive: Any, send: Any,
                         too_large: APIError) -> bytes | None:
        """The whole body (the limit is checked before any parsing); None when answered
        already (too large, too slow) or the client left."""
        deadline = None if self.body_timeout_s is None else \
            time.monotonic() + self.body_timeout_s
        chunks, received = [], 0
        while True:
            try:
                message = await asyncio.wait_for(
                    receive(), None if deadline is None else max(deadline - time.monotonic(), 0))
            except asyncio.TimeoutError:
                # Close the connection: what the client sends next is the rest of this body.
                await self._refuse(scope, send, APIError(
                    408, f"the request body did not arrive within {self.body_timeout_s:g} s "
                         f"({received} bytes came)", code="request_timeout"),
                    f"body too slow ({received} bytes in {self.body_timeout_s:g} s)",
                    [(b"connection", b"close")])
                return None
            if message["type"] != "http.request":
                return None  # the client left while sending
            chunks.append(message.get("body", b""))
            received += len(chunks[-1])
            if received > self.max_body_bytes:
                await self._refuse(scope, send, too_large, f"body over {received} bytes")
                return None
            if not message.get("more_body", False):
                return b"".join(chunks)
