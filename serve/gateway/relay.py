"""Relaying a replica's answer to the client while measuring it: SSE passed through as it arrives (every
event is written as soon as the read that completed it returns: events that arrived together go out in one
write, none waits for another), token timing, usage, and a clean SSE error event when the replica fails
midway. Responses are written with raw ASGI ``send`` calls; nothing is buffered."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lorafleet.errors import BackendError
from serve.gateway.auth import KeySpec
from serve.gateway.errors import sse_error_event
from serve.gateway.metrics import RequestLabels
from serve.gateway.state import GatewayState

DONE = b"[DONE]"
_PROMPT_TOKENS = re.compile(rb'"prompt_tokens":\s*(\d+)')
_COMPLETION_TOKENS = re.compile(rb'"completion_tokens":\s*(\d+)')
_NO_CHOICES = b'"choices":[]'
_TOKEN = re.compile(rb'"(?:content|text|delta)":"[^"]')  # a chunk with generated text (a Responses delta too)
Send = Callable[[dict], Awaitable[None]]
SSE_START = {"type": "http.response.start", "status": 200,
             "headers": [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                         (b"x-accel-buffering", b"no")]}


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
        if isinstance(usage, Mapping):  # (input_tokens/output_tokens: the Responses API's names)
            self.prompt_tokens = int(usage.get("prompt_tokens") or usage.get("input_tokens") or 0)
            self.completion_tokens = int(usage.get("completion_tokens") or usage.get("output_tokens") or 0)

    def take_usage_chunk(self, payload: bytes) -> bool:
        """Read the usage of a chunk that has one; return whether it also has choices. The usual compact
        shape is read with a regex, anything else parsed."""
        start = payload.find(b'"usage":{')
        prompt, completion = _PROMPT_TOKENS.search(payload, start), _COMPLETION_TOKENS.search(payload, start)
        if prompt is not None and completion is not None:
            self.prompt_tokens, self.completion_tokens = int(prompt[1]), int(completion[1])
            return _NO_CHOICES not in payload
        chunk = json.loads(payload)
        self.take_usage(chunk.get("usage") or (chunk.get("response") or {}).get("usage"))
        return bool(chunk.get("choices"))

    def on_token_events(self, now: float, count: int) -> None:
        """``count`` token events arrived together at ``now``."""
        if count <= 0:
            return
        if self.first_token_s is None:
            self.first_token_s = now
            gaps = [0.0] * (count - 1)
        else:
            gaps = [now - self.last_token_s] + [0.0] * (count - 1)
        self.itl_s.extend(gaps)
        self.num_token_events += count
        self.last_token_s = now


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


class InFlight:
    """One admitted request's hold on the gateway: its admission slot, and once routed its replica's
    in-flight count and adapter pin. :meth:`finish` gives them back and records the metrics, exactly once;
    it runs before the client gets the response's last byte, so a client that sends its next request at
    once finds the counters already updated."""

    __slots__ = ("state", "record", "release_replica", "is_finished")

    def __init__(self, state: GatewayState, record: RequestRecord) -> None:
        self.state, self.record = state, record
        self.release_replica: Callable[[], None] | None = None
        self.is_finished = False

    def finish(self) -> None:
        if self.is_finished:
            return
        self.is_finished = True
        try:
            if self.release_replica is not None:
                self.release_replica()
        finally:
            self.state.admission.release()
            finish_request(self.state, self.record)


def frames(record: RequestRecord, batch: list[bytes], include_usage: bool, send_done: bool = True) -> tuple[bytes, bool]:
    """The SSE bytes for the client from one batch of payloads, and whether the batch ended with [DONE].

    Token events are timed (those of one batch arrived together), the usage chunk is read (and dropped if the
    client did not ask for it). A batch of plain token chunks is handled with one regex pass and one join."""
    is_done = batch[-1] == DONE
    chunks = batch[:-1] if is_done else batch
    if any(b'"usage":{' in p for p in chunks):
        chunks = [p for p in chunks if not (b'"usage":{' in p and not record.take_usage_chunk(p) and not include_usage)]
    if chunks:
        record.on_token_events(time.monotonic(), sum(1 for p in chunks if _TOKEN.search(p)))
    parts = [*chunks, DONE] if is_done and send_done else chunks
    return (b"data: " + b"\n\ndata: ".join(parts) + b"\n\n") if parts else b"", is_done


async def relay_stream(send: Send, flight: InFlight, first: list[bytes], batches: AsyncIterator[list[bytes]],
                       include_usage: bool, deadline_s: float, send_done: bool = True) -> None:
    """Write the SSE response: ``first`` then the rest of ``batches``. Always ends the response: with [DONE],
    or with an error event if the replica fails or the request's deadline passes. Cancellation (the client
    went away) propagates. The upstream iterator is closed on every path (which aborts an unfinished
    request); after [DONE] it is first read to its end so its connection can be reused. ``send_done`` false:
    [DONE] is only the backend's end marker (a Responses API stream ends with its last event)."""
    record = flight.record
    await send(SSE_START)
    try:
        out, is_done = frames(record, first, include_usage, send_done)
        try:
            if not is_done:  # (a replica that answered at once needs no timer)
                async with asyncio.timeout(max(0.0, deadline_s - time.monotonic())):
                    while not is_done:
                        if out:
                            await send({"type": "http.response.body", "body": out, "more_body": True})
                        out, is_done = frames(record, await anext(batches), include_usage, send_done)
        except TimeoutError:
            record.status, out = 504, sse_error_event(504, "request timed out in the gateway")
        except BackendError as e:
            record.status, out = 502, sse_error_event(502, f"the stream from backend '{record.backend}' broke: {e}")
        except StopAsyncIteration:  # backends raise rather than end without [DONE]; be safe anyway
            record.status, out = 502, sse_error_event(502, f"the stream from backend '{record.backend}' ended early")
        flight.finish()
        await send({"type": "http.response.body", "body": out, "more_body": False})
        if is_done:  # (bounded by the upstream's idle timeout; nothing is held any more)
            async for _ in batches:
                pass
    except BackendError:
        pass  # the replica did not end its response cleanly after [DONE]: closing it below is all to do
    finally:
        await batches.aclose()
