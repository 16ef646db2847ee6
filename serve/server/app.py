"""FastAPI app of the embedded engine: OpenAI completions/chat (streaming or not; ``n`` choices, logprobs,
structured ``response_format``, tool calls), models, adapters, health and Prometheus metrics. Built by
:func:`build_app` around an already-loaded engine."""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from lorafleet.config import ServerConfig
from lorafleet.errors import LorafleetError, NotFoundError
from serve.engine.async_engine import AsyncEngine
from serve.engine.sampling_params import SamplingParams
from serve.server.bounds import RequestBounds, check_fields, check_prompt_chars, check_token_ids, message_chars, prompt_chars
from serve.server.chat_deltas import ChoiceDeltas
from serve.server.errors import HTTPError, error_body, install_error_handlers, status_of
from serve.server.generation import PromptRun, merged, run_all
from serve.server.guard import RequestGuard
from serve.server.echo import StreamEcho, completion_choices
from serve.server.logprobs_format import TokenStrings, chat_logprobs, completion_logprobs, prompt_logprobs_json
from serve.server.metrics import ServerMetrics
from serve.server.protocol import ChatCompletionRequest, CompletionRequest, LoadLoraAdapterRequest, UnloadLoraAdapterRequest
from serve.server.responses import add_responses_routes
from serve.server.structured_fields import request_structured
from serve.server.runtime_lora import allowed_adapter_dir, require_enabled
from serve.server.tokenization import add_tokenize_routes
from serve.server.tools import ToolPlan, finish_reason, parse_tool_calls, plan_tools, prompt_token_ids
from serve.server.translate import (completion_max_tokens, prompt_ids, reject_unsupported, sampling_params, truncated,
                                    usage)


def build_app(engine: AsyncEngine, cfg: ServerConfig) -> FastAPI:
    """The app around an engine frontend (:class:`ProcessEngine` or :class:`ThreadedEngine`), not yet started:
    the app's lifespan starts it, loads ``cfg.lora_modules`` and shuts it down."""
    model_name = cfg.served_model_name or engine.checkpoint.name
    metrics = ServerMetrics(model_name, engine.stats, engine.layout.block_size, engine.layout.num_kv_blocks,
                            engine.engine_cfg.enable_prefix_caching)
    created = int(time.time())
    strings = TokenStrings(engine.tokenizer)
    bounds = RequestBounds.of(engine.tokenizer, engine.layout.vocab_size, engine.layout.max_model_len)
    lora_roots = tuple(Path(r).resolve() for r in cfg.allowed_lora_roots)
    # Tokenizing (a chat template, a long prompt) runs here, off the event loop, so other requests are served
    # meanwhile. One thread: HF fast tokenizers may reconfigure themselves per call and are not safe to share.
    tokenize_pool = ThreadPoolExecutor(1, thread_name_prefix="tokenize")

    async def tokenized(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(tokenize_pool, fn, *args)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        engine.start()
        for name, path in cfg.lora_modules:
            await engine.load_adapter(name, Path(path))
        yield
        await engine.shutdown()
        tokenize_pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="lorafleet engine", version="0.1.0", lifespan=lifespan)
    app.state.engine, app.state.metrics, app.state.model_name = engine, metrics, model_name
    install_error_handlers(app)

    def adapter_for(model: str) -> str | None:
        if model == model_name:
            return None
        if model in engine.adapter_paths:
            return model
        raise NotFoundError(f"model '{model}' does not exist; see /v1/models")

    add_tokenize_routes(app, engine.tokenizer, engine.layout.vocab_size, engine.layout.max_model_len, adapter_for)

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
        reject_unsupported(req)
        check_fields(req, bounds)
        check_prompt_chars(prompt_chars(req.prompt), bounds, "prompt")
        adapter = adapter_for(req.model)
        prompts = truncated(await tokenized(prompt_ids, engine, req.prompt), req.truncate_prompt_tokens)
        for p in prompts:
            check_token_ids(p, bounds, "prompt")
        params = sampling_params(req, completion_max_tokens(req), prompts, engine.layout.max_model_len,
                                 request_structured(req), engine.layout.vocab_size)
        rid = f"cmpl-{uuid.uuid4().hex}"
        for p in prompts:
            engine.check_request(p, adapter)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            echo = StreamEcho(engine.tokenizer, req, prompts) if req.echo else None
            return _sse(_stream_completion(engine, metrics, strings, rid, prompts, params, adapter, req.model, include_usage,
                                           echo))
        runs = await _until_disconnect(raw, run_all(engine, metrics, rid, prompts, params, adapter))
        choices = completion_choices(strings, engine.tokenizer, req, prompts, runs, params)
        return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": req.model,
                "choices": choices, "usage": usage([r.usage for r in runs])}

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest, raw: Request):
        reject_unsupported(req)
        check_fields(req, bounds)
        check_prompt_chars(message_chars(req.messages), bounds, "messages")
        plan = plan_tools(req.tools, req.tool_choice, req.parallel_tool_calls)
        structured = request_structured(req)
        if plan is not None and plan.structured is not None:
            if structured is not None:
                raise HTTPError(400, f"response_format cannot be combined with tool_choice '{plan.mode}'", "response_format")
            structured = plan.structured
        adapter = adapter_for(req.model)
        messages = [m.model_dump(exclude_none=True) for m in req.messages]
        prompt = await tokenized(prompt_token_ids, engine.tokenizer, messages, plan, req.add_generation_prompt)
        (prompt,) = truncated([prompt], req.truncate_prompt_tokens)
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        params = sampling_params(req, max_tokens, [prompt], engine.layout.max_model_len, structured,
                                 engine.layout.vocab_size)
        engine.check_request(prompt, adapter)
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return _sse(_stream_chat(engine, metrics, strings, rid, prompt, params, adapter, req.model, include_usage, plan))
        (run,) = await _until_disconnect(raw, run_all(engine, metrics, rid, [prompt], params, adapter))
        choices = []
        for j, c in enumerate(run.choices):
            message: dict = {"role": "assistant", "content": c.text}
            calls = []
            if plan is not None:
                message["content"], calls = parse_tool_calls(c.text, plan)
                if calls:
                    message["tool_calls"] = calls
            choices.append({"index": j, "message": message, "finish_reason": finish_reason(c.finish_reason, plan, bool(calls)),
                            "logprobs": chat_logprobs(strings, c.logprobs) if params.logprobs is not None else None,
                            **({"token_ids": c.token_ids} if req.return_token_ids else {})})
        return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": req.model,
                "choices": choices, "usage": usage([run.usage]),
                **({"prompt_logprobs": prompt_logprobs_json(strings, run.prompt_logprobs)}
                   if params.prompt_logprobs is not None else {}),
                **({"prompt_token_ids": prompt} if req.return_token_ids else {})}

    add_responses_routes(app, chat_completions)  # /v1/responses: translated onto the chat handler above

    # -- adapters (same JSON as vLLM's runtime LoRA endpoints) -------------------------------------------
    @app.post("/v1/load_lora_adapter")
    async def load_lora_adapter(req: LoadLoraAdapterRequest):
        path = allowed_adapter_dir(req.lora_name, req.lora_path, lora_roots)
        if req.lora_name in engine.adapter_paths:
            raise HTTPError(400, f"The lora adapter '{req.lora_name}' has already been loaded.", "lora_name")
        if req.lora_name == model_name:
            raise HTTPError(400, f"adapter name '{req.lora_name}' collides with the base model name", "lora_name")
        await engine.load_adapter(req.lora_name, path)
        return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(req: UnloadLoraAdapterRequest):
        require_enabled(lora_roots)
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

    app.add_middleware(RequestGuard, api_key=cfg.api_key, max_body_bytes=cfg.max_body_bytes)
    app.add_middleware(_CountErrors, metrics=metrics, model_name=model_name)  # (outermost: counts 401 and 413 too)
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


