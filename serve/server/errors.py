"""Map lorafleet errors to HTTP status codes and OpenAI-style JSON error bodies."""

from __future__ import annotations

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lorafleet.errors import ArtifactError, BackendError, ConfigError, LorafleetError, NotFoundError

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 408: "timeout_error", 409: "conflict_error", 413: "invalid_request_error",
               429: "rate_limit_error", 431: "invalid_request_error", 500: "internal_server_error",
               503: "service_unavailable"}


class HTTPError(LorafleetError):
    """An error with an explicit status, raised by handlers."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.param = status, param


def error_body(status: int, message: str, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "error"), "param": param, "code": status}}


def error_response(status: int, message: str, param: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param), status_code=status)


def status_of(exc: Exception) -> int:
    if isinstance(exc, HTTPError):
        return exc.status
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, (ConfigError, ArtifactError)):
        return 400
    if isinstance(exc, BackendError):
        return 503
    return 500


def install_error_handlers(app) -> None:
    @app.exception_handler(LorafleetError)
    async def _lorafleet(_: Request, exc: LorafleetError) -> JSONResponse:
        return error_response(status_of(exc), str(exc), getattr(exc, "param", None))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # FastAPI's own refusals (a body it cannot parse, e.g. JSON nested past the parser's depth; 404, 405)
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        first = errs[0] if errs else {}
        loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        if first.get("type") == "json_invalid":
            return error_response(400, f"malformed JSON body: {first.get('msg', '')}")
        return error_response(400, f"{loc or 'body'}: {first.get('msg', 'invalid value')}", loc or None)
