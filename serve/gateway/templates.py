"""Registered prompt templates in the gateway: a chat request may name a compiled template and its variables
instead of sending ``messages``; the gateway renders the messages and routes by the template's static prefix.

The extension field, as the ``openai`` SDK sends it with ``extra_body``::

    client.chat.completions.create(model="smollm2", messages=[], extra_body={
        "prompt_template": {"name": "support", "variables": {"question": "Where is my order?"}}})

``version`` may be added to insist on one version of the template. Bad variables are a 400 whose ``param`` is
``prompt_template.variables.<name>``; an unknown template is a 404. Requests without the field are parsed
exactly as before. Templates come from the config's ``templates:`` list (compiled directories).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from lorafleet.templates import CompiledTemplate, VariableError, render_messages
from serve.backends.base import Endpoint
from serve.gateway.errors import GatewayError
from serve.gateway.requests import TOKENS_PER_BLOCK, ClientRequest, parse_request
from serve.routing.scores import token_prefix_keys

FIELD = "prompt_template"


@dataclass(frozen=True, slots=True)
class TemplatedRequest(ClientRequest):
    """A request rendered from a registered template; ``body`` holds the rendered ``messages``."""

    template: CompiledTemplate | None = None


def find_template(templates: tuple[CompiledTemplate, ...], name: str) -> CompiledTemplate | None:
    return next((t for t in templates if t.name == name), None)


def parse_templated_request(templates: tuple[CompiledTemplate, ...], raw: bytes, endpoint: Endpoint) -> ClientRequest:
    """:func:`parse_request`, plus rendering when the body names a template."""
    if FIELD.encode() not in raw:  # cheap test first: plain requests are parsed once, as before
        return parse_request(raw, endpoint)
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return parse_request(raw, endpoint)  # raises its usual 400
    if not isinstance(body, dict) or FIELD not in body:
        return parse_request(raw, endpoint)
    spec = body[FIELD]
    compiled, variables = _resolve(templates, spec, endpoint, body)
    try:
        messages = render_messages(compiled.template, variables)
    except VariableError as e:
        param = f"{FIELD}.variables.{e.variable}" if e.variable else f"{FIELD}.variables"
        raise GatewayError(400, f"prompt template '{compiled.name}': {e}", param) from None
    rendered = {k: v for k, v in body.items() if k != FIELD} | {"messages": messages}
    req = parse_request(json.dumps(rendered).encode(), endpoint)
    return TemplatedRequest(**{f.name: getattr(req, f.name) for f in fields(ClientRequest)}, template=compiled)


def _resolve(templates: tuple[CompiledTemplate, ...], spec: Any, endpoint: Endpoint,
             body: Mapping[str, Any]) -> tuple[CompiledTemplate, Mapping[str, Any]]:
    if endpoint is not Endpoint.CHAT:
        raise GatewayError(400, f"'{FIELD}' renders chat messages: use /v1/chat/completions", FIELD)
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
        raise GatewayError(400, f"'{FIELD}' must be an object {{\"name\": ..., \"variables\": {{...}}}}", FIELD)
    unknown = sorted(set(spec) - {"name", "variables", "version"})
    if unknown:
        raise GatewayError(400, f"'{FIELD}' has unknown field(s) {unknown}; known: name, variables, version", FIELD)
    if body.get("messages"):
        raise GatewayError(400, f"send either 'messages' or '{FIELD}', not both", "messages")
    compiled = find_template(templates, spec["name"])
    if compiled is None:
        known = ", ".join(sorted(t.name for t in templates)) or "none registered"
        raise GatewayError(404, f"unknown prompt template '{spec['name']}' (known: {known})", f"{FIELD}.name")
    if "version" in spec and str(spec["version"]) != compiled.version:
        raise GatewayError(400, f"prompt template '{compiled.name}' is version {compiled.version}, not "
                                f"{spec['version']}", f"{FIELD}.version")
    variables = spec.get("variables", {})
    if not isinstance(variables, Mapping):
        raise GatewayError(400, f"'{FIELD}.variables' must be an object", f"{FIELD}.variables")
    return compiled, variables


def template_prefix_keys(req: ClientRequest, salt: str, max_blocks: int) -> tuple[int, ...]:
    """Routing keys of a templated request: the compiled static prefix, hashed block by block as the engines
    hash their KV cache (the last key covers the whole block-aligned prefix). Empty for other requests, and
    for a static prefix shorter than one block."""
    if not isinstance(req, TemplatedRequest) or req.template is None:
        return ()
    return token_prefix_keys(req.template.prefix.token_ids, TOKENS_PER_BLOCK, max_blocks, salt)
