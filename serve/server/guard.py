"""The server's front door, a pure ASGI middleware: the API key on ``/v1/*`` and the body limit, both checked
before a byte of the body is read.

* **API key** (``--api-key``, as vLLM's): ``Authorization: Bearer <key>`` on every path that starts with
  ``/v1``; ``/health`` and ``/metrics`` stay open for probes and scrapers. Keys are compared as SHA-256
  digests with :func:`hmac.compare_digest`, so neither a key's content nor its length shows in the timing.
* **Body limit** (``--max-body-bytes``): a ``Content-Length`` above it gets 413 at once; a chunked body is
  counted as it arrives and refused as soon as it passes the limit. The rest of a refused body is never
  read into memory: uvicorn's parser drops body bytes that arrive after the response is complete, and the
  connection stays open meanwhile, so a client still sending gets the 413 rather than a reset.
* **Header size**: more than ``MAX_HEADER_BYTES`` of headers get 431.
* **Slow bodies**: a body that has not fully arrived after ``body_timeout_s`` gets 408, so a client
  trickling bytes cannot hold a request open forever.

The body is read here once and replayed to the app (which reads whole bodies anyway), then ``receive`` goes
back to the client's, so the handlers still see a disconnect.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json

from serve.server.errors import error_body

BODY_TIMEOUT_S = 30.0  #: longest a request body may take to arrive
#: most bytes of request headers (names and values); uvicorn's httptools parser sets no limit of its own
MAX_HEADER_BYTES = 64 * 1024


def _digest(key: str | bytes) -> bytes:
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).digest()


class RequestGuard:
    """ASGI middleware in front of the server app (see the module docstring)."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int, body_timeout_s: float = BODY_TIMEOUT_S) -> None:
        self.app, self.max_body_bytes, self.body_timeout_s = app, max_body_bytes, body_timeout_s
        self._key_digest = _digest(api_key) if api_key else None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw_headers = scope.get("headers") or ()
        if sum(len(k) + len(v) for k, v in raw_headers) > MAX_HEADER_BYTES:
            await _answer(send, 431, f"request headers are larger than {MAX_HEADER_BYTES} bytes")
            return
        headers = dict(raw_headers)
        if self._key_digest is not None and scope["path"].startswith("/v1") and not self._is_authorized(headers):
            await _answer(send, 401, "Unauthorized: send 'Authorization: Bearer <key>'",
                          [(b"www-authenticate", b"Bearer")])
            return
        if scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit():
                await _answer(send, 400, "malformed Content-Length header")
                return
            if int(length) > self.max_body_bytes:
                await _answer(send, 413, f"request body of {int(length)} bytes is larger than this server's limit of "
                                         f"{self.max_body_bytes} bytes (--max-body-bytes)")
                return
        try:
            async with asyncio.timeout(self.body_timeout_s):
                body = await self._read_body(receive)
        except TimeoutError:
            await _answer(send, 408, f"the request body did not arrive within {self.body_timeout_s:.0f} s",
                          [(b"connection", b"close")])
            return
        if body is None:
            return  # the client went away
        if isinstance(body, int):
            await _answer(send, 413, f"request body is larger than this server's limit of {self.max_body_bytes} bytes "
                                     "(--max-body-bytes)")
            return
        await self.app(scope, _replay(body, receive), send)

    def _is_authorized(self, headers: dict[bytes, bytes]) -> bool:
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        token = token.strip()
        return scheme.lower() == b"bearer" and bool(token) and hmac.compare_digest(_digest(token), self._key_digest)

    async def _read_body(self, receive) -> bytes | int | None:
        """The body; its size so far (an int) once it passes the limit; None if the client disconnected."""
        parts, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return size
            parts.append(chunk)
            if not message.get("more_body"):
                return b"".join(parts)


def _replay(body: bytes, receive):
    is_sent = False

    async def replayed():
        nonlocal is_sent
        if not is_sent:
            is_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


async def _answer(send, status: int, message: str, extra_headers: list[tuple[bytes, bytes]] = ()) -> None:
    content = json.dumps(error_body(status, message)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode()),
                            *extra_headers]})
    await send({"type": "http.response.body", "body": content})
