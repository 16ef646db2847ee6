"""Relaying a replica's answer to the client while measuring it: SSE passed through event by event (each
event is written as soon as it arrives, nothing is buffered), token timing, usage, and a clean SSE error
event when the replica fails midway."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
from starlette.responses import StreamingResponse

from lorafleet.errors import BackendError
from serve.gateway.auth import KeySpec
from serve.gateway.errors import sse_error_event
from serve.gateway.metrics import RequestLabels
from serve.gateway.state import GatewayState

DONE = b"[DONE]"


@dataclass(slots=True)
class RequestRecord:
    """What the gateway measures about one request (mutable while it runs)."""

    arrival_s: float  #: time.monotonic() at arrival
    base_model: str
    adapter: str | None
    key: KeySpec | None
    backend: str = ""  #: replica that served (the last one tried)
    status: int = 200
    queue_s: float | None = None  #: arrival until sent upstream
    first_token_s: float | None = None
    last_token_s: float | None = None
    num_token_events: int = 0
    itl_s: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int | None = None  #: from the engine's usage; None until known

    def take_usage(self, usage: Any) -> None:
        if isinstance(usage, Mapping):
            self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.completion_tokens = int(usage.get("completion_tokens") or 0)

    def on_token_event(self, now: float) -> None:
        if self.first_token_s is None:
            self.first_token_s = now
        else:
            self.itl_s.append(now - self.last_token_s)
        self.last_token_s = now
        self.num_token_events += 1


def finish_request(state: GatewayState, record: RequestRecord) -> None:
    """Export the record's metrics and charge its tokens to the caller's key."""
    now = time.monotonic()
    completion = record.completion_tokens if record.completion_tokens is not None else record.num_token_events
    ttft = tpot = None
    if record.first_token_s is not None:
        ttft = record.first_token_s - record.arrival_s
        if completion > 1 and record.last_token_s is not None:
            tpot = (record.last_token_s - record.first_token_s) / (completion - 1)
    labels = RequestLabels(record.base_model, record.adapter or "", record.backend, str(record.status))
    state.metrics.observe_request(labels, e2e_s=now - record.arrival_s, queue_s=record.queue_s, ttft_s=ttft,
                                  tpot_s=tpot, prompt_tokens=record.prompt_tokens, completion_tokens=completion,
                                  itl_s=record.itl_s)
    if record.key is not None:
        state.limiter.charge_tokens(record.key, record.prompt_tokens + completion)


def is_token_event(payload: bytes) -> bool:
    """Whether a chunk carries generated text, judged from bytes (engines serialise compactly) so that no
    chunk has to be parsed: a non-empty ``"text":"...`` or ``"content":"...``."""
    for marker in (b'"content":"', b'"text":"'):
        i = payload.find(marker)
        if i != -1 and payload[i + len(marker):i + len(marker) + 1] != b'"':
            return True
    return False


def frame(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


class StreamCloser:
    """Ends a relayed stream exactly once, however it ends: closes the upstream iterator (which aborts the
    engine's request if it is still running), gives back the replica slot and admission slot, and records
    the request's metrics. Called by the relay generator's ``finally`` and, in case the generator never
    started (client gone before the first byte), by :class:`RelayResponse`."""

    def __init__(self, state: GatewayState, record: RequestRecord, events: AsyncIterator[bytes],
                 release: Callable[[], None]) -> None:
        self.state, self.record, self.events, self.release = state, record, events, release
        self.is_closed = False

    async def close(self) -> None:
        if self.is_closed:
            return
        self.is_closed = True
        try:
            await self.events.aclose()
        finally:
            self.release()
            finish_request(self.state, self.record)


class RelayResponse(StreamingResponse):
    """A StreamingResponse that always runs its closer, even if its body iterator was never started."""

    def __init__(self, content: AsyncIterator[bytes], closer: StreamCloser, headers: Mapping[str, str]) -> None:
        super().__init__(content, media_type="text/event-stream", headers=dict(headers))
        self.closer = closer

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if not self.closer.is_closed:
                if self.closer.record.status == 200:
                    self.closer.record.status = 499
                with anyio.CancelScope(shield=True):
                    await self.closer.close()


async def relay_stream(record: RequestRecord, first: bytes, events: AsyncIterator[bytes], include_usage: bool,
                       deadline_s: float, closer: StreamCloser) -> AsyncIterator[bytes]:
    """SSE bytes for the client: ``first`` then the rest of ``events``. Always ends: with [DONE], or with an
    error event if the replica fails or the request's deadline passes. Closing it (client gone) aborts the
    upstream request."""
    payload = first
    try:
        while True:
            if payload == DONE:
                yield frame(DONE)
                return
            if b'"usage":{' in payload:
                chunk = json.loads(payload)
                record.take_usage(chunk.get("usage"))
                if include_usage or chunk.get("choices"):
                    yield frame(payload)
            else:
                if is_token_event(payload):
                    record.on_token_event(time.monotonic())
                yield frame(payload)
            remaining = deadline_s - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            async with asyncio.timeout(remaining):
                payload = await anext(events)
    except TimeoutError:
        record.status = 504
        yield sse_error_event(504, "request timed out in the gateway")
    except BackendError as e:
        record.status = 502
        yield sse_error_event(502, f"the stream from backend '{record.backend}' broke: {e}")
    except StopAsyncIteration:  # backends raise rather than end without [DONE]; be safe anyway
        record.status = 502
        yield sse_error_event(502, f"the stream from backend '{record.backend}' ended early")
    except (asyncio.CancelledError, GeneratorExit):
        record.status = 499  # the client went away
        raise
    finally:
        with anyio.CancelScope(shield=True):
            await closer.close()
