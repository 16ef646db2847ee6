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


def quantile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def median(values: list[float]) -> float:
    return statistics.median(values)


async def stream_one(client: httpx.AsyncClient, base_url: str, req: StreamRequest) -> StreamResult:
    body = {"model": req.model, "prompt": req.prompt, "max_tokens": req.max_tokens, "temperature": 0,
            "ignore_eos": req.ignore_eos, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first = last = None
    tokens = 0
    async with client.stream("POST", base_url + "/v1/completions", json=body) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"{base_url}: HTTP {resp.status_code}: {(await resp.aread())[:300]!r}")
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                raise RuntimeError(f"{base_url}: stream error {event['error']}")
            if event.get("choices") and event["choices"][0].get("text"):
                now = time.perf_counter()
                first = first or now
                last = now
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    end = time.perf_counter()
    first = first or end
    return StreamResult(first - start, end - start, tokens, (last or end) - first)


async def _run(base_url: str, requests: list[StreamRequest]) -> LoadResult:
    limits = httpx.Limits(max_connections=len(requests) + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
        start = time.perf_counter()
        results = await asyncio.gather(*(stream_one(client, base_url, r) for r in requests))
        return LoadResult(tuple(results), time.perf_counter() - start)


def run_concurrent(base_url: str, requests: list[StreamRequest]) -> LoadResult:
    """Send all ``requests`` at once and wait for every stream to finish."""
    return asyncio.run(_run(base_url, requests))
