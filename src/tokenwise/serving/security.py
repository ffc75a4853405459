"""The server's guards: the API key and the request-size limit, as one ASGI middleware.

The key is compared with :func:`hmac.compare_digest` (time independent of where the first
wrong byte is). Only the API (``/v1/...`` and ``/tokenwise/...``) needs it; the playground
page and its assets are public and send the key the user types. A body larger than the
limit is refused with 413 before it is read in full: by its ``Content-Length`` when it
declares one, else as soon as the bytes received pass the limit.

Example:
    >>> key_matches("Bearer s3cret", "s3cret"), key_matches("Bearer guess", "s3cret")
    (True, False)
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from tokenwise.serving.errors import APIError

Scope = dict[str, Any]
_PROTECTED = ("/v1/", "/tokenwise/")


def key_matches(authorization: str | None, key: str) -> bool:
    """Whether an ``Authorization`` header carries ``key`` as a bearer token.

    Args:
        authorization: the header's value (None when absent).
        key: the server's key.
    """
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        token = ""
    return hmac.compare_digest(token.strip().encode(), key.encode())


async def _send_error(send: Any, error: APIError) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    if error.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class GuardMiddleware:
    """API key and body-size checks in front of the app.

    Args:
        app: the ASGI app.
        api_key: the key, or None for none.
        max_body_bytes: largest request body.
    """

    def __init__(self, app: Any, api_key: str | None, max_body_bytes: int) -> None:
        self.app = app
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        path = scope.get("path", "")
        if self.api_key is not None and path.startswith(_PROTECTED) \
                and not key_matches(headers.get("authorization"), self.api_key):
            await _send_error(send, APIError(
                401, "Incorrect or missing API key: send it as 'Authorization: Bearer KEY'",
                code="invalid_api_key"))
            return
        limit = self.max_body_bytes
        too_large = APIError(413, f"request body is larger than this server's limit of "
                                  f"{limit} bytes", code="request_too_large")
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _send_error(send, too_large)
            return
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        chunks, received = [], 0
        while True:  # read the whole body first: the limit is checked before any parsing
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left while sending
            chunks.append(message.get("body", b""))
            received += len(chunks[-1])
            if received > limit:
                await _send_error(send, too_large)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # afterwards: http.disconnect when the client leaves

        await self.app(scope, replay, send)
