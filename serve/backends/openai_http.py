"""What every engine kind shares: OpenAI completions and chat over HTTP (streamed or not), /health,
/v1/models and Prometheus /metrics, on one pooled httpx client per replica.

Subclasses change only what their engine does differently: how an adapter is named in a request, how
adapters are loaded, and the metrics format.
"""

from __future__ import annotations

import json
import re
from http import HTTPStatus
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx

from lorafleet.errors import BackendError
from serve.backends.base import (Backend, BackendSpec, Endpoint, EngineMetrics, ServedModels, UpstreamError, UpstreamRequest,
                                 UpstreamResponse)
from serve.backends.engine_metrics import parse_engine_metrics
from serve.backends.http1 import HTTP1Pool
from serve.backends.sse import SSEDecoder

DONE = b"[DONE]"
#: the last event of a Responses API stream, which has no [DONE] (not preceded by a backslash: not in a string).
#: Not ``error``: ours follows it with ``response.failed``; a stream that ends after it is relayed as broken (502).
RESPONSES_END = re.compile(rb'(?<!\\)"type":\s*"response\.(?:completed|incomplete|failed)"')


def error_message(body: Any, fallback: str) -> str:
    """The message of an error body in any of the shapes engines use: OpenAI's ``{"error": {"message"}}``,
    vLLM's older flat ``{"object": "error", "message"}``, SGLang's ``{"error_message"}``, FastAPI's ``{"detail"}``."""
    if isinstance(body, Mapping):
        err = body.get("error")
        if isinstance(err, Mapping) and err.get("message"):
            return str(err["message"])
        for key in ("message", "error_message", "detail", "error"):
            if body.get(key):
                return str(body[key])
    if isinstance(body, str) and body.strip():
        return body.strip()[:500]
    return fallback


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


def _json_or_text(content: bytes) -> Any:
    try:
        return json.loads(content)
    except ValueError:
        return content.decode("utf-8", "replace")


