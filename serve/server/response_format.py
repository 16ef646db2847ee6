"""OpenAI's ``response_format`` → the engine's :class:`StructuredOutput` (or None for plain text).

Accepted shapes (OpenAI's, also vLLM's): ``{"type": "text"}``, ``{"type": "json_object"}`` (any JSON object)
and ``{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}, "strict": ...}}``. The schema is
checked with xgrammar here, so a schema it cannot compile is a 400 naming the problem before any streaming
starts.
"""

from __future__ import annotations

from typing import Any

from lorafleet.errors import ConfigError
from serve.engine.sampling_params import StructuredOutput
from serve.engine.structured import check_schema
from serve.server.errors import HTTPError


def structured_output(response_format: dict[str, Any] | None) -> StructuredOutput | None:
    """Parse and check ``response_format``; HTTPError(400, param="response_format") on any problem."""
    if response_format is None:
        return None
    kind = response_format.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return StructuredOutput("json_object")
    if kind != "json_schema":
        raise HTTPError(400, f"response_format type must be 'text', 'json_object' or 'json_schema', got {kind!r}",
                        "response_format")
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict) or "schema" not in spec:
        raise HTTPError(400, "response_format json_schema must be an object with a 'schema'", "response_format")
    return schema_output(spec["schema"], "response_format")


def schema_output(schema: Any, param: str) -> StructuredOutput:
    """A ``json_schema`` output for ``schema`` after checking it compiles (400 naming ``param`` if not)."""
    try:
        check_schema(schema)
    except ConfigError as e:
        raise HTTPError(400, str(e), param) from None
    return StructuredOutput.json_schema(schema)
