"""Bounds on what one request may ask for, from the config's ``limits:``: completion length (``max_tokens``,
``max_completion_tokens``), choices (``n``) and prompts per completion request. Checked before a request is
queued or routed, so no engine ever sees a request the operator ruled out (400 naming the field)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from serve.backends.base import Endpoint
from serve.gateway.config import LimitSettings
from serve.gateway.errors import GatewayError


def check_request_limits(body: Mapping[str, Any], endpoint: Endpoint, limits: LimitSettings) -> None:
    """Raise GatewayError(400) if ``body`` asks for more than ``limits`` allow. Values of the wrong type are
    left to the engine, which answers them with its own 400."""
    max_tokens, max_n, max_prompts = limits.max_tokens, limits.max_n, limits.max_prompts
    for name in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = body.get(name)
        if _is_int(value) and value > max_tokens:
            raise GatewayError(400, f"'{name}' is {value}, above this gateway's limit of {max_tokens}", name)
    n = body.get("n")
    if _is_int(n) and n > max_n:
        raise GatewayError(400, f"'n' is {n}, above this gateway's limit of {max_n} choices", "n")
    prompt = body.get("prompt")
    if endpoint is Endpoint.COMPLETIONS and isinstance(prompt, list) and prompt and not _is_int(prompt[0]):
        if len(prompt) > max_prompts:
            raise GatewayError(400, f"'prompt' holds {len(prompt)} prompts, above this gateway's limit of {max_prompts}",
                               "prompt")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
