"""Protocol fake of an SGLang server (``python -m sglang.launch_server --enable-lora``), from its docs.

Followed: docs.sglang.io "OpenAI-Compatible APIs" (``/v1/completions``, ``/v1/chat/completions``, ``/v1/models``
listing the served model only), "LoRA Serving" (adapters chosen with ``"model": "<base>:<adapter>"``; dynamic
``POST /load_lora_adapter`` / ``POST /unload_lora_adapter`` without a /v1 prefix, taking ``{"lora_name",
"lora_path"}`` / ``{"lora_name"}``), ``http_server.py`` (those answer ``LoRAUpdateOutput`` = ``{"success",
"error_message", "loaded_adapters"}`` with status 200 or 400; ``loaded_adapters`` maps names to ``LoRARef``
dicts ``{"lora_id", "lora_name", "lora_path", "pinned"}``), "SGLang Native APIs" (``GET /health`` 200,
``GET /get_server_info`` = server args + ``internal_states`` + ``version``) and "Production Metrics"
(``sglang:num_running_reqs``, ``sglang:num_queue_reqs``, ``sglang:token_usage``, ``sglang:cache_hit_rate``,
labelled ``model_name``). OpenAI errors use SGLang's ``ErrorResponse``: ``{"object": "error", "message",
"type", "param", "code"}``. Not modelled: the native ``/generate`` API, pinned adapters, CPU offload.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from fake_core import FakeEngine, control_routes, full_or_abort, main, openai_full, openai_stream, sse_response


def error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"object": "error", "message": message, "type": "BadRequestError", "param": None, "code": status},
                        status_code=status)


def build_app(engine: FakeEngine, args) -> Starlette:
    adapters: dict[str, dict] = {}  # name -> LoRARef

    def update_output(success: bool, message: str | None = None) -> JSONResponse:
        return JSONResponse({"success": success, "error_message": message, "loaded_adapters": dict(adapters)},
                            status_code=200 if success else 400)

    async def load(request: Request) -> Response:
        body = await request.json()
        name, path = body.get("lora_name"), body.get("lora_path")
        if name in adapters:
            return update_output(False, f"The LoRA adapter name '{name}' is already loaded.")
        config = Path(str(path)) / "adapter_config.json"
        if not config.is_file():
            return update_output(False, f"Failed to load LoRA adapter {name}: no adapter_config.json under {path}")
        rank = json.loads(config.read_text()).get("r", 0)
        if rank > args.max_lora_rank:
            return update_output(False, f"LoRA adapter {name} has rank {rank}, above --max-lora-rank {args.max_lora_rank}")
        if len(adapters) >= args.max_loras:
            return update_output(False, f"Cannot load {name}: {len(adapters)} adapters already loaded (max_loaded_loras)")
        adapters[name] = {"lora_id": uuid.uuid4().hex, "lora_name": name, "lora_path": str(path), "pinned": False}
        return update_output(True)

    async def unload(request: Request) -> Response:
        name = (await request.json()).get("lora_name")
        if name not in adapters:
            return update_output(False, f"LoRA adapter {name} is not loaded.")
        del adapters[name]
        return update_output(True)

    def resolve(model: str) -> str | None:
        """The adapter (or base) a ``model`` value selects, or None if it names nothing served."""
        if model == engine.model:
            return engine.model
        base, sep, adapter = model.rpartition(":")
        return adapter if sep and base == engine.model and adapter in adapters else None

    async def generate(request: Request, is_chat: bool) -> Response:
        body = await request.json()
        engine.requests.append(body)
        if (fault := engine.check_fault()) is not None:
            return fault
        served_as = resolve(str(body.get("model")))
        if served_as is None:
            return error(f"The model '{body.get('model')}' does not exist or its LoRA adapter is not loaded.", 400)
        cached = engine.use_prefix_cache(engine.prompt_text(body), served_as)
        if body.get("stream"):
            return sse_response(openai_stream(engine, body, served_as, body["model"], is_chat, cached))
        return await full_or_abort(request, openai_full(engine, body, served_as, body["model"], is_chat, cached))

    async def completions(request: Request) -> Response:
        return await generate(request, False)

    async def chat(request: Request) -> Response:
        return await generate(request, True)

    async def models(_: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": engine.model, "object": "model", "created": 0,
                                                         "owned_by": "sglang", "root": engine.model, "max_model_len": 2048}]})

    async def health(_: Request) -> Response:
        return Response(status_code=200)

    async def server_info(_: Request) -> Response:
        return JSONResponse({"model_path": engine.model, "served_model_name": engine.model, "enable_lora": True,
                             "max_loras_per_batch": args.max_loras, "max_lora_rank": args.max_lora_rank,
                             "internal_states": [{"num_running_reqs": engine.num_running}], "version": "fake"})

    async def metrics(_: Request) -> Response:
        label = f'{{model_name="{engine.model}"}}'
        q, h = engine.prefix_queries_tokens, engine.prefix_hits_tokens
        lines = ["# HELP sglang:num_running_reqs The number of running requests", "# TYPE sglang:num_running_reqs gauge",
                 f"sglang:num_running_reqs{label} {float(engine.num_running)}",
                 "# HELP sglang:num_queue_reqs The number of requests in the waiting queue", "# TYPE sglang:num_queue_reqs gauge",
                 f"sglang:num_queue_reqs{label} {float(engine.num_waiting)}",
                 "# HELP sglang:token_usage The token usage", "# TYPE sglang:token_usage gauge",
                 f"sglang:token_usage{label} {min(1.0, engine.num_running / 64):.4f}",
                 "# HELP sglang:cache_hit_rate The cache hit rate", "# TYPE sglang:cache_hit_rate gauge",
                 f"sglang:cache_hit_rate{label} {h / q if q else 0.0}"]
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4; charset=utf-8")

    routes = [Route("/load_lora_adapter", load, methods=["POST"]), Route("/unload_lora_adapter", unload, methods=["POST"]),
              Route("/v1/completions", completions, methods=["POST"]), Route("/v1/chat/completions", chat, methods=["POST"]),
              Route("/v1/models", models), Route("/health", health), Route("/get_server_info", server_info),
              Route("/metrics", metrics), *control_routes(engine)]
    return Starlette(routes=routes)


if __name__ == "__main__":
    main(build_app, "SGLang protocol fake")
