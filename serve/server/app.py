"""FastAPI app of the embedded engine: OpenAI completions/chat (streaming or not), models, adapters,
health and Prometheus metrics. Built by :func:`build_app` around an already-loaded engine."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from lorafleet.chat import chat_token_ids
from lorafleet.errors import ConfigError, LorafleetError, NotFoundError
from serve.engine.async_engine import AsyncEngine
from serve.engine.engine import RequestOutput
from serve.engine.sampling_params import SamplingParams
from lorafleet.config import ServerConfig
from serve.server.errors import HTTPError, error_body, install_error_handlers, status_of
from serve.server.metrics import ServerMetrics
from serve.server.protocol import ChatCompletionRequest, CompletionRequest, LoadLoraAdapterRequest, UnloadLoraAdapterRequest


@dataclass(slots=True)
class _Choice:
    """Accumulated result of one prompt (non-streaming) or the running state of one stream."""

    text: str = ""
    finish_reason: str | None = None
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    num_cached_tokens: int = 0
    token_ids: list[int] = field(default_factory=list)


def build_app(engine: AsyncEngine, cfg: ServerConfig) -> FastAPI:
    """The app around an engine frontend (:class:`ProcessEngine` or :class:`ThreadedEngine`), not yet started:
    the app's lifespan starts it, loads ``cfg.lora_modules`` and shuts it down."""
    model_name = cfg.served_model_name or engine.checkpoint.name
    metrics = ServerMetrics(model_name, engine.stats, engine.layout.block_size, engine.layout.num_kv_blocks,
                            engine.engine_cfg.enable_prefix_caching)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        engine.start()
        for name, path in cfg.lora_modules:
            await engine.load_adapter(name, Path(path))
        yield
        await engine.shutdown()

    app = FastAPI(title="lorafleet engine", version="0.1.0", lifespan=lifespan)
    app.state.engine, app.state.metrics, app.state.model_name = engine, metrics, model_name
    install_error_handlers(app)

    def adapter_for(model: str) -> str | None:
        if model == model_name:
            return None
        if model in engine.adapter_paths:
            return model
        raise NotFoundError(f"model '{model}' does not exist; see /v1/models")

    # -- OpenAI endpoints -------------------------------------------------------------------------------
    @app.get("/v1/models")
    async def list_models() -> dict:
        base = {"id": model_name, "object": "model", "created": created, "owned_by": "lorafleet",
                "root": str(engine.checkpoint), "parent": None, "max_model_len": engine.layout.max_model_len}
        adapters = [{"id": name, "object": "model", "created": created, "owned_by": "lorafleet",
                     "root": str(path), "parent": model_name} for name, path in list(engine.adapter_paths.items())]
        return {"object": "list", "data": [base, *adapters]}

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, raw: Request):
        _reject_unsupported(req)
        if req.echo or req.suffix:
            raise HTTPError(400, "echo and suffix are not supported", "echo" if req.echo else "suffix")
        adapter = adapter_for(req.model)
        prompts = _prompt_ids(engine, req.prompt)
        params = _sampling_params(req, req.max_tokens, prompts, engine.layout.max_model_len)
        rid = f"cmpl-{uuid.uuid4().hex}"
        for p in prompts:
            engine.check_request(p, adapter)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return _sse(_stream(engine, metrics, rid, prompts, params, adapter, req.model, False, include_usage))
        choices = await _until_disconnect(raw, _run_all(engine, metrics, rid, prompts, params, adapter))
        return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": req.model,
                "choices": [{"index": i, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason}
                            for i, c in enumerate(choices)],
                "usage": _usage(choices)}

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest, raw: Request):
        _reject_unsupported(req)
        if req.tools or (req.response_format and req.response_format.get("type") != "text"):
            raise HTTPError(400, "tools and structured response_format are not supported yet",
                            "tools" if req.tools else "response_format")
        adapter = adapter_for(req.model)
        messages = [m.model_dump(exclude_none=True) for m in req.messages]
        prompt = chat_token_ids(engine.tokenizer, messages, req.add_generation_prompt)
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        params = _sampling_params(req, max_tokens, [prompt], engine.layout.max_model_len)
        engine.check_request(prompt, adapter)
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return _sse(_stream(engine, metrics, rid, [prompt], params, adapter, req.model, True, include_usage))
        (c,) = await _until_disconnect(raw, _run_all(engine, metrics, rid, [prompt], params, adapter))
        return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": req.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": c.text}, "logprobs": None,
                             "finish_reason": c.finish_reason}],
                "usage": _usage([c])}

    # -- adapters (same JSON as vLLM's runtime LoRA endpoints) -------------------------------------------
    @app.post("/v1/load_lora_adapter")
    async def load_lora_adapter(req: LoadLoraAdapterRequest):
        if req.lora_name in engine.adapter_paths:
            raise HTTPError(400, f"The lora adapter '{req.lora_name}' has already been loaded.", "lora_name")
        if req.lora_name == model_name:
            raise HTTPError(400, f"adapter name '{req.lora_name}' collides with the base model name", "lora_name")
        await engine.load_adapter(req.lora_name, Path(req.lora_path))
        return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(req: UnloadLoraAdapterRequest):
        if not await engine.unload_adapter(req.lora_name):
            raise HTTPError(409, f"adapter '{req.lora_name}' is serving requests; retry when they finish", "lora_name")
        return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' removed successfully.")

    # -- operations --------------------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        if not engine.is_alive:
            return JSONResponse(error_body(503, "engine thread is not running"), status_code=503)
        return {"status": "ok"}

    @app.get("/metrics")
    async def prometheus_metrics():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(_CountErrors, metrics=metrics, model_name=model_name)
    return app


