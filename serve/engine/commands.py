"""Messages between an engine frontend (asyncio side) and the loop that owns the engine, whether that loop
runs on a thread (:class:`serve.engine.async_engine.ThreadedEngine`) or in a worker process
(:class:`serve.engine.worker.ProcessEngine`). All are plain picklable dataclasses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorafleet import errors
from serve.engine.engine import EngineStats, LLMEngine, RequestOutput
from serve.engine.sampling_params import SamplingParams


@dataclass(frozen=True, slots=True)
class AddRequest:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    adapter: str | None


@dataclass(frozen=True, slots=True)
class Abort:
    request_id: str


@dataclass(frozen=True, slots=True)
class LoadAdapter:
    name: str
    path: str


@dataclass(frozen=True, slots=True)
class UnloadAdapter:
    name: str


@dataclass(frozen=True, slots=True)
class Shutdown:
    pass


@dataclass(frozen=True, slots=True)
class Call:
    """A command whose result the frontend awaits, matched by ``call_id``."""

    call_id: int
    command: AddRequest | LoadAdapter | UnloadAdapter


@dataclass(frozen=True, slots=True)
class CallResult:
    call_id: int
    value: Any = None
    error: tuple[str, str] | None = None  #: (error class name, message), rebuilt by :func:`rebuild_error`


@dataclass(frozen=True, slots=True)
class StepOutputs:
    outputs: list[RequestOutput]
    stats: EngineStats


@dataclass(frozen=True, slots=True)
class StepFailed:
    """The step raised; these requests were aborted and get the error."""

    request_ids: list[str]
    error: tuple[str, str]


def apply_command(engine: LLMEngine, command: AddRequest | Abort | LoadAdapter | UnloadAdapter) -> Any:
    """Run one command against the engine (on the thread or process that owns it)."""
    match command:
        case AddRequest(rid, prompt, params, adapter):
            return engine.add_request(rid, prompt, params, adapter)
        case Abort(rid):
            return engine.abort(rid)
        case LoadAdapter(name, path):
            return engine.load_adapter(name, Path(path))
        case UnloadAdapter(name):
            return engine.unload_adapter(name)
    raise TypeError(f"unknown command {command!r}")


def describe_error(e: BaseException) -> tuple[str, str]:
    return (type(e).__name__, str(e))


def rebuild_error(desc: tuple[str, str]) -> Exception:
    """Turn a described error back into the lorafleet error class it was (else ``RuntimeError``)."""
    name, message = desc
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, errors.LorafleetError):
        return cls(message)
    return RuntimeError(f"{name}: {message}")
