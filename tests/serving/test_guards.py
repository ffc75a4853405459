"""Who may drive the server and how slowly: Host and Origin checks (DNS rebinding, other web
pages), CORS only when asked, JSON bodies only, read deadlines for slow clients, and the
access and refusal logs. One keyless server on loopback with short deadlines."""

from __future__ import annotations

import contextlib
import logging
import socket
import time

import httpx
import pytest
from tests.serving.conftest import API_KEY

CORS = "http://app.test:3000"
ALLOWED = "https://ok.test"
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def guarded(small):
    """Base URL of a keyless server with 0.5 s header and body deadlines."""
    from tokenwise.serving import ServerConfig
    from tokenwise.serving.server import serve_in_thread

    config = ServerConfig(port=0, header_timeout_s=0.5, body_timeout_s=0.5,
                          allowed_hosts=("tw.test",), allowed_origins=(ALLOWED,),
                          cors_origins=(CORS,))
    with serve_in_thread(config, models={"tw-small": small}) as url:
        yield url


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


# --- Host and Origin -------------------------------------------------------------------

def test_a_rebound_host_name_is_refused(guarded):
    r = httpx.get(guarded + "/v1/models", headers={"Host": f"evil.test:{_port(guarded)}"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_host"
    assert "evil.test" in r.json()["error"]["message"]
    assert "--allowed-host" in r.json()["error"]["message"]
    for host in ("localhost", "127.0.0.1", "[::1]", "tw.test"):  # loopback and allowed names
        r = httpx.get(guarded + "/v1/models", headers={"Host": f"{host}:{_port(guarded)}"})
        assert r.status_code == 200, host


def test_a_text_plain_post_from_another_page_is_refused(guarded):
    body = b'{"model": "tw-small", "prompt": "hi", "max_tokens": 1}'
    r = httpx.post(guarded + "/v1/completions", content=body,
                   headers={"Origin": "http://evil.test", "Content-Type": "text/plain"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "origin_not_allowed"
    assert "http://evil.test" in r.json()["error"]["message"]
    r = httpx.post(guarded + "/v1/completions", content=body, headers={"Origin": "null",
                                                                     **JSON})
    assert r.status_code == 403  # a sandboxed frame or a file page


@pytest.mark.parametrize("kind", [None, "text/plain", "application/x-www-form-urlencoded",
                                  "multipart/form-data; boundary=x"])
def test_a_body_that_is_not_declared_json_is_415(guarded, kind):
    headers = {} if kind is None else {"Content-Type": kind}
    r = httpx.post(guarded + "/v1/completions", content=b'{"model": "tw-small"}',
                   headers=headers)
    assert r.status_code == 415
    error = r.json()["error"]
    assert error["code"] == "unsupported_media_type" and "application/json" in error["message"]
    assert (kind or "no Content-Type") in error["message"]


def test_the_servers_own_page_and_allowed_origins_get_through(guarded):
    own = guarded  # the playground's origin: the server's own address
    for origin in (own, ALLOWED, CORS):
        r = httpx.post(guarded + "/v1/completions", content=b"{}",
                       headers={"Origin": origin, "Content-Type": "application/json; "
                                                                  "charset=utf-8"})
        # past the guards: the route itself answers that the body lacks its fields
        assert r.status_code == 400, origin
        assert r.json()["error"]["code"] == "missing_required_parameter"


def test_cors_headers_go_only_to_cors_origins(guarded):
    r = httpx.get(guarded + "/v1/models", headers={"Origin": CORS})
    assert r.headers["access-control-allow-origin"] == CORS and "Origin" in r.headers["vary"]
    for origin in (None, guarded, ALLOWED):
        headers = {} if origin is None else {"Origin": origin}
        r = httpx.get(guarded + "/v1/models", headers=headers)
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    r = httpx.options(guarded + "/v1/chat/completions", headers={"Origin": CORS, **preflight})
    assert r.status_code == 204 and r.headers["access-control-allow-origin"] == CORS
    assert "POST" in r.headers["access-control-allow-methods"]
    assert "Authorization" in r.headers["access-control-allow-headers"]
    r = httpx.options(guarded + "/v1/chat/completions",
                      headers={"Origin": "http://evil.test", **preflight})
    assert r.status_code == 403 and "access-control-allow-origin" not in r.headers


# --- slow clients ----------------------------------------------------------------------

def _trickle(url: str, head: bytes, drip: bytes, limit_s: float = 6.0) -> bytes:
    """Send ``head``, then ``drip`` one byte every 0.1 s until the server answers and
    closes (or ``limit_s`` passes); return everything the server sent."""
    got = b""
    with socket.create_connection(("127.0.0.1", _port(url)), timeout=limit_s) as sock:
        sock.settimeout(0.1)
        if head:
            sock.sendall(head)
        end = time.monotonic() + limit_s
        i = 0
        while time.monotonic() < end:
            try:
                chunk = sock.recv(65536)
                if not chunk:
                    return got  # closed by the server
                got += chunk
            except TimeoutError:
                pass
            except ConnectionResetError:
                return got
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(drip[i % len(drip):i % len(drip) + 1] if drip else b"")
            i += 1
    raise AssertionError(f"the connection was still open after {limit_s} s; got {got!r}")


def test_slow_headers_get_408_and_the_connection_closes(guarded):
    got = _trickle(guarded, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n", b"X-Slow: y")
    assert got.startswith(b"HTTP/1.1 408")


def test_a_silent_connection_is_closed(guarded):
    assert _trickle(guarded, b"", b"").startswith(b"HTTP/1.1 408")


def test_a_slow_body_gets_408_and_the_connection_closes(guarded):
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 200\r\n\r\n")
    got = _trickle(guarded, head, b'{"model": "tw-small", "prompt": "hi"}')
    assert got.startswith(b"HTTP/1.1 408")
    assert b'"code": "request_timeout"' in got and b"0.5 s" in got


def test_a_slow_body_the_app_does_not_read_is_cut_too(guarded):
    head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 500\r\n\r\n"
    got = _trickle(guarded, head, b"x")
    assert got.startswith(b"HTTP/1.1 200")  # answered at once, then closed mid-body


def test_slow_headers_of_a_second_request_are_cut(guarded):
    first = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    got = _trickle(guarded, first + b"GET /health HTTP/1.1\r\n", b"X-Slow: y")
    assert got.startswith(b"HTTP/1.1 200") and b"HTTP/1.1 408" in got


def _response(sock: socket.socket) -> bytes:
    got = b""
    while not got.endswith(b'{"status":"ok"}'):
        chunk = sock.recv(65536)
        assert chunk, f"closed after {got!r}"
        got += chunk
    return got


def test_a_quiet_keep_alive_connection_outlives_the_header_deadline(guarded):
    with socket.create_connection(("127.0.0.1", _port(guarded)), timeout=5) as sock:
        request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        sock.sendall(request)
        assert _response(sock).startswith(b"HTTP/1.1 200")
        time.sleep(0.8)  # past the header deadline, inside the keep-alive time
        sock.sendall(request)
        assert _response(sock).startswith(b"HTTP/1.1 200")


# --- logs ------------------------------------------------------------------------------

def _wait_for(caplog, logger: str, text: str) -> logging.LogRecord:
    end = time.monotonic() + 5  # the server thread logs after the response is sent
    while time.monotonic() < end:
        for record in caplog.records:
            if record.name == logger and text in record.getMessage():
                return record
        time.sleep(0.02)
    raise AssertionError(f"no {logger} record with {text!r}: "
                         f"{[r.getMessage() for r in caplog.records]}")


def test_requests_are_logged_at_info(guarded, caplog):
    with caplog.at_level(logging.INFO, logger="tokenwise.serving"):
        httpx.get(guarded + "/health?x=1")
        record = _wait_for(caplog, "tokenwise.serving.access", '"GET /health" 200')
        assert record.levelno == logging.INFO and " ms" in record.getMessage()
        httpx.post(guarded + "/v1/completions", content=b"{}", headers={"Origin": "null"})
        _wait_for(caplog, "tokenwise.serving.security", "refused 403: Origin 'null'")
        _wait_for(caplog, "tokenwise.serving.access", '"POST /v1/completions" 403')


def test_auth_failures_are_logged_without_the_key(server, caplog):
    with caplog.at_level(logging.INFO, logger="tokenwise.serving"):
        httpx.get(server + "/v1/models")
        _wait_for(caplog, "tokenwise.serving.security", "refused 401: no key sent")
        guess = API_KEY + "-guess"
        httpx.get(server + "/v1/models", headers={"Authorization": f"Bearer {guess}"})
        record = _wait_for(caplog, "tokenwise.serving.security", "a wrong key sent")
        assert record.levelno == logging.INFO
        assert not any(guess in r.getMessage() for r in caplog.records)
