"""Reading a client's OpenAI request: the few fields the gateway needs, validated without rebuilding the
body (the engine validates the rest), and the prompt text that prefix-aware routing hashes."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from serve.backends.base import Endpoint
from serve.gateway.errors import GatewayError
from serve.routing.scores import text_prefix_keys, token_prefix_keys

TOKENS_PER_BLOCK = 16  # block size of token-id prompts: the engines' KV block


class RawHeaders(Mapping[str, str]):
    """ASGI's raw header list as a read-only mapping of lower-case names: nothing is decoded until asked for
    (the request path reads two or three headers of however many the client sent)."""

    __slots__ = ("_raw",)

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self._raw = raw

    def __getitem__(self, name: str) -> str:
        key = name.encode("latin-1")
        for k, v in self._raw:
            if k == key:
                return v.decode("latin-1")
        raise KeyError(name)

    def get(self, name: str, default: Any = None) -> Any:  # (Mapping.get would go through an exception)
        key = name.encode("latin-1")
        for k, v in self._raw:
            if k == key:
                return v.decode("latin-1")
        return default

    def __iter__(self):
        return (k.decode("latin-1") for k, _ in self._raw)

    def __len__(self) -> int:
        return len(self._raw)


@dataclass(frozen=True, slots=True)
class Incoming:
    """A generation request as it arrived over HTTP: all the request path reads of the HTTP layer."""

    headers: Mapping[str, str]  #: header names in lower case
    body: bytes


@dataclass(frozen=True, slots=True)
class ClientRequest:
    """A parsed generation request."""

    endpoint: Endpoint
    body: Mapping[str, Any]  #: the JSON as the client sent it
    model: str
    is_stream: bool
    include_usage: bool  #: the client asked for a usage chunk (stream_options.include_usage)
    raw: bytes | None = None  #: the JSON text ``body`` was parsed from (relayed as is when nothing changes it)


def parse_request(raw: bytes, endpoint: Endpoint) -> ClientRequest:
    """Parse and minimally validate; GatewayError(400) names the problem."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as e:  # (RecursionError: arrays or objects nested past the parser's depth)
        raise GatewayError(400, f"malformed JSON body: {e}") from None
    if not isinstance(body, dict):
        raise GatewayError(400, "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise GatewayError(400, "'model' is required and must be a string", "model")
    if endpoint is Endpoint.CHAT:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise GatewayError(400, "'messages' must be a non-empty list of message objects", "messages")
    elif endpoint is Endpoint.RESPONSES:
        if not isinstance(body.get("input"), (str, list)):
            raise GatewayError(400, "'input' is required: a string or a list of input items", "input")
    elif "prompt" not in body:
        raise GatewayError(400, "'prompt' is required", "prompt")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise GatewayError(400, "'stream' must be a boolean", "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise GatewayError(400, "'stream_options' must be an object", "stream_options")
    # (Responses streams: their usage rides in the final response.completed event, which is always relayed)
    usage_asked = endpoint is Endpoint.RESPONSES or bool(options and options.get("include_usage"))
    return ClientRequest(endpoint, body, model, stream, stream and usage_asked, raw)


def upstream_body(req: ClientRequest) -> tuple[Mapping[str, Any], bytes | None]:
    """The body sent upstream and its JSON text (None if it must be serialised): streams always ask for
    usage, so the gateway can count tokens. When the client sent no ``stream_options``, the option is
    spliced into the client's own bytes rather than re-serialising the whole body."""
    if not req.is_stream or req.include_usage:
        return req.body, req.raw
    body = {**req.body, "stream_options": {**(req.body.get("stream_options") or {}), "include_usage": True}}
    raw = req.raw.rstrip() if req.raw is not None and "stream_options" not in req.body else b""
    if raw.endswith(b"}"):  # a non-empty object ('model' is required): add the key before its end
        return body, raw[:-1] + b',"stream_options":{"include_usage":true}}'
    return body, None


def prompt_text(body: Mapping[str, Any]) -> str | list[int] | None:
    """The text (or token ids) whose prefix identifies the request's KV cache; None if there is no single prompt."""
    if "input" in body and "messages" not in body:  # a Responses API body: the chat messages it becomes
        items = body["input"] if isinstance(body["input"], list) else [{"role": "user", "content": body["input"]}]
        instructions = body.get("instructions")
        system = [{"role": "system", "content": instructions}] if isinstance(instructions, str) and instructions else []
        return prompt_text({"messages": system + items})
    messages = body.get("messages")
    if isinstance(messages, list):
        parts = []
        for m in messages:
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, list):  # content parts: keep the text ones (bodies are not validated yet here)
                content = "".join(t for p in content if isinstance(p, dict) and isinstance(t := p.get("text"), str))
            parts.append(f"<|{m.get('role') if isinstance(m, dict) else ''}|>{content or ''}\n")
        return "".join(parts)
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return prompt
    if isinstance(prompt, list) and len(prompt) == 1:
        return prompt_text({"prompt": prompt[0]})
    return None


def prefix_keys(body: Mapping[str, Any], salt: str, block_chars: int, max_blocks: int) -> tuple[int, ...]:
    """Chained prefix-block keys of the request's prompt (salted with model/adapter), for routing."""
    text = prompt_text(body)
    if text is None or max_blocks == 0:
        return ()
    if isinstance(text, list):
        return token_prefix_keys(text, TOKENS_PER_BLOCK, max_blocks, salt)
    return text_prefix_keys(text, block_chars, max_blocks, salt)
