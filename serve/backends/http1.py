"""A lean HTTP/1.1 client for the gateway's hot path: one keep-alive connection pool per replica, requests
written in one ``write``, responses parsed by httptools (C) and handed over chunk by chunk as they arrive.

Why not httpx here: its pure-Python h11 parser, per-request model objects and anyio layers cost about a
millisecond per streamed request on two cores, most of the gateway's overhead (profiled with cProfile; see
docs/gateway.md). httpx is still used for everything off the hot path (health, metrics, adapter calls).

Only what relaying OpenAI requests needs: ``POST`` with a bytes body, any status, chunked or sized bodies,
``Connection: close``, connect and idle-read timeouts, and abort by closing the connection (the engine sees
the client go away and aborts the request). A request on a reused connection that the server had closed
while it was idle is retried once on a new connection, as browsers do: nothing of it can have reached the
engine.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from urllib.parse import urlsplit

import httptools

_MAX_BUFFERED_CHUNKS = 64  # unread body chunks before the socket is paused (backpressure)


class ConnectionClosed(ConnectionError):
    """The server closed the connection before the response was complete."""


class _Connection(asyncio.Protocol):
    """One TCP connection; parses the response of the request in flight."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser: httptools.HttpResponseParser | None = None
        self.chunks: deque[bytes] = deque()
        self.headers: list[tuple[bytes, bytes]] = []
        self.status = 0
        self.has_headers = self.is_complete = self.is_closed = self.is_paused = self.keep_alive = False
        self.has_response_bytes = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future | None = None
        self.idle_since = time.monotonic()

    # -- asyncio.Protocol ------------------------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.has_response_bytes = True
        if self.parser is None:  # bytes while idle: the server is misbehaving; drop the connection
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(ConnectionClosed(f"malformed HTTP response: {e}"))
            self.close()
            return
        if len(self.chunks) > _MAX_BUFFERED_CHUNKS and not self.is_paused:
            self.is_paused = True
            self.transport.pause_reading()
        self._wake()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.is_closed = True
        if not self.is_complete:
            self._fail(ConnectionClosed(f"connection closed by the server{f' ({exc})' if exc else ''}"))

    # -- httptools callbacks -----------------------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()  # (llhttp forgets it once the message is complete)
        self.has_headers = True

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.is_complete = True

    # -- used by HTTP1Pool / HTTP1Response ---------------------------------------------------------------------
    def start(self, request: bytes) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.chunks.clear()
        self.headers = []
        self.status, self.has_headers, self.is_complete, self.has_response_bytes, self.keep_alive = 0, False, False, False, False
        self.transport.write(request)

    def _fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def wait(self, timeout_s: float) -> None:
        """Wait for more bytes (or the end, or an error), at most ``timeout_s``."""
        loop = asyncio.get_running_loop()
        self.waiter = loop.create_future()
        timer = loop.call_later(timeout_s, _expire, self.waiter)
        try:
            await self.waiter
        finally:
            timer.cancel()
            self.waiter = None

    def take_chunks(self) -> bytes:
        chunks = self.chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        if self.is_paused:
            self.is_paused = False
            self.transport.resume_reading()
        return data

    @property
    def can_reuse(self) -> bool:
        return self.is_complete and self.keep_alive and not self.is_closed and self.error is None

    def close(self) -> None:
        self.is_closed = True
        if self.transport is not None:
            self.transport.close()


def _expire(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


class BodyReader:
    """``read()`` for responses that have ``next_chunk()``."""

    async def next_chunk(self) -> bytes | None:
        raise NotImplementedError

    async def read(self) -> bytes:
        """The rest of the body."""
        parts = []
        while (chunk := await self.next_chunk()) is not None:
            parts.append(chunk)
        return b"".join(parts)


class HTTP1Response(BodyReader):
    """A response whose headers have arrived; the body is read chunk by chunk. Always :meth:`close` it."""

    def __init__(self, pool: HTTP1Pool, conn: _Connection, read_timeout_s: float) -> None:
        self._pool, self._conn, self._timeout_s = pool, conn, read_timeout_s
        self.status = conn.status
        self.headers = conn.headers

    async def next_chunk(self) -> bytes | None:
        """All body bytes that arrived since the last call (waiting for some if none did), or None at the end
        of the body. Raises ConnectionClosed (cut off) or TimeoutError (no bytes for ``read_timeout_s``)."""
        conn = self._conn
        while not conn.chunks:
            if conn.is_complete:
                return None
            if conn.error is not None:
                raise conn.error
            await conn.wait(self._timeout_s)
        return conn.take_chunks()

    def close(self) -> None:
        """Give the connection back if the response was read to the end, else close it (aborting the request)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool._release(conn)


class HTTP1Pool:
    """Keep-alive connections to one origin (``scheme://host:port``)."""

    def __init__(self, url: str, headers: dict[str, str] | None = None, connect_timeout_s: float = 2.0,
                 max_idle: int = 256, idle_expiry_s: float = 30.0) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self.prefix = parts.path.rstrip("/")
        host = self.host if parts.port is None else f"{self.host}:{self.port}"
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._head = f"Host: {host}\r\nContent-Type: application/json\r\nAccept: */*\r\n{extra}".encode("latin-1")
        self.connect_timeout_s, self.max_idle, self.idle_expiry_s = connect_timeout_s, max_idle, idle_expiry_s
        self._idle: deque[_Connection] = deque()
        self._open: set[_Connection] = set()

    async def post(self, path: str, body: bytes, read_timeout_s: float, headers: dict[str, str] | None = None) -> HTTP1Response:
        """Send ``POST path`` and return once the response headers are in. Raises OSError/ConnectionError
        (connecting or cut off) or TimeoutError."""
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode("latin-1") if headers else b""
        request = b"".join((b"POST ", (self.prefix + path).encode(), b" HTTP/1.1\r\n", self._head, extra,
                            b"Content-Length: %d\r\n\r\n" % len(body), body))
        for _ in range(2):
            conn, reused = await self._acquire()
            conn.start(request)
            try:
                while not conn.has_headers:
                    if conn.error is not None:
                        raise conn.error
                    await conn.wait(read_timeout_s)
            except ConnectionClosed:
                self._release(conn)
                if reused and not conn.has_response_bytes:
                    continue  # the server had closed this idle connection: try once on a new one
                raise
            except BaseException:
                self._release(conn)
                raise
            return HTTP1Response(self, conn, read_timeout_s)
        raise ConnectionClosed("connection closed by the server")

    async def _acquire(self) -> tuple[_Connection, bool]:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()  # the most recently used: the least likely to have been closed
            if not conn.is_closed and now - conn.idle_since < self.idle_expiry_s:
                return conn, True
            self._discard(conn)
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.connect_timeout_s):
            _, conn = await loop.create_connection(_Connection, self.host, self.port, ssl=self.ssl,
                                                   server_hostname=self.host if self.ssl else None)
        self._open.add(conn)
        return conn, False

    def _release(self, conn: _Connection) -> None:
        reusable = conn.transport is not None and conn.can_reuse
        conn.parser = None
        if reusable:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
            while len(self._idle) > self.max_idle:
                self._discard(self._idle.popleft())
        else:
            self._discard(conn)

    def _discard(self, conn: _Connection) -> None:
        conn.close()
        self._open.discard(conn)

    async def aclose(self) -> None:
        for conn in list(self._open):
            self._discard(conn)
        self._idle.clear()
