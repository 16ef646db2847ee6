"""A lean load client for streamed OpenAI requests: one keep-alive HTTP/1.1 connection per worker, requests
written in one ``write``, responses parsed by httptools. It costs far less CPU per request than httpx, so at
64 concurrent streams on two cores it measures the server rather than itself.

TTFT is the time from writing the request to the first body bytes that carry generated text (a non-empty
``"content"`` or ``"text"`` value, however the server spaces its JSON).
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools

_TOKEN = re.compile(rb'"(?:content|text)":\s*"[^"]')


@dataclass(frozen=True, slots=True)
class StreamTiming:
    ttft_s: float  #: request written -> first generated text received
    e2e_s: float  #: request written -> response complete


class _Response(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.keep_alive = False
        self.first_token_s: float | None = None
        self.tail = b""  # the end of the previous chunk, in case a token marker straddles two chunks
        self.error: BaseException | None = None
        self.done: asyncio.Future | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._finish(e)

    def connection_lost(self, exc) -> None:
        self._finish(exc or ConnectionError("connection closed"))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()  # (llhttp forgets it once the message is complete)

    def on_body(self, body: bytes) -> None:
        if self.first_token_s is None:
            if _TOKEN.search(self.tail + body):
                self.first_token_s = time.perf_counter()
            self.tail = body[-24:]

    def on_message_complete(self) -> None:
        self._finish(None)

    def _finish(self, error: BaseException | None) -> None:
        if self.done is not None and not self.done.done():
            if error is None:
                self.done.set_result(None)
            else:
                self.done.set_exception(error if isinstance(error, BaseException) else ConnectionError(str(error)))


class SSEClient:
    """Streams requests to one server over one connection (reconnecting if the server closes it)."""

    def __init__(self, base_url: str, headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._head = f"Host: {self.host}:{self.port}\r\nContent-Type: application/json\r\n{extra}".encode()
        self._proto: _Response | None = None

    async def _connect(self) -> _Response:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(_Response, self.host, self.port)
        return proto

    async def post(self, path: str, body: bytes, timeout_s: float = 60.0) -> StreamTiming:
        """Send one request and wait for its whole response; raises on a non-200 status."""
        if self._proto is None or self._proto.transport.is_closing():
            self._proto = await self._connect()
        proto = self._proto
        proto.parser = httptools.HttpResponseParser(proto)
        proto.first_token_s, proto.tail, proto.status = None, b"", 0
        proto.done = asyncio.get_running_loop().create_future()
        start = time.perf_counter()
        proto.transport.write(b"POST %s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n%s" % (path.encode(), self._head, len(body), body))
        try:
            async with asyncio.timeout(timeout_s):
                await proto.done
        except BaseException:
            self.close()
            raise
        end = time.perf_counter()
        if not proto.keep_alive:
            self.close()
        if proto.status != 200:
            raise RuntimeError(f"{self.host}:{self.port}{path}: HTTP {proto.status}")
        return StreamTiming((proto.first_token_s or end) - start, end - start)

    def close(self) -> None:
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()
        self._proto = None


async def run_sequential(client: SSEClient, path: str, body: bytes, n: int) -> list[StreamTiming]:
    return [await client.post(path, body) for _ in range(n)]


async def run_concurrent(base_url: str, path: str, body: bytes, num_requests: int, concurrency: int,
                         headers: dict[str, str] | None = None) -> float:
    """Stream ``num_requests`` requests over ``concurrency`` connections; return requests per second."""
    clients = [SSEClient(base_url, headers) for _ in range(concurrency)]
    for c in clients:  # connect and warm every connection first
        await c.post(path, body)
    remaining = num_requests

    async def worker(c: SSEClient) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await c.post(path, body)

    start = time.perf_counter()
    try:
        await asyncio.gather(*(worker(c) for c in clients))
        return num_requests / (time.perf_counter() - start)
    finally:
        for c in clients:
            c.close()
