"""serve/backends/http1.py against small real asyncio servers: keep-alive reuse, chunked and sized bodies,
Connection: close, a stale idle connection retried once, timeouts, and abort by closing the connection."""

from __future__ import annotations

import asyncio

import pytest

from serve.backends.http1 import ConnectionClosed, HTTP1Pool

pytestmark = pytest.mark.timeout(30)


class Server:
    """A raw HTTP/1.1 server whose answer to each request is chosen by the test (``reply(n) -> bytes``)."""

    def __init__(self, reply) -> None:
        self.reply = reply
        self.num_connections = 0
        self.num_requests = 0
        self.closed_by_client = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.num_connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")))
                await reader.readexactly(length)
                self.num_requests += 1
                answer = self.reply(self.num_requests)
                if answer is None:  # hang up without answering
                    writer.close()
                    return
                for part in answer if isinstance(answer, list) else [answer]:
                    if part == "until-closed":  # send nothing more; see the client give up
                        if await reader.read() == b"":
                            self.closed_by_client.set()
                        return
                    if isinstance(part, float):
                        await asyncio.sleep(part)
                    else:
                        writer.write(part)
                        await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed_by_client.set()
        finally:
            writer.close()

    async def stop(self) -> None:
        self.server.close()


def sized(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def chunked(*parts: bytes | float) -> list:
    out: list = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"]
    out += [p if isinstance(p, float) else b"%x\r\n%s\r\n" % (len(p), p) for p in parts]
    return out + [b"0\r\n\r\n"]


def run(coro) -> None:
    asyncio.run(coro)


def test_keep_alive_reuses_one_connection_for_sized_and_chunked_bodies() -> None:
    async def go() -> None:
        srv = Server(lambda n: sized(b'{"n": %d}' % n) if n % 2 else chunked(b"data: a\n\n", 0.01, b"data: b\n\n"))
        pool = HTTP1Pool(await srv.start())
        try:
            bodies = []
            for _ in range(4):
                r = await pool.post("/v1/completions", b"{}", 5)
                bodies.append(await r.read())
                r.close()
            assert bodies == [b'{"n": 1}', b"data: a\n\ndata: b\n\n", b'{"n": 3}', b"data: a\n\ndata: b\n\n"]
            assert srv.num_connections == 1
        finally:
            await pool.aclose()
            await srv.stop()

    run(go())


def test_chunks_arrive_as_they_are_sent() -> None:
    async def go() -> None:
        srv = Server(lambda n: chunked(b"first", 0.3, b"second"))
        pool = HTTP1Pool(await srv.start())
        try:
            r = await pool.post("/x", b"{}", 5)
            loop = asyncio.get_running_loop()
            start = loop.time()
            assert await r.next_chunk() == b"first"
            assert loop.time() - start < 0.2  # not held back until the body ends
            assert await r.next_chunk() == b"second"
            assert await r.next_chunk() is None
            r.close()
        finally:
            await pool.aclose()
            await srv.stop()

    run(go())


def test_connection_close_and_a_stale_idle_connection() -> None:
    async def go() -> None:
        # 1: answered with Connection: close; 2: answered; 3: the server hangs up on the reused connection
        # (as a server does when its keep-alive timer fires); the pool retries once on a new connection.
        srv = Server(lambda n: None if n == 3 else sized(b"ok", b"Connection: close\r\n" if n == 1 else b""))
        pool = HTTP1Pool(await srv.start())
        try:
            for _ in range(3):
                r = await pool.post("/x", b"{}", 5)
                assert r.status == 200 and await r.read() == b"ok"
                r.close()
            assert srv.num_requests == 4 and srv.num_connections == 3
        finally:
            await pool.aclose()
            await srv.stop()

    run(go())


def test_timeouts_refusals_and_abort() -> None:
    async def go() -> None:
        srv = Server(lambda n: [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "until-closed"] if n == 1 else None)
        pool = HTTP1Pool(await srv.start())
        try:
            r = await pool.post("/x", b"{}", 0.2)
            with pytest.raises(TimeoutError):
                await r.next_chunk()
            r.close()  # unfinished: the connection is closed, which the server sees as the client leaving
            await asyncio.wait_for(srv.closed_by_client.wait(), 2)
            with pytest.raises(ConnectionClosed):  # a fresh connection the server hangs up on
                await pool.post("/x", b"{}", 2)
        finally:
            await pool.aclose()
            await srv.stop()
        with pytest.raises(OSError):
            await HTTP1Pool("http://127.0.0.1:9", connect_timeout_s=1).post("/x", b"{}", 1)

    run(go())
