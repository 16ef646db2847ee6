"""The gateway's front door: a bare ASGI callable that serves the two generation endpoints itself and hands
every other path (models, health, metrics, admin) to the FastAPI app.

Generation requests skip FastAPI's routing, request objects and ``StreamingResponse`` (whose per-response
task group and per-event overhead were a large part of the gateway's added latency): the body is read from
``receive``, the answer written with ``send``. A watcher waits for the client to disconnect and then cancels
the request's task, which closes the upstream connection so the engine aborts.
"""

from __future__ import annotations

import asyncio
import json
import logging

from lorafleet.errors import LorafleetError
from serve.backends.base import Endpoint
from serve.gateway.errors import GatewayError, error_body, status_of
from serve.gateway.proxy import handle_generation
from serve.gateway.requests import Incoming, RawHeaders
from serve.gateway.state import GatewayState

log = logging.getLogger("lorafleet.gateway")
GENERATION_PATHS = {e.value: e for e in Endpoint}
WATCH_AFTER_S = 0.02  #: see ClientWatch
#: most bytes of request headers (names and values): uvicorn's httptools parser sets no limit of its own, and
#: ``lorafleet serve`` refuses the same (431)
MAX_HEADER_BYTES = 64 * 1024


class ClientWatch:
    """Waits for ``http.disconnect`` while a request runs; if it comes before the response is complete,
    marks the client gone and cancels the request's task.

    The waiting task is started only once the request has run for ``WATCH_AFTER_S``: most requests to a
    fast replica are over by then, and a task per request is a noticeable part of the gateway's CPU time.
    A client that leaves earlier is noticed at that moment."""

    __slots__ = ("is_gone", "is_complete", "_task", "_target", "_receive", "_timer")

    def __init__(self, receive, target: asyncio.Task) -> None:
        self.is_gone = self.is_complete = False
        self._target, self._receive, self._task = target, receive, None
        self._timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, self._start)

    def _start(self) -> None:
        if not self.is_complete:
            self._task = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        if not self.is_complete:
            self.is_gone = True
            self._target.cancel()

    def stop(self) -> None:
        self._timer.cancel()
        if self._task is not None:
            self._task.cancel()


class ResponseSender:
    """``send`` for the request path, remembering whether the response started and finished."""

    __slots__ = ("_send", "_watch", "has_started")

    def __init__(self, send, watch: ClientWatch) -> None:
        self._send, self._watch, self.has_started = send, watch, False

    async def __call__(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            self.has_started = True
        elif not message.get("more_body"):
            self._watch.is_complete = True
        await self._send(message)


class GatewayApp:
    """ASGI app: generation requests served directly, everything else by ``api`` (the FastAPI app)."""

    def __init__(self, state: GatewayState, api) -> None:
        self.gateway, self.api = state, api

    @property
    def state(self):
        """The FastAPI app's state (``app.state.gateway`` is the :class:`GatewayState`)."""
        return self.api.state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and sum(len(k) + len(v) for k, v in scope["headers"]) > MAX_HEADER_BYTES:
            await send_error(send, GatewayError(431, f"request headers are larger than {MAX_HEADER_BYTES} bytes"))
            return
        endpoint = GENERATION_PATHS.get(scope.get("path")) if scope["type"] == "http" else None
        if endpoint is None or scope["method"] != "POST":
            await self.api(scope, receive, send)
            return
        body = await read_body(receive, self.gateway.cfg.limits.max_body_bytes)
        if body is None:
            return  # the client went away
        if isinstance(body, int):
            await send_error(send, GatewayError(413, f"request body of {body} bytes is larger than this gateway's "
                                                     f"limit of {self.gateway.cfg.limits.max_body_bytes} bytes"))
            return
        await self._generation(Incoming(RawHeaders(scope["headers"]), body), endpoint, receive, send)

    async def _generation(self, incoming: Incoming, endpoint: Endpoint, receive, send) -> None:
        task = asyncio.current_task()
        watch = ClientWatch(receive, task)
        sender = ResponseSender(send, watch)
        try:
            await handle_generation(self.gateway, incoming, endpoint, sender)
        except asyncio.CancelledError:
            if not watch.is_gone:
                raise
            task.uncancel()  # the client went away: nothing more to do
        except Exception as e:
            if sender.has_started:  # the relay ends its own streams; this is a bug, but the client must not hang
                log.exception("error after the response started")
                watch.is_complete = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            if not isinstance(e, LorafleetError):
                log.exception("unexpected error in the request path")
            await send_error(sender, e)
        finally:
            watch.stop()


async def read_body(receive, max_bytes: int) -> bytes | int | None:
    """The request body; its size in bytes (an int) if larger than ``max_bytes``, read to its end but not kept,
    so the client gets the 413 rather than a reset connection; None if the client disconnected."""
    parts, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size <= max_bytes:
            parts.append(chunk)
        if not message.get("more_body"):
            return b"".join(parts) if size <= max_bytes else size


async def send_error(send, exc: BaseException) -> None:
    """Answer ``exc`` as OpenAI error JSON with its HTTP status (and headers such as Retry-After)."""
    status = status_of(exc)
    body = json.dumps(error_body(status, str(exc) or type(exc).__name__, getattr(exc, "param", None))).encode()
    headers = [(b"content-type", b"application/json")]
    headers += [(k.lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in (getattr(exc, "headers", None) or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