class OpenAIHTTPBackend(Backend):
    """An OpenAI-compatible engine. Requests name the adapter (or the base model) in ``model``.

    Generation requests go through ``http`` (a lean keep-alive pool, :class:`HTTP1Pool` by default); every
    other call goes through the httpx ``client``.
    """

    def __init__(self, spec: BackendSpec, client: httpx.AsyncClient | None = None, http: Any = None) -> None:
        super().__init__(spec)
        headers = {"Authorization": f"Bearer {spec.api_key}"} if spec.api_key else {}
        self._client = client or httpx.AsyncClient(
            base_url=spec.url, headers=headers, timeout=httpx.Timeout(spec.health_timeout_s, connect=spec.connect_timeout_s),
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=8, keepalive_expiry=30.0))
        # No connection limit: the gateway bounds concurrency itself, and a pool wait would hide inside TTFT.
        self._http = http or HTTP1Pool(spec.url, headers, spec.connect_timeout_s)

    async def aclose(self) -> None:
        await self._client.aclose()
        await self._http.aclose()

    # -- naming --------------------------------------------------------------------------------------------
    def upstream_model(self, adapter: str | None) -> str:
        """The ``model`` value the engine expects for ``adapter`` (None: the base model)."""
        return adapter if adapter is not None else self.spec.upstream_model

    def changes_body(self, req: UpstreamRequest) -> bool:
        """Whether :meth:`upstream_body` differs from the client's body (else its bytes are relayed as is)."""
        return req.body.get("model") != self.upstream_model(req.adapter)

    def upstream_body(self, req: UpstreamRequest) -> dict[str, Any]:
        body = dict(req.body)
        body["model"] = self.upstream_model(req.adapter)
        return body

    def encode_body(self, req: UpstreamRequest) -> bytes:
        if req.raw_body is not None and not self.changes_body(req):
            return req.raw_body
        return json.dumps(self.upstream_body(req), separators=(",", ":"), ensure_ascii=False).encode()

    def payload_rewrite(self, req: UpstreamRequest) -> tuple[bytes, bytes] | None:
        """(old, new) bytes that put the client's model name back into streamed chunks, or None if the names
        agree. Engines serialise compactly (``"model":"x"``), so a bytes replace does it without parsing."""
        upstream, client = self.upstream_model(req.adapter), req.body.get("model")
        if not isinstance(client, str) or client == upstream:
            return None
        return b'"model":' + json.dumps(upstream).encode(), b'"model":' + json.dumps(client).encode()

    def _timeout(self, read_s: float) -> httpx.Timeout:
        return httpx.Timeout(read_s, connect=self.spec.connect_timeout_s)

    def _headers(self, req: UpstreamRequest) -> dict[str, str] | None:
        return {"X-Request-Id": req.request_id} if req.request_id else None

    def _transport_error(self, e: Exception, what: str) -> BackendError:
        timed_out = isinstance(e, (httpx.TimeoutException, TimeoutError))
        kind = "timed out" if timed_out else f"failed ({type(e).__name__}: {e})"
        return BackendError(f"backend '{self.spec.name}': {what} {kind}", retryable=True)

    def _answer_error(self, status: int, content: bytes, reason: str) -> UpstreamError:
        body = _json_or_text(content)
        return UpstreamError(status, f"backend '{self.spec.name}' answered {status}: {error_message(body, reason)}",
                             body if isinstance(body, dict) else None)

    # -- inference -----------------------------------------------------------------------------------------
    async def generate(self, req: UpstreamRequest) -> UpstreamResponse:
        path = req.endpoint.value
        try:
            response = await self._http.post(path, self.encode_body(req), req.timeout_s, self._headers(req))
            try:
                content = await response.read()
            finally:
                response.close()
        except OSError as e:
            raise self._transport_error(e, path) from None
        body = _json_or_text(content)
        if response.status >= 500 or not isinstance(body, dict):
            raise self._answer_error(response.status, content, _reason(response.status))
        if response.status == 200 and isinstance(req.body.get("model"), str):
            body["model"] = req.body["model"]
        return UpstreamResponse(response.status, body)

    async def stream_batches(self, req: UpstreamRequest) -> AsyncIterator[list[bytes]]:
        path = req.endpoint.value
        try:
            response = await self._http.post(path, self.encode_body(req), req.timeout_s, self._headers(req))
        except OSError as e:
            raise self._transport_error(e, path) from None
        rewrite = self.payload_rewrite(req)
        started = done = False
        try:
            if response.status != 200:
                raise self._answer_error(response.status, await response.read(), _reason(response.status))
            decoder = SSEDecoder()
            while (chunk := await response.next_chunk()) is not None:
                payloads = decoder.feed(chunk)
                if not payloads or done:
                    continue
                started = True
                done = payloads[-1] == DONE
                if req.endpoint is Endpoint.RESPONSES and RESPONSES_END.search(payloads[-1]):
                    payloads, done = [*payloads, DONE], True  # the relay's end marker; it is not sent on
                if rewrite is not None:
                    payloads = [p.replace(rewrite[0], rewrite[1], 1) for p in payloads]
                yield payloads
        except OSError as e:
            err = self._transport_error(e, "stream" if started else path)
            err.retryable = not started
            raise err from None
        finally:
            response.close()
        if not done:
            raise BackendError(f"backend '{self.spec.name}': stream ended without [DONE]", retryable=not started)

    # -- operations ----------------------------------------------------------------------------------------
    async def health(self) -> bool:
        try:
            r = await self._client.get("/health")
        except httpx.HTTPError:
            return False
        return r.status_code == 200

    async def list_models(self) -> ServedModels:
        data = await self._get_json("/v1/models")
        cards = data.get("data") if isinstance(data, dict) else None
        if not isinstance(cards, list):
            raise BackendError(f"backend '{self.spec.name}': /v1/models answered without a data list", retryable=True)
        bases = tuple(str(c["id"]) for c in cards if isinstance(c, dict) and "id" in c and not c.get("parent"))
        adapters = tuple(str(c["id"]) for c in cards if isinstance(c, dict) and "id" in c and c.get("parent"))
        return ServedModels(bases, adapters)

    async def scrape_metrics(self) -> EngineMetrics | None:
        try:
            r = await self._client.get("/metrics")
        except httpx.HTTPError:
            return None
        return parse_engine_metrics(r.text) if r.status_code == 200 else None

    async def _get_json(self, path: str) -> Any:
        try:
            r = await self._client.get(path)
        except httpx.HTTPError as e:
            raise self._transport_error(e, path) from None
        body = _json_or_text(r.content)
        if r.status_code != 200:
            raise UpstreamError(r.status_code, f"backend '{self.spec.name}': {path} answered {r.status_code}: "
                                               f"{error_message(body, r.reason_phrase)}", body if isinstance(body, dict) else None)
        return body

    async def _post_admin(self, path: str, payload: Mapping[str, Any]) -> tuple[int, Any]:
        """POST an adapter-management call; transport failures raise, every HTTP status is returned."""
        try:
            r = await self._client.post(path, json=dict(payload), timeout=self._timeout(self.spec.admin_timeout_s))
        except httpx.HTTPError as e:
            raise self._transport_error(e, path) from None
        return r.status_code, _json_or_text(r.content)
