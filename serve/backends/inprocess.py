"""Our engine inside the gateway process: ``lorafleet serve``'s own app (serve/server) around an
:class:`AsyncEngine`, reached by calling the ASGI app directly instead of over a socket.

Reusing the server app keeps every protocol detail identical to a ``lorafleet serve`` replica (validation,
chat template, streaming, usage, adapter endpoints, /v1/models, /metrics), so the embedded backend's code is
the same for both. The engine's step loop runs either on a thread of the gateway process
(:class:`ThreadedEngine`; no second process, but the engine's torch calls share the GIL with the gateway's
event loop) or in a worker process (:class:`ProcessEngine`, what ``lorafleet serve`` uses).

:class:`InProcessServer` is an ASGI app (503 until started), a ``post()`` connection for the hot path with
the interface of :class:`serve.backends.http1.HTTP1Pool`, and the owner of the app's lifespan.
"""

from __future__ import annotations

import asyncio
from collections import deque

from lorafleet.errors import BackendError
from serve.backends.base import BackendSpec
from serve.backends.http1 import BodyReader, ConnectionClosed


class ASGIResponse(BodyReader):
    """The response of one in-process request, read like :class:`serve.backends.http1.HTTP1Response`."""

    def __init__(self, read_timeout_s: float) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: deque[bytes] = deque()
        self.is_complete = False
        self.error: BaseException | None = None
        self.task: asyncio.Task | None = None
        self.client_gone = asyncio.Event()
        self._changed = asyncio.Event()
        self._timeout_s = read_timeout_s

    # -- the app's side ------------------------------------------------------------------------------------
    async def send(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            self.status, self.headers = message["status"], list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            if message.get("body"):
                self.chunks.append(message["body"])
            if not message.get("more_body"):
                self.is_complete = True
        self._changed.set()

    def app_done(self, task: asyncio.Task) -> None:
        if not self.is_complete:
            error = None if task.cancelled() else task.exception()
            self.error = ConnectionClosed(f"in-process engine server failed: {error!r}" if error else
                                          "in-process engine server ended the response early")
        self._changed.set()

    # -- the reader's side ---------------------------------------------------------------------------------
    async def wait(self) -> None:
        self._changed.clear()
        async with asyncio.timeout(self._timeout_s):
            await self._changed.wait()

    async def next_chunk(self) -> bytes | None:
        while not self.chunks:
            if self.is_complete:
                return None
            if self.error is not None:
                raise self.error
            await self.wait()
        data = b"".join(self.chunks)
        self.chunks.clear()
        return data

    def close(self) -> None:
        """Abandon an unfinished response: the app sees the client disconnect (the engine aborts)."""
        if not self.is_complete:
            self.client_gone.set()


class InProcessServer:
    """``lorafleet serve``'s app around an engine in this process."""

    def __init__(self, spec: BackendSpec) -> None:
        self.spec = spec
        self.app = None
        self._lifespan: asyncio.Task | None = None
        self._lifespan_inbox: asyncio.Queue = asyncio.Queue()
        self._lifespan_events: asyncio.Queue = asyncio.Queue()

    # -- lifecycle -----------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the engine (off the event loop) and run the app's start-up (which starts the engine loop)."""
        from lorafleet.config import ServerConfig
        from serve.server.app import build_app

        engine = await asyncio.to_thread(self._load_engine)
        app = build_app(engine, ServerConfig(served_model_name=self.spec.upstream_model,
                                             allowed_lora_roots=self.spec.adapter_roots))
        self._lifespan = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                                                 self._lifespan_inbox.get, self._lifespan_events.put))
        await self._lifespan_inbox.put({"type": "lifespan.startup"})
        event = await self._lifespan_events.get()
        if event["type"] != "lifespan.startup.complete":
            raise BackendError(f"backend '{self.spec.name}': in-process engine failed to start: {event.get('message')}")
        self.app = app

    def _load_engine(self):
        cfg = self.spec.engine
        if self.spec.engine_loop == "process":
            from serve.engine.worker import ProcessEngine

            return ProcessEngine.launch(cfg)
        from serve.engine.async_engine import ThreadedEngine
        from serve.engine.engine import LLMEngine

        return ThreadedEngine(LLMEngine(cfg))

    async def aclose(self) -> None:
        """Shut the app down (the engine stops with it)."""
        if self._lifespan is None:
            return
        self.app, task, self._lifespan = None, self._lifespan, None
        await self._lifespan_inbox.put({"type": "lifespan.shutdown"})
        try:
            async with asyncio.timeout(60):
                await task
        except TimeoutError:
            task.cancel()

    # -- as an ASGI app (the httpx transport of the off-hot-path calls) --------------------------------------
    async def __call__(self, scope, receive, send) -> None:
        if self.app is None:
            await send({"type": "http.response.start", "status": 503, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"engine not started"})
            return
        await self.app(scope, receive, send)

    # -- the hot path ----------------------------------------------------------------------------------------
    async def post(self, path: str, body: bytes, read_timeout_s: float, headers: dict[str, str] | None = None) -> ASGIResponse:
        """Start ``POST path`` in the app and return once its response headers are in (like HTTP1Pool.post)."""
        if self.app is None:
            raise ConnectionClosed(f"backend '{self.spec.name}': the in-process engine is not running")
        response = ASGIResponse(read_timeout_s)
        raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        raw_headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
                 "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": raw_headers,
                 "client": ("127.0.0.1", 0), "server": ("in-process", 0)}
        sent = False

        async def receive() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await response.client_gone.wait()
            return {"type": "http.disconnect"}

        response.task = asyncio.create_task(self.app(scope, receive, response.send))
        response.task.add_done_callback(response.app_done)
        try:
            while not response.status:
                if response.error is not None:
                    raise response.error
                await response.wait()
        except BaseException:
            response.close()
            raise
        return response
