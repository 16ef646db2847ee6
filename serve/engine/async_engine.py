"""Drive :class:`LLMEngine` from a background thread and expose asyncio streams per request.

The engine thread owns the engine: requests, aborts and adapter changes are sent to it as commands and run
between steps, so the engine itself needs no locks. torch releases the GIL inside kernels, so the event
loop keeps serving HTTP while a step runs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from serve.engine.engine import EngineStats, LLMEngine, RequestOutput
from serve.engine.sampling_params import SamplingParams

log = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    """The engine thread stopped; no more requests can be served."""


class AsyncEngine:
    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self._commands: deque[tuple[Callable[[], Any], concurrent.futures.Future]] = deque()
        self._wake = threading.Event()
        self._streams: dict[str, asyncio.Queue] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._stats = engine.stats()
        self.on_step: Callable[[list[RequestOutput]], None] | None = None  #: called in the loop thread per step

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="lorafleet-engine", daemon=True)
        self._thread.start()

    async def shutdown(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30)

    @property
    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- calls from the event loop ---------------------------------------------------------------------
    async def call(self, fn: Callable[[LLMEngine], Any]) -> Any:
        """Run ``fn(engine)`` on the engine thread between steps and return its result (or raise its error)."""
        if not self.is_alive:
            raise EngineDeadError("engine thread is not running")
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._commands.append((lambda: fn(self.engine), fut))
        self._wake.set()
        return await asyncio.wrap_future(fut)

    async def generate(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, adapter: str | None = None
    ) -> AsyncIterator[RequestOutput]:
        """Stream a request's outputs. Closing the iterator early (client gone) aborts the request."""
        self.engine.check_request(prompt_token_ids, adapter)
        queue: asyncio.Queue = asyncio.Queue()
        self._streams[request_id] = queue
        finished = False
        try:
            await self.call(lambda e: e.add_request(request_id, prompt_token_ids, params, adapter))
            while True:
                out = await queue.get()
                if isinstance(out, BaseException):
                    raise out
                yield out
                if out.finished:
                    finished = True
                    return
        finally:
            self._streams.pop(request_id, None)
            if not finished and self.is_alive:
                self._commands.append((lambda: self.engine.abort(request_id), concurrent.futures.Future()))
                self._wake.set()

    async def load_adapter(self, name: str, path: Path) -> None:
        await self.call(lambda e: e.load_adapter(name, path))

    async def unload_adapter(self, name: str) -> bool:
        return await self.call(lambda e: e.unload_adapter(name))

    def stats(self) -> EngineStats:
        """The stats snapshot taken after the latest step (cheap; never blocks on the engine)."""
        return self._stats

    # -- the engine thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        engine = self.engine
        while not self._stopping:
            self._run_commands()
            if not engine.has_unfinished:
                self._stats = engine.stats()
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            try:
                outputs = engine.step()
            except Exception as e:  # keep serving: fail the running requests, not the server
                log.exception("engine step failed")
                self._fail_all(e)
                continue
            self._stats = engine.stats()
            if outputs:
                self._loop.call_soon_threadsafe(self._dispatch, outputs)

    def _run_commands(self) -> None:
        while self._commands:
            fn, fut = self._commands.popleft()
            try:
                fut.set_result(fn())
            except Exception as e:
                fut.set_exception(e)

    def _fail_all(self, error: Exception) -> None:
        ids = self.engine.request_ids
        for rid in ids:
            self.engine.abort(rid)
        self._loop.call_soon_threadsafe(self._dispatch_error, ids, error)

    def _dispatch(self, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            queue = self._streams.get(out.request_id)
            if queue is not None:
                queue.put_nowait(out)
        if self.on_step is not None:
            self.on_step(outputs)

    def _dispatch_error(self, ids: list[str], error: Exception) -> None:
        for rid in ids:
            queue = self._streams.get(rid)
            if queue is not None:
                queue.put_nowait(error)