class _CountErrors:
    """Pure ASGI middleware counting /v1/ responses with status >= 400.

    Not ``@app.middleware("http")``: Starlette's BaseHTTPMiddleware wraps ``receive``, and behind it
    ``Request.is_disconnected()`` never sees the client leave, so non-streaming requests whose client
    disconnected were never aborted and ran to ``max_tokens``.
    """

    def __init__(self, app, metrics: ServerMetrics, model_name: str) -> None:
        self.app, self.metrics, self.model_name = app, metrics, model_name

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return

        async def send_counting(message) -> None:
            if message["type"] == "http.response.start" and message["status"] >= 400:
                self.metrics.errors.labels(model_name=self.model_name, status=str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, send_counting)


# -- request translation -----------------------------------------------------------------------------------
def _reject_unsupported(req) -> None:
    if req.n != 1:
        raise HTTPError(400, "n must be 1", "n")
    if req.logprobs not in (None, False, 0):
        raise HTTPError(400, "logprobs are not supported yet", "logprobs")
    if req.presence_penalty or req.frequency_penalty:
        raise HTTPError(400, "presence_penalty and frequency_penalty are not supported", "presence_penalty")


def _prompt_ids(engine: AsyncEngine, prompt) -> list[list[int]]:
    if isinstance(prompt, str):
        prompt = [prompt]
    elif prompt and isinstance(prompt[0], int):
        prompt = [prompt]
    if not prompt:
        raise HTTPError(400, "prompt must not be empty", "prompt")
    return [engine.tokenizer(p).input_ids if isinstance(p, str) else list(p) for p in prompt]


def _sampling_params(req, max_tokens: int | None, prompts: list[list[int]], max_model_len: int) -> SamplingParams:
    longest = max(len(p) for p in prompts)
    if longest >= max_model_len:
        raise HTTPError(400, f"This model's maximum context length is {max_model_len} tokens, but the prompt has "
                             f"{longest} tokens.", "prompt")
    if max_tokens is None:
        max_tokens = max_model_len - longest
    elif longest + max_tokens > max_model_len:
        raise HTTPError(400, f"This model's maximum context length is {max_model_len} tokens. However, you requested "
                             f"{longest + max_tokens} tokens ({longest} in the prompt, {max_tokens} for the completion).",
                        "max_tokens")
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    try:
        return SamplingParams(max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p, top_k=req.top_k,
                              seed=req.seed, stop=stop, stop_token_ids=tuple(req.stop_token_ids or ()),
                              ignore_eos=req.ignore_eos, skip_special_tokens=req.skip_special_tokens)
    except ConfigError as e:
        raise HTTPError(400, str(e), str(e).split(" ", 1)[0]) from None


def _usage(choices: list[_Choice]) -> dict:
    prompt = sum(c.num_prompt_tokens for c in choices)
    completion = sum(c.num_output_tokens for c in choices)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": sum(c.num_cached_tokens for c in choices)}}


