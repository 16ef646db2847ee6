"""SGLang's server, written from its documentation (it needs a GPU, so it is tested only against the
protocol fake in ``tests/serve/backends/fakes/sglang_fake.py``).

Followed documents: "OpenAI-Compatible APIs" and "LoRA Serving" (docs.sglang.io, advanced_features/lora):
an adapter is selected in OpenAI requests with ``"model": "<base-model>:<adapter-name>"``; dynamic loading is
``POST /load_lora_adapter {"lora_name", "lora_path"}`` and ``POST /unload_lora_adapter {"lora_name"}`` (no /v1
prefix), answering ``{"success": bool, "error_message": str|null, "loaded_adapters": {...}}`` with 200 or 400
(``python/sglang/srt/entrypoints/http_server.py``, ``LoRAUpdateOutput``). "SGLang Native APIs": ``GET
/health``, ``GET /get_server_info``. "Production Metrics": Prometheus at ``/metrics`` with
``sglang:num_running_reqs``, ``sglang:num_queue_reqs``, ``sglang:token_usage``, ``sglang:cache_hit_rate``.
SGLang's ``/v1/models`` lists only the base model, so loaded adapters are tracked from the
``loaded_adapters`` of each load/unload answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from serve.backends.base import BackendSpec, ServedModels, UpstreamError
from serve.backends.openai_http import OpenAIHTTPBackend, error_message


class SGLangBackend(OpenAIHTTPBackend):
    def __init__(self, spec: BackendSpec, client: httpx.AsyncClient | None = None) -> None:
        super().__init__(spec, client)
        self._loaded: tuple[str, ...] = ()

    def upstream_model(self, adapter: str | None) -> str:
        return f"{self.spec.upstream_model}:{adapter}" if adapter is not None else self.spec.upstream_model

    def _remember(self, body: Any) -> None:
        loaded = body.get("loaded_adapters") if isinstance(body, dict) else None
        if isinstance(loaded, dict):  # name -> path (older releases) or name -> LoRARef dict
            self._loaded = tuple(sorted(loaded))

    async def load_adapter(self, name: str, path: Path) -> None:
        status, body = await self._post_admin("/load_lora_adapter", {"lora_name": name, "lora_path": str(path)})
        self._remember(body)
        if status == 200 and isinstance(body, dict) and body.get("success", True):
            return
        message = error_message(body, str(status))
        if name in self._loaded and "already" in message:
            return
        raise UpstreamError(status if status >= 400 else 400,
                            f"backend '{self.spec.name}' could not load adapter '{name}': {message}",
                            body if isinstance(body, dict) else None)

    async def unload_adapter(self, name: str) -> None:
        status, body = await self._post_admin("/unload_lora_adapter", {"lora_name": name})
        self._remember(body)
        if (status == 200 and isinstance(body, dict) and body.get("success", True)) or name not in self._loaded:
            return
        raise UpstreamError(status if status >= 400 else 400,
                            f"backend '{self.spec.name}' could not unload adapter '{name}': {error_message(body, str(status))}",
                            body if isinstance(body, dict) else None)

    async def list_models(self) -> ServedModels:
        served = await super().list_models()
        return ServedModels(served.base_models, self._loaded)
