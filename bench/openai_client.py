"""A small async load generator for OpenAI-compatible streaming completions.

Each request streams; the client records when the first and last content event arrive and takes the
output token count from ``stream_options.include_usage``. TPOT = (last − first) / (tokens − 1).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass

import httpx


@dataclass(frozen=True, slots=True)
class StreamRequest:
    model: str
    prompt: str
    max_tokens: int
    ignore_eos: bool = True


@dataclass(frozen=True, slots=True)
class StreamResult:
    ttft_s: float
    e2e_s: float
    output_tokens: int
    first_to_last_s: float
    prompt_tokens: int | None = None  #: from the usage event, when the server sends one

    @property
    def tpot_s(self) -> float:
        return self.first_to_last_s / max(self.output_tokens - 1, 1)


@dataclass(frozen=True, slots=True)
class LoadResult:
    results: tuple[StreamResult, ...]
    wall_s: float

    @property
    def throughput_tok_s(self) -> float:
        return sum(r.output_tokens for r in self.results) / self.wall_s

    def ttft_ms(self, q: float) -> float:
        return 1000 * quantile([r.ttft_s for r in self.results], q)


class StreamError(RuntimeError):
    """The server answered with an error status or sent an error event inside the stream."""


class StreamTimer:
    """Times one SSE stream of /v1/completions or /v1/chat/completions, fed line by line with timestamps.

    The first and last events carrying text (``text`` or ``delta.content``) bound TTFT and TPOT; token counts
    come from the usage event (``stream_options.include_usage``), else the number of text events.
    """

    def __init__(self, start: float) -> None:
        self.start = start
        self.first: float | None = None
        self.last: float | None = None
        self.text_events = 0
        self.usage: dict | None = None

    def feed(self, line: str, now: float) -> None:
        """Take one line of the stream received at ``now``; raises :class:`StreamError` on an error event."""
        if not line.startswith("data: ") or line == "data: [DONE]":
            return
        event = json.loads(line[6:])
        if "error" in event:
            raise StreamError(f"stream error {event['error']}")
        choice = (event.get("choices") or [{}])[0]
        if choice.get("text") or (choice.get("delta") or {}).get("content"):
            self.first = self.first or now
            self.last = now
            self.text_events += 1
        if event.get("usage"):
            self.usage = event["usage"]

    def result(self, end: float) -> StreamResult:
        first = self.first or end
        tokens = self.usage["completion_tokens"] if self.usage else self.text_events
        prompt = self.usage.get("prompt_tokens") if self.usage else None
        return StreamResult(first - self.start, end - self.start, tokens, (self.last or end) - first, prompt)


def quantile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def median(values: list[float]) -> float:
    return statistics.median(values)


async def stream_one(client: httpx.AsyncClient, base_url: str, req: StreamRequest) -> StreamResult:
    body = {"model": req.model, "prompt": req.prompt, "max_tokens": req.max_tokens, "temperature": 0,
            "ignore_eos": req.ignore_eos, "stream": True, "stream_options": {"include_usage": True}}
    timer = StreamTimer(time.perf_counter())
    async with client.stream("POST", base_url + "/v1/completions", json=body) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"{base_url}: HTTP {resp.status_code}: {(await resp.aread())[:300]!r}")
        try:
            async for line in resp.aiter_lines():
                timer.feed(line, time.perf_counter())
        except StreamError as e:
            raise RuntimeError(f"{base_url}: {e}") from None
    return timer.result(time.perf_counter())


async def _run(base_url: str, requests: list[StreamRequest]) -> LoadResult:
    limits = httpx.Limits(max_connections=len(requests) + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
        start = time.perf_counter()
        results = await asyncio.gather(*(stream_one(client, base_url, r) for r in requests))
        return LoadResult(tuple(results), time.perf_counter() - start)


def run_concurrent(base_url: str, requests: list[StreamRequest]) -> LoadResult:
    """Send all ``requests`` at once and wait for every stream to finish."""
    return asyncio.run(_run(base_url, requests))
