"""Running a request's prompts through the engine frontend and observing the request-level metrics.

Each prompt is one engine request with ``params.n`` choices. :class:`PromptRun` accumulates its outputs
(per choice: text, tokens, logprobs, finish reason); the latency histograms are observed once per prompt
(TTFT at its first output, E2E when its last choice finishes).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from serve.engine.async_engine import AsyncEngine
from serve.engine.engine import RequestOutput
from serve.engine.logprobs import TokenLogprob
from serve.engine.sampling_params import SamplingParams
from serve.server.metrics import ServerMetrics
from serve.server.translate import PromptUsage


@dataclass(slots=True)
class ChoiceState:
    """One choice's output so far."""

    text: str = ""
    finish_reason: str | None = None
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    stop_logprob: TokenLogprob | None = None  #: of the EOS / stop token id that ended it, if logprobs were asked
    num_output_tokens: int = 0


@dataclass(slots=True)
class PromptRun:
    """One prompt's engine request: its choices and token counts."""

    choices: list[ChoiceState]
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    #: raw logprobs of the prompt's tokens (None for the first), when the request asked for them
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None

    @classmethod
    def empty(cls, n: int) -> "PromptRun":
        return cls([ChoiceState() for _ in range(n)])

    def add(self, out: RequestOutput) -> ChoiceState:
        c = self.choices[out.index]
        c.text += out.text
        c.token_ids.extend(out.token_ids)
        if out.logprobs:
            c.logprobs.extend(out.logprobs)
        if out.stop_logprob is not None:
            c.stop_logprob = out.stop_logprob
        c.num_output_tokens = out.num_output_tokens
        self.num_prompt_tokens, self.num_cached_tokens = out.num_prompt_tokens, out.num_cached_tokens
        if out.prompt_logprobs is not None:
            self.prompt_logprobs = out.prompt_logprobs
        if out.finished:
            c.finish_reason = out.finish_reason
        return c

    @property
    def usage(self) -> PromptUsage:
        return PromptUsage(self.num_prompt_tokens, self.num_cached_tokens, sum(c.num_output_tokens for c in self.choices))


async def run_prompt(engine: AsyncEngine, metrics: ServerMetrics, rid: str, prompt: list[int], params: SamplingParams,
                     adapter: str | None, run: PromptRun) -> AsyncIterator[RequestOutput]:
    """Run one prompt, accumulating into ``run`` and observing latency metrics; yield each output."""
    start = time.monotonic()
    last = None
    num_unfinished = params.n
    async for out in engine.generate(rid, prompt, params, adapter):
        now = time.monotonic()
        if last is None:
            metrics.labels(metrics.ttft).observe(now - start)
        else:
            metrics.labels(metrics.itl).observe(now - last)
        last = now
        run.add(out)
        if out.finished:
            num_unfinished -= 1
            if not num_unfinished:
                _observe_finish(metrics, out, run, start, now)
        yield out


def _observe_finish(metrics: ServerMetrics, out: RequestOutput, run: PromptRun, start: float, now: float) -> None:
    m = metrics
    m.labels(m.e2e).observe(now - start)
    t = out.times
    if t is not None and t.first_scheduled is not None:
        m.labels(m.queue).observe(max(0.0, t.first_scheduled - t.arrival))
    if t is not None and out.num_output_tokens > 1 and t.first_token is not None and t.last_token is not None:
        m.labels(m.tpot).observe((t.last_token - t.first_token) / (out.num_output_tokens - 1))
    m.labels(m.prompt_tokens).inc(out.num_prompt_tokens)
    m.labels(m.generation_tokens).inc(run.usage.num_output_tokens)
    m.success.labels(model_name=m.model_name, finished_reason=out.finish_reason or "abort").inc()


async def run_all(engine, metrics, rid, prompts, params, adapter) -> list[PromptRun]:
    """Run every prompt to the end (concurrently); their runs in prompt order."""
    async def run(i: int, prompt: list[int]) -> PromptRun:
        state = PromptRun.empty(params.n)
        async for _ in run_prompt(engine, metrics, f"{rid}-{i}", prompt, params, adapter, state):
            pass
        return state

    return list(await asyncio.gather(*(run(i, p) for i, p in enumerate(prompts))))


async def merged(engine, metrics, rid, prompts, params, adapter, runs: list[PromptRun]):
    """``(prompt index, output or exception)`` from every prompt as they come. One prompt (the usual case) is
    iterated directly; several run as tasks feeding one queue, cancelled (so aborted) when the caller stops."""
    if len(prompts) == 1:
        try:
            async for out in run_prompt(engine, metrics, f"{rid}-0", prompts[0], params, adapter, runs[0]):
                yield 0, out
        except Exception as e:  # surfaced as an SSE error event
            yield 0, e
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, prompt: list[int]) -> None:
        try:
            async for out in run_prompt(engine, metrics, f"{rid}-{i}", prompt, params, adapter, runs[i]):
                await queue.put((i, out))
        except Exception as e:
            await queue.put((i, e))
        finally:
            await queue.put((i, None))

    tasks = [asyncio.create_task(pump(i, p)) for i, p in enumerate(prompts)]
    try:
        remaining = len(prompts)
        while remaining:
            i, item = await queue.get()
            if item is None:
                remaining -= 1
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()