# -- running requests ----------------------------------------------------------------------------------------
async def _one(engine: AsyncEngine, metrics: ServerMetrics, rid: str, prompt: list[int], params: SamplingParams,
               adapter: str | None) -> AsyncIterator[tuple[RequestOutput, _Choice]]:
    """Run one prompt, observing latency metrics, and yield each output with the updated choice state."""
    start = time.monotonic()
    last = None
    state = _Choice()
    async for out in engine.generate(rid, prompt, params, adapter):
        now = time.monotonic()
        if last is None:
            metrics.labels(metrics.ttft).observe(now - start)
        else:
            metrics.labels(metrics.itl).observe(now - last)
        last = now
        state.text += out.text
        state.token_ids.extend(out.token_ids)
        state.num_prompt_tokens, state.num_output_tokens = out.num_prompt_tokens, out.num_output_tokens
        state.num_cached_tokens = out.num_cached_tokens
        if out.finished:
            state.finish_reason = out.finish_reason
            _observe_finish(metrics, out, start, now)
        yield out, state


def _observe_finish(metrics: ServerMetrics, out: RequestOutput, start: float, now: float) -> None:
    m = metrics
    m.labels(m.e2e).observe(now - start)
    t = out.times
    if t is not None and t.first_scheduled is not None:
        m.labels(m.queue).observe(max(0.0, t.first_scheduled - t.arrival))
    if t is not None and out.num_output_tokens > 1 and t.first_token is not None and t.last_token is not None:
        m.labels(m.tpot).observe((t.last_token - t.first_token) / (out.num_output_tokens - 1))
    m.labels(m.prompt_tokens).inc(out.num_prompt_tokens)
    m.labels(m.generation_tokens).inc(out.num_output_tokens)
    m.success.labels(model_name=m.model_name, finished_reason=out.finish_reason or "abort").inc()


async def _run_all(engine, metrics, rid, prompts, params, adapter) -> list[_Choice]:
    async def run(i: int, prompt: list[int]) -> _Choice:
        state = _Choice()
        async for _, state in _one(engine, metrics, f"{rid}-{i}", prompt, params, adapter):
            pass
        return state

    return list(await asyncio.gather(*(run(i, p) for i, p in enumerate(prompts))))


async def _until_disconnect(raw: Request, coro):
    """Await ``coro``, cancelling it (and so aborting its engine requests) if the client disconnects."""
    task = asyncio.ensure_future(coro)
    while True:
        done, _ = await asyncio.wait({task}, timeout=0.5)
        if done:
            return task.result()
        if await raw.is_disconnected():
            task.cancel()
            raise HTTPError(499, "client disconnected")


def _sse(gen: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(gen, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _merged(engine, metrics, rid, prompts, params, adapter, states: list[_Choice]):
    """``(choice index, output or exception)`` from every prompt as they come. One prompt (the usual case) is
    iterated directly; several run as tasks feeding one queue, cancelled (so aborted) when the caller stops."""
    if len(prompts) == 1:
        try:
            async for out, states[0] in _one(engine, metrics, f"{rid}-0", prompts[0], params, adapter):
                yield 0, out
        except Exception as e:  # surfaced as an SSE error event
            yield 0, e
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, prompt: list[int]) -> None:
        try:
            async for out, states[i] in _one(engine, metrics, f"{rid}-{i}", prompt, params, adapter):
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


def _event(obj: dict) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


async def _stream(engine, metrics, rid, prompts, params, adapter, model, is_chat, include_usage) -> AsyncIterator[str]:
    created = int(time.time())
    kind = "chat.completion.chunk" if is_chat else "text_completion"

    def chunk(choices: list[dict], usage: dict | None = None) -> str:
        body = {"id": rid, "object": kind, "created": created, "model": model, "choices": choices}
        if include_usage:
            body["usage"] = usage
        return _event(body)

    states: list[_Choice] = [_Choice() for _ in prompts]
    if is_chat:
        yield chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}])
    async with contextlib.aclosing(_merged(engine, metrics, rid, prompts, params, adapter, states)) as items:
        async for i, item in items:
            if isinstance(item, Exception):
                status = status_of(item) if isinstance(item, LorafleetError) else 500
                yield _event(error_body(status, str(item) or type(item).__name__))
                return
            if not item.text and not item.finished:
                continue
            delta = {"delta": {"content": item.text}} if is_chat else {"text": item.text}
            yield chunk([{"index": i, **delta, "logprobs": None, "finish_reason": item.finish_reason}])
    if include_usage:
        yield chunk([], _usage(states))
    yield "data: [DONE]\n\n"