# -- running requests ----------------------------------------------------------------------------------------
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


def _event(obj: dict) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


def _chunker(rid: str, kind: str, model: str, include_usage: bool):
    created = int(time.time())

    def chunk(choices: list[dict], usage_block: dict | None = None) -> str:
        body = {"id": rid, "object": kind, "created": created, "model": model, "choices": choices}
        if include_usage:
            body["usage"] = usage_block
        return _event(body)

    return chunk


def _error_event(e: Exception) -> str:
    status = status_of(e) if isinstance(e, LorafleetError) else 500
    return _event(error_body(status, str(e) or type(e).__name__))


async def _stream_completion(engine, metrics, strings: TokenStrings, rid, prompts, params: SamplingParams, adapter, model,
                             include_usage, echo: StreamEcho | None = None) -> AsyncIterator[str]:
    chunk = _chunker(rid, "text_completion", model, include_usage)
    runs = [PromptRun.empty(params.n) for _ in prompts]
    async with contextlib.aclosing(merged(engine, metrics, rid, prompts, params, adapter, runs)) as items:
        async for i, item in items:
            if isinstance(item, Exception):
                yield _error_event(item)
                return
            if echo is not None:
                piece = echo.chunk(strings, i, item, runs[i].choices[item.index].text, params)
                if piece is not None:
                    yield chunk([{"index": i * params.n + item.index, "text": piece[0], "logprobs": piece[1],
                                  "finish_reason": piece[2]}])
                continue
            if not item.text and not item.finished and not item.logprobs:
                continue
            lp = None
            if params.logprobs is not None:
                offset = len(runs[i].choices[item.index].text) - len(item.text)
                lp = completion_logprobs(strings, list(item.logprobs or ()), offset)
            yield chunk([{"index": i * params.n + item.index, "text": item.text, "logprobs": lp,
                          "finish_reason": item.finish_reason}])
    if include_usage:
        yield chunk([], usage([r.usage for r in runs]))
    yield "data: [DONE]\n\n"


async def _stream_chat(engine, metrics, strings: TokenStrings, rid, prompt, params: SamplingParams, adapter, model,
                       include_usage, plan: ToolPlan | None) -> AsyncIterator[str]:
    chunk = _chunker(rid, "chat.completion.chunk", model, include_usage)
    run = PromptRun.empty(params.n)
    deltas = [ChoiceDeltas(plan) for _ in range(params.n)]
    for j in range(params.n):
        yield chunk([{"index": j, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}])
    async with contextlib.aclosing(merged(engine, metrics, rid, [prompt], params, adapter, [run])) as items:
        async for _, item in items:
            if isinstance(item, Exception):
                yield _error_event(item)
                return
            d = deltas[item.index]
            out = d.feed(item.text, list(item.logprobs or ()))
            reason = None
            if item.finished:
                out += d.finish()
                reason = finish_reason(item.finish_reason, plan, d.has_tool_calls)
                out = out or [({}, [])]
            for k, (delta, lps) in enumerate(out):
                yield chunk([{"index": item.index, "delta": delta, "finish_reason": reason if k == len(out) - 1 else None,
                              "logprobs": chat_logprobs(strings, lps) if params.logprobs is not None else None}])
    if include_usage:
        yield chunk([], usage([run.usage]))
    yield "data: [DONE]\n\n"
