"""The gateway's OpenAPI document (``/openapi.json``): FastAPI's own description of the routes it serves,
plus the two generation endpoints, which :class:`serve.gateway.asgi.GatewayApp` serves without FastAPI and
which FastAPI therefore does not know about.

The request bodies describe what the gateway reads and relays: OpenAI's completion and chat fields (the
engine behind validates the rest; unknown fields pass through), lorafleet's ``prompt_template`` extension,
and the errors the gateway answers itself. Fuzzers (``tests/reliability/test_fuzz.py``) generate requests
from it.
"""

from __future__ import annotations

from typing import Any

_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type", "code"],
    "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                   "param": {"type": "string", "nullable": True}, "code": {"type": "integer"}}}}}
_ERRORS = {
    "400": "malformed or invalid request, a limit exceeded, or an adapter that failed to load",
    "401": "missing, invalid or revoked API key", "403": "the key may not use this model",
    "404": "unknown model, adapter or prompt template", "413": "request body larger than limits.max_body_bytes",
    "429": "rate limit of the key exceeded (Retry-After says when to come back)",
    "502": "the replica failed or answered 5xx", "503": "no healthy replica, or the gateway queue is full",
    "504": "the request's deadline passed",
}
_SAMPLING = {
    "model": {"type": "string", "minLength": 1, "description": "A base model or a declared adapter."},
    "stream": {"type": "boolean"},
    "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
    "max_tokens": {"type": "integer", "minimum": 1, "description": "At most limits.max_tokens."},
    "n": {"type": "integer", "minimum": 1, "description": "At most limits.max_n."},
    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
    "top_p": {"type": "number", "exclusiveMinimum": True, "minimum": 0, "maximum": 1},
    "top_k": {"type": "integer", "minimum": -1},
    "seed": {"type": "integer"},
    "stop": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 4}]},
    "ignore_eos": {"type": "boolean"},
    "user": {"type": "string"},
}
_TOKEN_IDS = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1}
_COMPLETION = {"type": "object", "required": ["model", "prompt"], "properties": {
    **_SAMPLING,
    "prompt": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1},
                         _TOKEN_IDS, {"type": "array", "items": _TOKEN_IDS, "minItems": 1}]},
    "logprobs": {"type": "integer", "minimum": 0, "maximum": 20}}}
_MESSAGE = {"type": "object", "required": ["role"], "properties": {
    "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool"]},
    "content": {"oneOf": [{"type": "string"}, {"type": "array", "items": {
        "type": "object", "required": ["type", "text"],
        "properties": {"type": {"type": "string", "enum": ["text"]}, "text": {"type": "string"}}}}]},
    "name": {"type": "string"}}}
_CHAT = {"type": "object", "required": ["model", "messages"], "properties": {
    **_SAMPLING,
    "messages": {"type": "array", "items": _MESSAGE, "minItems": 1},
    "max_completion_tokens": {"type": "integer", "minimum": 1},
    "prompt_template": {"type": "object", "required": ["name"], "description": "Render a registered template "
                        "instead of sending messages (send messages: [])",
                        "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                                       "variables": {"type": "object"}}}}}
_RESPONSES = {"type": "object", "required": ["model", "input"], "properties": {
    "model": {"type": "string"}, "input": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]},
    "instructions": {"type": "string"}, "max_output_tokens": {"type": "integer", "minimum": 1},
    "stream": {"type": "boolean"}, "store": {"type": "boolean"}, "previous_response_id": {"type": "string"}}}


def _operation(summary: str, body: dict[str, Any], operation_id: str) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": {"description": "The completion, or an SSE stream of chunks with stream: true",
                                         "content": {"application/json": {"schema": {"type": "object"}},
                                                     "text/event-stream": {"schema": {"type": "string"}}}}}
    responses.update({code: {"description": why, "content": {"application/json": {"schema": _ERROR}}}
                      for code, why in _ERRORS.items()})
    return {"post": {"summary": summary, "operationId": operation_id, "security": [{"bearer": []}, {}],
                     "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
                     "responses": responses}}


GENERATION_PATHS: dict[str, Any] = {
    "/v1/completions": _operation("OpenAI text completion, relayed to a replica", _COMPLETION, "completions"),
    "/v1/chat/completions": _operation("OpenAI chat completion, relayed to a replica", _CHAT, "chat_completions"),
    "/v1/responses": _operation("OpenAI Responses API, relayed to a vLLM or lorafleet replica", _RESPONSES, "responses"),
}


def install_openapi(app) -> None:
    """Make ``app.openapi()`` (a FastAPI app) also describe the generation endpoints and the bearer key."""
    base = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = base()
            schema["paths"] = {**GENERATION_PATHS, **schema.get("paths", {})}
            schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
                "type": "http", "scheme": "bearer"}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
