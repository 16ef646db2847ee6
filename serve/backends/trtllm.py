"""TensorRT-LLM's ``trtllm-serve``, written from its documentation (it needs an NVIDIA GPU, so it is tested
only against the protocol fake in ``tests/serve/backends/fakes/trtllm_fake.py``).

Followed documents: "trtllm-serve" (nvidia.github.io/TensorRT-LLM, commands/trtllm-serve): OpenAI
``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``, plus ``/health`` (200 when ready) and
``/metrics`` (a JSON list of per-iteration stats, drained by each read: ``numActiveRequests``,
``numQueuedRequests``, ``kvCacheStats{usedNumBlocks,maxNumBlocks,cacheHitRate,...}``); and the request schema in
``tensorrt_llm/serve/openai_protocol.py``: requests forbid unknown fields, and an adapter is applied per request
with ``"lora_request": {"lora_name", "lora_int_id", "lora_path"}`` (the engine loads it into its LoRA cache on
first use). There is no load/unload endpoint, so loading an adapter here only registers it with the backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from serve.backends.base import BackendSpec, EngineMetrics, ServedModels, UpstreamRequest
from serve.backends.engine_metrics import parse_trtllm_iteration_stats
from serve.backends.openai_http import OpenAIHTTPBackend


def needs_renaming(body: Any) -> bool:
    fmt = body.get("response_format")
    return "num_speculative_tokens" in body or (isinstance(fmt, dict) and fmt.get("type") == "json_schema")


def rename_fields(body: dict[str, Any]) -> None:
    """TensorRT-LLM's names where they differ (issue #11): a JSON schema goes as ``response_format={"type": "json",
    "schema": ...}``, the form its docs show (guided-decoding feature page, openai_completion_client_json_schema.py)
    and every trtllm-serve release accepts; lorafleet's ``num_speculative_tokens`` is dropped, as its requests
    forbid unknown fields."""
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema" and isinstance(fmt.get("json_schema"), dict):
        body["response_format"] = {"type": "json", "schema": fmt["json_schema"].get("schema")}
    body.pop("num_speculative_tokens", None)


class TRTLLMBackend(OpenAIHTTPBackend):
    def __init__(self, spec: BackendSpec, client: httpx.AsyncClient | None = None) -> None:
        super().__init__(spec, client)
        self._adapters: dict[str, tuple[int, str]] = {}  # name -> (lora_int_id, path)
        self._next_id = 1
        self._last_metrics: EngineMetrics | None = None

    def upstream_model(self, adapter: str | None) -> str:
        return self.spec.upstream_model

    def changes_body(self, req: UpstreamRequest) -> bool:
        return req.adapter is not None or needs_renaming(req.body) or super().changes_body(req)

    def upstream_body(self, req: UpstreamRequest) -> dict[str, Any]:
        body = super().upstream_body(req)
        rename_fields(body)
        if req.adapter is not None:
            lora_int_id, path = self._adapters[req.adapter]
            body["lora_request"] = {"lora_name": req.adapter, "lora_int_id": lora_int_id, "lora_path": path}
        return body

    async def load_adapter(self, name: str, path: Path) -> None:
        known = self._adapters.get(name)
        if known is None or known[1] != str(path):
            # A new id for new weights: the engine's LoRA cache is keyed by lora_int_id.
            self._adapters[name] = (self._next_id, str(path))
            self._next_id += 1

    async def unload_adapter(self, name: str) -> None:
        self._adapters.pop(name, None)

    async def list_models(self) -> ServedModels:
        served = await super().list_models()
        return ServedModels(served.base_models, tuple(sorted(self._adapters)))

    async def scrape_metrics(self) -> EngineMetrics | None:
        try:
            r = await self._client.get("/metrics")
            stats = r.json() if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None
        if isinstance(stats, list):
            fresh = parse_trtllm_iteration_stats([s for s in stats if isinstance(s, dict)])
            # An empty list means no iteration ran since the last read: the engine is idle.
            self._last_metrics = fresh or EngineMetrics(num_running=0, num_waiting=0,
                                                        kv_cache_usage=getattr(self._last_metrics, "kv_cache_usage", None))
        return self._last_metrics
