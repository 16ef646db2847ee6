"""The only place gateway errors become HTTP: status codes, OpenAI-shaped JSON bodies and SSE error events.

``{"error": {"message", "type", "param", "code"}}`` as OpenAI sends it, so SDK clients raise their usual
exception classes (401 AuthenticationError, 403 PermissionDeniedError, 429 RateLimitError...).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from starlette.requests import Request
from starlette.responses import JSONResponse

from lorafleet.errors import ArtifactError, BackendError, ConfigError, LorafleetError, NotFoundError
from serve.backends.base import UpstreamError
from serve.gateway.adapters import AdapterLoadError

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 408: "timeout_error", 409: "conflict_error", 413: "invalid_request_error",
               429: "rate_limit_error", 431: "invalid_request_error", 499: "client_closed_request", 500: "internal_server_error",
               502: "bad_gateway", 503: "service_unavailable", 504: "gateway_timeout"}


class GatewayError(LorafleetError):
    """An error with an explicit HTTP status, raised by the gateway's handlers."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.param, self.headers = status, param, dict(headers or {})


def status_of(exc: BaseException) -> int:
    """HTTP status for an error raised anywhere below the gateway."""
    if isinstance(exc, GatewayError):
        return exc.status
    if isinstance(exc, AdapterLoadError):
        return 400
    if isinstance(exc, UpstreamError):
        return exc.status if exc.status < 500 else 502
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, (ConfigError, ArtifactError)):
        return 400
    if isinstance(exc, BackendError):
        return 503 if exc.retryable else 502
    if isinstance(exc, TimeoutError):
        return 504
    return 500


def error_body(status: int, message: str, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "error"), "param": param, "code": status}}


def error_response(status: int, message: str, param: str | None = None,
                   headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param), status_code=status, headers=dict(headers or {}))


def response_for(exc: BaseException) -> JSONResponse:
    status = status_of(exc)
    message = str(exc) or type(exc).__name__
    return error_response(status, message, getattr(exc, "param", None), getattr(exc, "headers", None))


def sse_error_event(status: int, message: str) -> bytes:
    """An SSE event carrying an OpenAI error object (what vLLM sends when a stream fails midway); the OpenAI
    SDK raises ``APIError`` on it."""
    return b"data: " + json.dumps(error_body(status, message), separators=(",", ":")).encode() + b"\n\n"


def install_error_handlers(app) -> None:
    @app.exception_handler(LorafleetError)
    async def _lorafleet(_: Request, exc: LorafleetError) -> JSONResponse:
        return response_for(exc)
