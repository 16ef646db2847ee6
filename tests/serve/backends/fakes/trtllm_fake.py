"""Protocol fake of TensorRT-LLM's ``trtllm-serve``, from its docs.

Followed: nvidia.github.io/TensorRT-LLM "trtllm-serve" (OpenAI ``/v1/models``, ``/v1/completions``,
``/v1/chat/completions``; ``/health``; ``/version``; ``/metrics`` returning a JSON list of iteration stats that
is drained by every read, e.g. ``[{"iter", "iterLatencyMS", "gpuMemUsage", "numActiveRequests",
"numQueuedRequests", "kvCacheStats": {"maxNumBlocks", "freeNumBlocks", "usedNumBlocks", "tokensPerBlock",
"reusedBlocks", "missedBlocks", "cacheHitRate"}}]``) and ``tensorrt_llm/serve/openai_protocol.py``: request
models forbid unknown fields (``extra="forbid"``), an adapter is applied with ``"lora_request": {"lora_name",
"lora_int_id", "lora_path", "lora_ckpt_source"}``, ``ModelCard.owned_by`` is ``"tensorrt_llm"``, errors are
``ErrorResponse`` = ``{"object": "error", "message", "type", "param", "code"}``. The fields accepted below are
those of ``CompletionRequest`` and ``ChatCompletionRequest`` that an OpenAI client or the gateway can send.
Not modelled: multimodal inputs, disaggregated serving, beam search.
"""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fake_core import FakeEngine, control_routes, full_or_abort, main, openai_full, openai_stream, sse_response

COMMON_FIELDS = frozenset({
    "model", "frequency_penalty", "logit_bias", "logprobs", "max_tokens", "n", "presence_penalty", "seed", "stop",
    "stream", "stream_options", "temperature", "top_p", "user", "lora_request", "best_of", "use_beam_search", "top_k",
    "top_p_min", "min_p", "repetition_penalty", "length_penalty", "early_stopping", "stop_token_ids",
    "include_stop_str_in_output", "ignore_eos", "min_tokens", "skip_special_tokens", "spaces_between_special_tokens",
    "truncate_prompt_tokens", "return_context_logits", "detokenize", "add_special_tokens", "response_format",
    "disaggregated_params", "priority"})
COMPLETION_FIELDS = COMMON_FIELDS | {"prompt", "echo", "suffix", "prompt_ignore_length"}
CHAT_FIELDS = COMMON_FIELDS | {"messages", "top_logprobs", "max_completion_tokens", "tools", "tool_choice",
                               "add_generation_prompt", "documents", "chat_template", "chat_template_kwargs"}
LORA_FIELDS = frozenset({"lora_name", "lora_int_id", "lora_path", "lora_ckpt_source"})


def error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"object": "error", "message": message, "type": "BadRequestError", "param": None, "code": status},
                        status_code=status)


def build_app(engine: FakeEngine, args) -> Starlette:
    lora_cache: dict[int, str] = {}  # lora_int_id -> path, filled on first use as the engine's LoRA cache is
    iteration = [0]

    async def generate(request: Request, is_chat: bool) -> Response:
        body = await request.json()
        engine.requests.append(body)
        extra = sorted(set(body) - (CHAT_FIELDS if is_chat else COMPLETION_FIELDS))
        if extra:
            return error(f"Extra inputs are not permitted: {extra}")
        if (fault := engine.check_fault()) is not None:
            return fault
        if body.get("model") != engine.model:
            return error(f"The model `{body.get('model')}` does not exist.", 404)
        served_as = engine.model
        lora = body.get("lora_request")
        if lora is not None:
            if not isinstance(lora, dict) or set(lora) - LORA_FIELDS or not {"lora_name", "lora_int_id"} <= set(lora):
                return error(f"invalid lora_request: {lora}")
            known = lora_cache.get(lora["lora_int_id"])
            if known is None:
                if not (Path(str(lora.get("lora_path", ""))) / "adapter_config.json").is_file():
                    return error(f"LoRA {lora['lora_name']} (id {lora['lora_int_id']}) is not cached and "
                                 f"lora_path '{lora.get('lora_path')}' holds no adapter")
                lora_cache[lora["lora_int_id"]] = str(lora["lora_path"])
            served_as = lora["lora_name"]
        cached = engine.use_prefix_cache(engine.prompt_text(body), served_as)
        if body.get("stream"):
            return sse_response(openai_stream(engine, body, served_as, engine.model, is_chat, cached))
        return await full_or_abort(request, openai_full(engine, body, served_as, engine.model, is_chat, cached))

    async def completions(request: Request) -> Response:
        return await generate(request, False)

    async def chat(request: Request) -> Response:
        return await generate(request, True)

    async def models(_: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": engine.model, "object": "model", "created": 0,
                                                         "owned_by": "tensorrt_llm"}]})

    async def health(_: Request) -> Response:
        return Response(status_code=200)

    async def version(_: Request) -> Response:
        return JSONResponse({"version": "fake"})

    async def metrics(_: Request) -> Response:
        iteration[0] += 1
        q, h = engine.prefix_queries_tokens, engine.prefix_hits_tokens
        stats = {"iter": iteration[0], "iterLatencyMS": 7.0, "gpuMemUsage": 1 << 30,
                 "numActiveRequests": engine.num_running, "numQueuedRequests": engine.num_waiting,
                 "kvCacheStats": {"maxNumBlocks": 1000, "freeNumBlocks": 1000 - engine.num_running,
                                  "usedNumBlocks": engine.num_running, "tokensPerBlock": 32,
                                  "reusedBlocks": h // 16, "missedBlocks": (q - h) // 16,
                                  "cacheHitRate": h / q if q else 0.0}}
        return JSONResponse([stats])

    routes = [Route("/v1/completions", completions, methods=["POST"]), Route("/v1/chat/completions", chat, methods=["POST"]),
              Route("/v1/models", models), Route("/health", health), Route("/version", version),
              Route("/metrics", metrics), *control_routes(engine)]
    return Starlette(routes=routes)


if __name__ == "__main__":
    main(build_app, "TensorRT-LLM (trtllm-serve) protocol fake")
