"""Asyncio frontends of the engine: per-request output streams over an engine loop that runs elsewhere.

:class:`AsyncEngine` holds what both transports share (streams, calls, validation, stats);
:class:`ThreadedEngine` runs the loop on a thread in this process (tests, embedding in other apps), and
:class:`serve.engine.worker.ProcessEngine` runs it in a worker process, which is what ``lorafleet serve``
uses: the engine's ~1,500 torch calls per step each release and re-take the GIL, so an engine thread
competes with the HTTP event loop for it (measured: single-stream TPOT 15 ms engine-only vs 27 ms behind
the threaded server under load).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from lorafleet.config import EngineConfig
from lorafleet.errors import BackendError, NotFoundError
from serve.engine.commands import (
    Abort, AddRequest, Call, CallResult, LoadAdapter, StepFailed, StepOutputs, UnloadAdapter, apply_command,
    describe_error, rebuild_error,
)
from serve.engine.engine import EngineStats, LLMEngine, RequestOutput, check_prompt
from serve.engine.model_runner import EngineLayout
from serve.engine.sampling_params import SamplingParams

log = logging.getLogger(__name__)


class AsyncEngine:
    """Transport-independent frontend. Subclasses implement :meth:`_send`, :meth:`start`, :meth:`shutdown`
    and :attr:`is_alive`, and feed engine messages to :meth:`_on_message` on the event loop."""

    def __init__(self, cfg: EngineConfig, checkpoint: Path, layout: EngineLayout, tokenizer: Any, stats: EngineStats):
        self.engine_cfg, self.checkpoint, self.layout, self.tokenizer = cfg, checkpoint, layout, tokenizer
        self.adapter_paths: dict[str, Path] = {}  #: adapters registered in the engine, by name
        self._stats = stats
        self._streams: dict[str, asyncio.Queue] = {}
        self._calls: dict[int, asyncio.Future] = {}
        self._call_ids = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- transport hooks -----------------------------------------------------------------------------------
    def _send(self, message: Any) -> None:
        raise NotImplementedError

    @property
    def is_alive(self) -> bool:
        raise NotImplementedError

    # -- API -------------------------------------------------------------------------------------------------
    def check_request(self, prompt_token_ids: list[int], adapter: str | None) -> None:
        check_prompt(prompt_token_ids, self.layout)
        if adapter is not None and adapter not in self.adapter_paths:
            raise NotFoundError(f"adapter '{adapter}' is not loaded")

    def stats(self) -> EngineStats:
        """Stats as of the latest step (cheap; never waits for the engine)."""
        return self._stats

    async def call(self, command: AddRequest | LoadAdapter | UnloadAdapter) -> Any:
        """Send a command and await its result (or its error)."""
        if not self.is_alive:
            raise BackendError("engine is not running", retryable=True)
        call_id = next(self._call_ids)
        fut = asyncio.get_running_loop().create_future()
        self._calls[call_id] = fut
        self._send(Call(call_id, command))
        return await fut

    async def generate(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, adapter: str | None = None
    ) -> AsyncIterator[RequestOutput]:
        """Stream a request's outputs (of all ``params.n`` choices, told apart by ``out.index``) until every
        choice finished. Closing the iterator early (client gone) aborts the request."""
        self.check_request(prompt_token_ids, adapter)
        queue: asyncio.Queue = asyncio.Queue()
        self._streams[request_id] = queue
        finished = False
        num_unfinished = params.n
        try:
            await self.call(AddRequest(request_id, list(prompt_token_ids), params, adapter))
            while True:
                out = await queue.get()
                if isinstance(out, BaseException):
                    raise out
                yield out
                num_unfinished -= out.finished
                if not num_unfinished:
                    finished = True
                    return
        finally:
            self._streams.pop(request_id, None)
            if not finished and self.is_alive:
                self._send(Abort(request_id))

    async def load_adapter(self, name: str, path: Path) -> None:
        await self.call(LoadAdapter(name, str(path)))
        self.adapter_paths[name] = Path(path)

    async def unload_adapter(self, name: str) -> bool:
        removed = await self.call(UnloadAdapter(name))
        if removed:
            self.adapter_paths.pop(name, None)
        return removed

    # -- messages from the engine loop (on the event loop) ----------------------------------------------------
    def _on_message(self, msg: StepOutputs | CallResult | StepFailed) -> None:
        if isinstance(msg, StepOutputs):
            self._stats = msg.stats
            for out in msg.outputs:
                queue = self._streams.get(out.request_id)
                if queue is not None:
                    queue.put_nowait(out)
        elif isinstance(msg, CallResult):
            fut = self._calls.pop(msg.call_id, None)
            if fut is not None and not fut.done():
                if msg.error is None:
                    fut.set_result(msg.value)
                else:
                    fut.set_exception(rebuild_error(msg.error))
        elif isinstance(msg, StepFailed):
            self._fail(msg.request_ids, rebuild_error(msg.error))

    def _fail(self, request_ids: list[str], error: Exception) -> None:
        for rid in request_ids:
            queue = self._streams.get(rid)
            if queue is not None:
                queue.put_nowait(error)

    def _fail_everything(self, error: Exception) -> None:
        """The engine loop is gone: fail every stream and pending call."""
        self._fail(list(self._streams), error)
        for fut in self._calls.values():
            if not fut.done():
                fut.set_exception(error)
        self._calls.clear()


def run_engine_step(engine: LLMEngine) -> StepOutputs | StepFailed | None:
    """One step of an engine loop; a failing step aborts the running requests instead of killing the loop."""
    try:
        outputs = engine.step()
    except Exception as e:
        log.exception("engine step failed")
        ids = engine.request_ids
        for rid in ids:
            engine.abort(rid)
        return StepFailed(ids, describe_error(e))
    return StepOutputs(outputs, engine.stats()) if outputs else None


def run_call(engine: LLMEngine, call: Call) -> CallResult:
    try:
        return CallResult(call.call_id, apply_command(engine, call.command))
    except Exception as e:
        return CallResult(call.call_id, error=describe_error(e))


class ThreadedEngine(AsyncEngine):
    """The engine loop on a background thread of this process."""

    def __init__(self, engine: LLMEngine) -> None:
        super().__init__(engine.cfg, engine.checkpoint, engine.layout, engine.tokenizer, engine.stats())
        self.engine = engine
        self.adapter_paths = {name: a.path for name, a in engine.adapters.items()}
        self._inbox: deque = deque()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopping = False

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

    def _send(self, message: Any) -> None:
        self._inbox.append(message)
        self._wake.set()

    def _run(self) -> None:
        engine = self.engine
        while not self._stopping:
            while self._inbox:
                msg = self._inbox.popleft()
                if isinstance(msg, Call):
                    self._loop.call_soon_threadsafe(self._on_message, run_call(engine, msg))
                else:
                    apply_command(engine, msg)
                    # An abort yields no step output; publish fresh stats (see worker._worker_main).
                    self._loop.call_soon_threadsafe(self._on_message, StepOutputs([], engine.stats()))
            if not engine.has_unfinished:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            result = run_engine_step(engine)
            if result is not None:
                self._loop.call_soon_threadsafe(self._on_message, result)
