"""What every engine kind shares: OpenAI completions and chat over HTTP (streamed or not), /health,
/v1/models and Prometheus /metrics, on one pooled httpx client per replica.

Subclasses change only what their engine does differently: how an adapter is named in a request, how
adapters are loaded, and the metrics format.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx

from lorafleet.errors import BackendError
from serve.backends.base import (Backend, BackendSpec, EngineMetrics, ServedModels, UpstreamError, UpstreamRequest,
                                 UpstreamResponse)
from serve.backends.engine_metrics import parse_engine_metrics
from serve.backends.sse import SSEDecoder


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


def _json_or_text(content: bytes) -> Any:
    try:
        return json.loads(content)
    except ValueError:
        return content.decode("utf-8", "replace")


class OpenAIHTTPBackend(Backend):
    """An OpenAI-compatible engine. Requests name the adapter (or the base model) in ``model``."""

    def __init__(self, spec: BackendSpec, client: httpx.AsyncClient | None = None) -> None:
        super().__init__(spec)
        headers = {"Authorization": f"Bearer {spec.api_key}"} if spec.api_key else {}
        # No pool limit: the gateway bounds concurrency itself, and a pool wait would hide inside TTFT.
        self._client = client or httpx.AsyncClient(
            base_url=spec.url, headers=headers, timeout=httpx.Timeout(spec.health_timeout_s, connect=spec.connect_timeout_s),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=256, keepalive_expiry=30.0))

    async def aclose(self) -> None:
        await self._client.aclose()

    # -- naming --------------------------------------------------------------------------------------------
    def upstream_model(self, adapter: str | None) -> str:
        """The ``model`` value the engine expects for ``adapter`` (None: the base model)."""
        return adapter if adapter is not None else self.spec.upstream_model

    def upstream_body(self, req: UpstreamRequest) -> dict[str, Any]:
        body = dict(req.body)
        body["model"] = self.upstream_model(req.adapter)
        return body

    def rewrite_payload(self, payload: bytes, req: UpstreamRequest) -> bytes:
        """Put the client's model name back into a streamed chunk. Engines serialise compactly
        (``"model":"x"``), so a bytes replace does it without parsing every chunk."""
        upstream, client = self.upstream_model(req.adapter), req.body.get("model")
        if not isinstance(client, str) or client == upstream:
            return payload
        return payload.replace(b'"model":' + json.dumps(upstream).encode(), b'"model":' + json.dumps(client).encode(), 1)

    def _timeout(self, read_s: float) -> httpx.Timeout:
        return httpx.Timeout(read_s, connect=self.spec.connect_timeout_s)

    def _headers(self, req: UpstreamRequest) -> dict[str, str]:
        return {"X-Request-Id": req.request_id} if req.request_id else {}

    def _transport_error(self, e: Exception, what: str) -> BackendError:
        kind = "timed out" if isinstance(e, httpx.TimeoutException) else f"failed ({type(e).__name__}: {e})"
        return BackendError(f"backend '{self.spec.name}': {what} {kind}", retryable=True)

    # -- inference -----------------------------------------------------------------------------------------
    async def generate(self, req: UpstreamRequest) -> UpstreamResponse:
        try:
            r = await self._client.post(req.endpoint.value, json=self.upstream_body(req), timeout=self._timeout(req.timeout_s),
                                        headers=self._headers(req))
        except httpx.HTTPError as e:
            raise self._transport_error(e, req.endpoint.value) from None
        body = _json_or_text(r.content)
        if r.status_code >= 500 or not isinstance(body, dict):
            raise UpstreamError(r.status_code, f"backend '{self.spec.name}' answered {r.status_code}: "
                                                f"{error_message(body, r.reason_phrase)}", body if isinstance(body, dict) else None)
        if r.status_code == 200 and isinstance(req.body.get("model"), str):
            body["model"] = req.body["model"]
        return UpstreamResponse(r.status_code, body)

    async def stream(self, req: UpstreamRequest) -> AsyncIterator[bytes]:
        request = self._client.build_request("POST", req.endpoint.value, json=self.upstream_body(req),
                                             timeout=self._timeout(req.timeout_s), headers=self._headers(req))
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as e:
            raise self._transport_error(e, req.endpoint.value) from None
        started = done = False
        try:
            if response.status_code != 200:
                body = _json_or_text(await response.aread())
                raise UpstreamError(response.status_code, f"backend '{self.spec.name}' answered {response.status_code}: "
                                                          f"{error_message(body, response.reason_phrase)}",
                                    body if isinstance(body, dict) else None)
            decoder = SSEDecoder()
            async for chunk in response.aiter_bytes():
                for payload in decoder.feed(chunk):
                    started = True
                    done = payload == b"[DONE]"
                    yield self.rewrite_payload(payload, req)
        except httpx.HTTPError as e:
            what = "stream" if started else req.endpoint.value
            err = self._transport_error(e, what)
            err.retryable = not started
            raise err from None
        finally:
            await response.aclose()
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
