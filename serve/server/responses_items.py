"""OpenAI Responses API ⇄ chat completions: the request body, its ``input`` items as chat messages, and a chat
completion as a Response object.

The Responses endpoint (:mod:`serve.server.responses`) is a translation layer over the server's chat route, so
the chat template, tool plans (:mod:`serve.server.tools`), structured outputs, adapters and limits are the same
code. What cannot be translated (hosted tools, reasoning, images, background runs) is a 400 naming the field.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from serve.server.errors import HTTPError
from serve.server.protocol import ChatCompletionRequest, StreamOptions

#: input item types understood (a missing ``type`` with a ``role`` is a message, as in OpenAI's easy input)
TEXT_PARTS = ("input_text", "output_text", "text")


class ResponsesRequest(BaseModel):
    # Undeclared fields are kept so that each can be answered with a 400 naming it (see :func:`reject_unknown`).
    model_config = ConfigDict(extra="allow")

    model: str
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: dict[str, Any] | None = None  # {"format": {"type": "text" | "json_object" | "json_schema", ...}}
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stream: bool = False
    store: bool = True
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    truncation: str | None = None  # only "disabled" (OpenAI's default): a prompt too long is a 400


def reject_unknown(req: ResponsesRequest) -> None:
    """400 naming the first field this server does not implement (a null value counts as absent)."""
    for name, value in (req.model_extra or {}).items():
        if value is not None:
            raise HTTPError(400, f"'{name}' is not supported by this server's /v1/responses", name)
    if req.truncation not in (None, "disabled"):
        raise HTTPError(400, "only truncation 'disabled' is supported", "truncation")


def _text_of(content: Any, where: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise HTTPError(400, f"{where}.content must be a string or a list of input_text parts", "input")
    parts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in TEXT_PARTS:
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise HTTPError(400, f"{where}.content[{j}]: only input_text parts are supported, got {kind!r}", "input")
        parts.append({"type": "text", "text": str(part.get("text", ""))})
    return parts


def input_messages(items: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat messages for ``input``: a string is one user message; items are messages, ``function_call`` (an
    assistant tool call; consecutive ones become one assistant message) and ``function_call_output``."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise HTTPError(400, f"input[{i}].role must be user, assistant, system or developer, got {role!r}",
                                "input")
            out.append({"role": role, "content": _text_of(item.get("content"), f"input[{i}]")})
        elif kind == "function_call":
            call = {"id": item.get("call_id"), "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments", "{}")}}
            if out and out[-1]["role"] == "assistant" and out[-1].get("tool_calls"):
                out[-1]["tool_calls"].append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            out.append({"role": "tool", "tool_call_id": item.get("call_id"),
                        "content": output if isinstance(output, str) else _text_of(output, f"input[{i}]")})
        else:
            raise HTTPError(400, f"input[{i}]: item type {kind!r} is not supported", "input")
    return out


def _chat_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    if tools is None:
        return None
    out = []
    for i, t in enumerate(tools):
        if t.get("type") != "function":
            raise HTTPError(400, f"tools[{i}]: only function tools are supported, got {t.get('type')!r}", "tools")
        out.append({"type": "function", "function": {k: t[k] for k in ("name", "description", "parameters") if k in t}})
    return out


def _chat_tool_choice(choice: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    if isinstance(choice, dict):
        if choice.get("type") != "function":
            raise HTTPError(400, f"tool_choice type {choice.get('type')!r} is not supported", "tool_choice")
        return {"type": "function", "function": {"name": choice.get("name")}}
    return choice


def _response_format(text: dict[str, Any] | None) -> dict[str, Any] | None:
    fmt = (text or {}).get("format")
    if fmt is not None and not isinstance(fmt, dict):
        raise HTTPError(400, "text.format must be an object {\"type\": ...}", "text")
    if fmt is None or fmt.get("type") in (None, "text"):
        return None
    if fmt.get("type") == "json_schema":
        spec = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        return {"type": "json_schema", "json_schema": spec}
    return fmt  # json_object, or a type the chat path answers with a 400


def chat_request(req: ResponsesRequest, history: list[dict[str, Any]]) -> tuple[ChatCompletionRequest, list[dict]]:
    """The chat request that serves ``req`` after the ``history`` of a previous response, and the conversation
    (without instructions, which OpenAI does not carry over) to store."""
    conversation = history + input_messages(req.input)
    messages = ([{"role": "system", "content": req.instructions}] if req.instructions else []) + conversation
    body: dict[str, Any] = {
        "model": req.model, "messages": messages, "max_tokens": req.max_output_tokens, "tools": _chat_tools(req.tools),
        "tool_choice": _chat_tool_choice(req.tool_choice), "parallel_tool_calls": req.parallel_tool_calls,
        "response_format": _response_format(req.text), "stream": req.stream, "user": req.user}
    if req.stream:
        body["stream_options"] = StreamOptions(include_usage=True)
    body.update({k: v for k, v in (("temperature", req.temperature), ("top_p", req.top_p)) if v is not None})
    try:
        return ChatCompletionRequest.model_validate(body), conversation
    except ValidationError as e:
        err = e.errors()[0]
        raise HTTPError(400, f"{'.'.join(map(str, err['loc']))}: {err['msg']}", "input") from None


# -- output -------------------------------------------------------------------------------------------------
def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def message_item(text: str, item_id: str, status: str = "completed") -> dict[str, Any]:
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}


def call_item(call: dict[str, Any], item_id: str, status: str = "completed") -> dict[str, Any]:
    return {"type": "function_call", "id": item_id, "call_id": call["id"], "name": call["function"]["name"],
            "arguments": call["function"].get("arguments", ""), "status": status}


def output_items(message: dict[str, Any]) -> list[dict[str, Any]]:
    """A chat choice's message as Response output items: its text (if any) then one item per tool call."""
    items = [message_item(message["content"], new_id("msg"))] if message.get("content") else []
    items += [call_item(c, new_id("fc")) for c in message.get("tool_calls") or ()]
    return items or [message_item("", new_id("msg"))]


def items_as_messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Output items back as chat messages, for a conversation continued with ``previous_response_id``."""
    return input_messages([{"role": "assistant", "content": it["content"]} if it["type"] == "message" else it
                           for it in items])


def response_usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    return {"input_tokens": usage["prompt_tokens"], "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": usage["completion_tokens"], "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage["total_tokens"]}


def response_object(req: ResponsesRequest, rid: str, status: str, output: list[dict[str, Any]],
                    usage: dict[str, Any] | None, finish_reason: str | None = None) -> dict[str, Any]:
    """The Response object (``status`` "in_progress", "completed" or "incomplete")."""
    if status == "completed" and finish_reason == "length":
        status = "incomplete"
    return {
        "id": rid, "object": "response", "created_at": int(time.time()), "status": status, "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": req.instructions, "max_output_tokens": req.max_output_tokens, "model": req.model,
        "output": output, "parallel_tool_calls": req.parallel_tool_calls is not False,
        "previous_response_id": req.previous_response_id, "store": req.store,
        "temperature": 1.0 if req.temperature is None else req.temperature, "top_p": 1.0 if req.top_p is None else req.top_p,
        "tool_choice": req.tool_choice or "auto", "tools": req.tools or [], "metadata": req.metadata or {},
        "text": req.text or {"format": {"type": "text"}}, "truncation": "disabled", "user": req.user,
        "usage": response_usage(usage)}
