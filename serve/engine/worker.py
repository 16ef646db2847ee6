"""The engine in a worker process, driven over a pipe (what ``lorafleet serve`` uses).

The worker owns the engine and loops: apply pending commands, run a step, send the step's outputs with a
stats snapshot. The frontend (:class:`ProcessEngine`, in the server process) reads the pipe from the event
loop with ``add_reader``, so no thread and no GIL are shared with the engine's torch calls.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from lorafleet.config import EngineConfig
from lorafleet.errors import BackendError, LorafleetError
from lorafleet.loading import load_tokenizer
from serve.engine.async_engine import AsyncEngine, run_call, run_engine_step
from serve.engine.commands import Call, Shutdown, StepOutputs, apply_command, describe_error, rebuild_error
from serve.engine.engine import EngineStats
from serve.engine.model_runner import EngineLayout
from serve.engine.pipe_frames import FramedPipe

log = logging.getLogger(__name__)

#: seconds to wait for the worker to load the model
START_TIMEOUT_S = 900.0


@dataclass(frozen=True, slots=True)
class WorkerReady:
    checkpoint: str
    layout: EngineLayout
    stats: EngineStats


@dataclass(frozen=True, slots=True)
class WorkerFailed:
    error: tuple[str, str]


def _worker_main(cfg: EngineConfig, conn: Connection) -> None:
    from serve.engine.engine import LLMEngine

    try:
        engine = LLMEngine(cfg)
    except Exception as e:
        conn.send(WorkerFailed(describe_error(e)))
        return
    conn.send(WorkerReady(str(engine.checkpoint), engine.layout, engine.stats()))
    try:
        while True:
            # Block while idle; between steps only drain what has arrived.
            while conn.poll(0 if engine.has_unfinished else None):
                msg = conn.recv()
                if isinstance(msg, Shutdown):
                    return
                if isinstance(msg, Call):
                    conn.send(run_call(engine, msg))
                else:
                    apply_command(engine, msg)
                    # An abort frees blocks and running slots but yields no step output: publish fresh stats,
                    # or the frontend keeps reporting the aborted request as running.
                    conn.send(StepOutputs([], engine.stats()))
            if engine.has_unfinished:
                result = run_engine_step(engine)
                if result is not None:
                    conn.send(result)
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        return  # the server went away


class ProcessEngine(AsyncEngine):
    """Frontend of an engine running in a spawned worker process."""

    def __init__(self, cfg: EngineConfig, process: mp.process.BaseProcess, conn: Connection, ready: WorkerReady) -> None:
        checkpoint = Path(ready.checkpoint)
        super().__init__(cfg, checkpoint, ready.layout, load_tokenizer(checkpoint), ready.stats)
        self._process, self._conn = process, conn
        self._pipe: FramedPipe | None = None  #: the pipe once the event loop reads it (see pipe_frames.py)
        self._dead = False

    @classmethod
    def launch(cls, cfg: EngineConfig) -> "ProcessEngine":
        """Start the worker and wait until the model is loaded; its load error is re-raised here."""
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        process = ctx.Process(target=_worker_main, args=(cfg, child), name="lorafleet-engine", daemon=True)
        process.start()
        child.close()
        if not parent.poll(START_TIMEOUT_S):
            process.kill()
            raise BackendError(f"engine worker did not start within {START_TIMEOUT_S:.0f} s")
        try:
            msg = parent.recv()
        except EOFError:
            raise BackendError(f"engine worker exited during start-up (exit code {process.exitcode})") from None
        if isinstance(msg, WorkerFailed):
            process.join(10)
            err = rebuild_error(msg.error)
            raise err if isinstance(err, LorafleetError) else BackendError(str(err))
        return cls(cfg, process, parent, msg)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._pipe = FramedPipe(self._conn, self._loop)
        self._loop.add_reader(self._conn.fileno(), self._on_readable)

    async def shutdown(self) -> None:
        if self._loop is not None and not self._dead:
            self._loop.remove_reader(self._conn.fileno())
        try:
            self._write(Shutdown())
        except (BrokenPipeError, OSError):
            pass
        await asyncio.to_thread(self._process.join, 30)
        if self._process.is_alive():
            self._process.kill()
        self._dead = True

    @property
    def is_alive(self) -> bool:
        return not self._dead and self._process.is_alive()

    def _write(self, message) -> None:
        (self._pipe.send if self._pipe is not None else self._conn.send)(message)

    def _send(self, message) -> None:
        try:
            self._write(message)
        except (BrokenPipeError, OSError):
            self._on_worker_exit()

    def _on_readable(self) -> None:
        try:
            for message in self._pipe.receive():
                self._on_message(message)
        except (EOFError, OSError):
            self._on_worker_exit()

    def _on_worker_exit(self) -> None:
        if self._dead:
            return
        self._dead = True
        if self._loop is not None:
            self._loop.remove_reader(self._conn.fileno())
            self._pipe.close()
        log.error("engine worker exited (code %s)", self._process.exitcode)
        self._fail_everything(BackendError("engine worker exited", retryable=True))
