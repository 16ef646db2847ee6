"""Shared core of the protocol fakes: a deterministic "engine" that streams made-up tokens, a simulated
prefix cache, fault injection, and the test-only ``/_fake/*`` control endpoints.

The fakes stand in for engines that cannot run here (SGLang, TensorRT-LLM need GPUs) and for a fast
vLLM-protocol replica in fault tests. Each protocol module (vllm_fake, sglang_fake, trtllm_fake) adds the
routes and JSON shapes of its engine, as written in that engine's documentation; this module only holds
what they share. Run one as a script: ``python tests/serve/backends/fakes/sglang_fake.py --port P --model M``.

Token ``i`` of a completion is ``" <model>#<i>"``, where ``<model>`` is the adapter or base model the request
resolved to, so tests can see which adapter served a request.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

PREFIX_BLOCK_CHARS = 64  # simulated KV block: 64 characters, about 16 tokens
CHARS_PER_TOKEN = 4


@dataclass
class FakeEngine:
    """State of one fake replica. Every field can be changed at runtime through ``POST /_fake/config``."""

    model: str
    token_delay_s: float = 0.0  #: pause before each streamed token after the first
    first_token_delay_s: float = 0.0  #: pause before the first token (simulated prefill)
    default_max_tokens: int = 16
    die_after_events: int | None = None  #: crash (os._exit) after streaming this many events of a request
    die_on_request: bool = False  #: crash as soon as a generation request arrives (before any byte)
    end_after_events: int | None = None  #: end a stream cleanly after this many events, without [DONE] (truncated SSE)
    fail_status: int | None = None  #: answer every generation request with this HTTP status
    num_waiting: int = 0  #: reported queue depth (a test can pretend the engine is queueing)
    prefix_cache_blocks: int = 256  #: capacity of the simulated prefix cache, in blocks
    num_running: int = 0
    prefix_queries_tokens: int = 0
    prefix_hits_tokens: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)  #: every generation request body received
    _cache: OrderedDict = field(default_factory=OrderedDict)

    # -- generation ------------------------------------------------------------------------------------------
    def prompt_text(self, body: dict[str, Any]) -> str:
        if "messages" in body:
            return "".join(f"<{m.get('role')}>{m.get('content')}\n" for m in body["messages"])
        prompt = body.get("prompt", "")
        if isinstance(prompt, list):
            return " ".join(p if isinstance(p, str) else " ".join(map(str, p)) if isinstance(p, list) else str(p)
                            for p in prompt)
        return str(prompt)

    def use_prefix_cache(self, text: str, salt: str) -> int:
        """Look up and insert the prompt's full blocks; return the cached prefix length in tokens."""
        parent, hit_blocks, still_hitting = salt, 0, True
        num_blocks = len(text) // PREFIX_BLOCK_CHARS
        for i in range(num_blocks):
            parent = hashlib.blake2b(f"{parent}|{text[i * PREFIX_BLOCK_CHARS:(i + 1) * PREFIX_BLOCK_CHARS]}".encode(),
                                     digest_size=8).hexdigest()
            if still_hitting and parent in self._cache:
                hit_blocks += 1
            else:
                still_hitting = False
            self._cache[parent] = True
            self._cache.move_to_end(parent)
        while len(self._cache) > self.prefix_cache_blocks:
            self._cache.popitem(last=False)
        tokens_per_block = PREFIX_BLOCK_CHARS // CHARS_PER_TOKEN
        self.prefix_queries_tokens += num_blocks * tokens_per_block
        self.prefix_hits_tokens += hit_blocks * tokens_per_block
        return hit_blocks * tokens_per_block

    def max_tokens(self, body: dict[str, Any]) -> int:
        n = body.get("max_completion_tokens") or body.get("max_tokens") or self.default_max_tokens
        return max(1, int(n))

    def check_fault(self) -> Response | None:
        if self.die_on_request:
            os._exit(17)
        if self.fail_status is not None:
            return JSONResponse({"error": {"message": "injected failure", "type": "fake", "code": self.fail_status}},
                                status_code=self.fail_status)
        return None

    async def tokens(self, served_as: str, n: int) -> AsyncIterator[str]:
        """Yield ``n`` tokens with the configured delays, counting the request as running meanwhile."""
        self.num_running += 1
        try:
            for i in range(n):
                delay = self.first_token_delay_s if i == 0 else self.token_delay_s
                if delay:
                    await asyncio.sleep(delay)
                yield f" {served_as}#{i}"
        finally:
            self.num_running -= 1

    def usage(self, prompt: str, num_tokens: int, cached_tokens: int) -> dict[str, Any]:
        prompt_tokens = max(1, len(prompt) // CHARS_PER_TOKEN)
        return {"prompt_tokens": prompt_tokens, "completion_tokens": num_tokens, "total_tokens": prompt_tokens + num_tokens,
                "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def chunk_bytes(obj: Any) -> bytes:
    """One SSE event, serialised compactly as the real engines do (pydantic/orjson: no spaces)."""
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


async def openai_stream(engine: FakeEngine, body: dict[str, Any], served_as: str, response_model: str, is_chat: bool,
                        cached_tokens: int) -> AsyncIterator[bytes]:
    """OpenAI streaming chunks (vLLM/SGLang/TRT share this shape), then ``[DONE]``; honours fault injection."""
    rid = f"{'chatcmpl' if is_chat else 'cmpl'}-{time.monotonic_ns()}"
    kind = "chat.completion.chunk" if is_chat else "text_completion"
    created = int(time.time())
    n = engine.max_tokens(body)
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    num_events = 0

    def chunk(choice: dict[str, Any] | None, usage: dict | None = None) -> bytes:
        obj: dict[str, Any] = {"id": rid, "object": kind, "created": created, "model": response_model,
                               "choices": [choice] if choice else []}
        if usage is not None:
            obj["usage"] = usage
        return chunk_bytes(obj)

    async def maybe_die() -> None:
        if engine.die_after_events is not None and num_events >= engine.die_after_events:
            await asyncio.sleep(0.2)  # let the events already written reach the client
            os._exit(17)

    if is_chat:
        yield chunk({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None})
        num_events += 1
    i = 0
    async for tok in engine.tokens(served_as, n):
        await maybe_die()
        if engine.end_after_events is not None and num_events >= engine.end_after_events:
            return
        i += 1
        last = i == n
        delta = {"delta": {"content": tok}} if is_chat else {"text": tok}
        yield chunk({"index": 0, **delta, "logprobs": None, "finish_reason": "length" if last else None})
        num_events += 1
    await maybe_die()
    if include_usage:
        yield chunk(None, engine.usage(engine.prompt_text(body), n, cached_tokens))
    yield b"data: [DONE]\n\n"


async def openai_full(engine: FakeEngine, body: dict[str, Any], served_as: str, response_model: str, is_chat: bool,
                      cached_tokens: int) -> dict[str, Any]:
    n = engine.max_tokens(body)
    text = "".join([t async for t in engine.tokens(served_as, n)])
    choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": "length"}
    choice.update({"message": {"role": "assistant", "content": text}} if is_chat else {"text": text})
    return {"id": f"cmpl-{time.monotonic_ns()}", "object": "chat.completion" if is_chat else "text_completion",
            "created": int(time.time()), "model": response_model, "choices": [choice],
            "usage": engine.usage(engine.prompt_text(body), n, cached_tokens)}


async def full_or_abort(request: Request, coro) -> Response:
    """Run a non-streaming generation, abandoning it if the client disconnects (vLLM's ``with_cancellation``
    and SGLang's abort-on-disconnect do the same)."""
    task = asyncio.ensure_future(coro)
    while True:
        done, _ = await asyncio.wait({task}, timeout=0.05)
        if done:
            return JSONResponse(task.result())
        if await request.is_disconnected():
            task.cancel()
            return Response(status_code=499)


def sse_response(gen: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(gen, media_type="text/event-stream")


def control_routes(engine: FakeEngine) -> list[Route]:
    """Test-only endpoints: inspect received requests, change behaviour at runtime."""

    async def get_requests(_: Request) -> Response:
        return JSONResponse(engine.requests)

    async def set_config(request: Request) -> Response:
        for key, value in (await request.json()).items():
            if key.startswith("_") or not hasattr(engine, key) or key == "requests":
                return JSONResponse({"error": f"unknown setting {key}"}, status_code=400)
            setattr(engine, key, value)
        return JSONResponse({"ok": True})

    async def reset(_: Request) -> Response:
        engine.requests.clear()
        return JSONResponse({"ok": True})

    return [Route("/_fake/requests", get_requests, methods=["GET"]), Route("/_fake/config", set_config, methods=["POST"]),
            Route("/_fake/reset", reset, methods=["POST"])]


def main(build: Callable[[FakeEngine, argparse.Namespace], Any], description: str) -> None:
    """Command line of every fake: ``--port``, ``--model``, delays; serves with uvicorn on 127.0.0.1."""
    import uvicorn

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--token-delay-ms", type=float, default=0.0)
    parser.add_argument("--first-token-delay-ms", type=float, default=0.0)
    parser.add_argument("--max-lora-rank", type=int, default=16)
    parser.add_argument("--max-loras", type=int, default=8)
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args()
    engine = FakeEngine(args.model, token_delay_s=args.token_delay_ms / 1000, first_token_delay_s=args.first_token_delay_ms / 1000)
    uvicorn.run(build(engine, args), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
