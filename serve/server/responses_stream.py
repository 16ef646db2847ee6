"""The Responses API event stream, made from the chat route's own stream.

Chat chunks (``data: {...}``) come in; Responses events go out (``event: <type>`` plus ``data``, each with a
``sequence_number``): ``response.created``, ``response.in_progress``, then per output item
``response.output_item.added``, for text ``response.content_part.added`` / ``response.output_text.delta`` (one per
chunk) / ``response.output_text.done`` / ``response.content_part.done``, for a tool call
``response.function_call_arguments.delta`` / ``.done``, then ``response.output_item.done``; last
``response.completed`` (``response.incomplete`` when max_output_tokens cut the output). An engine error midway is
an ``error`` event followed by ``response.failed``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from serve.server.responses_items import ResponsesRequest, call_item, message_item, new_id, response_object


class _Events:
    """Numbers and formats events; keeps the output items as they are built."""

    def __init__(self) -> None:
        self.seq = 0
        self.items: list[dict[str, Any]] = []
        self.open: dict[str, Any] | None = None  #: the item being streamed (its index is len(items) - 1)
        self.usage: dict[str, Any] | None = None  #: the chat stream's usage block, once sent
        self.finish: str | None = None  #: the chat choice's finish reason, once sent
        self.failed = False  #: an error event ended the stream

    def event(self, kind: str, **fields: Any) -> str:
        body = {"type": kind, **fields, "sequence_number": self.seq}
        self.seq += 1
        return f"event: {kind}\ndata: {json.dumps(body, separators=(',', ':'))}\n\n"

    @property
    def index(self) -> int:
        return len(self.items) - 1

    def start(self, item: dict[str, Any]) -> list[str]:
        out = self.close()
        self.items.append(item)
        self.open = item
        out.append(self.event("response.output_item.added", output_index=self.index, item=dict(item, content=[])
                              if item["type"] == "message" else item))
        if item["type"] == "message":
            out.append(self.event("response.content_part.added", item_id=item["id"], output_index=self.index,
                                  content_index=0, part=_part("")))
        return out

    def text(self, delta: str) -> list[str]:
        out = [] if self.open is not None and self.open["type"] == "message" else self.start(
            message_item("", new_id("msg"), "in_progress"))
        part = self.open["content"][0]
        part["text"] += delta
        return out + [self.event("response.output_text.delta", item_id=self.open["id"], output_index=self.index,
                                 content_index=0, delta=delta, logprobs=[])]

    def arguments(self, delta: str) -> list[str]:
        self.open["arguments"] += delta
        return [self.event("response.function_call_arguments.delta", item_id=self.open["id"], output_index=self.index,
                           delta=delta)]

    def close(self) -> list[str]:
        item, self.open = self.open, None
        if item is None:
            return []
        item["status"] = "completed"
        i, out = self.index, []
        if item["type"] == "message":
            text = item["content"][0]["text"]
            out.append(self.event("response.output_text.done", item_id=item["id"], output_index=i, content_index=0,
                                  text=text, logprobs=[]))
            out.append(self.event("response.content_part.done", item_id=item["id"], output_index=i, content_index=0,
                                  part=_part(text)))
        else:
            out.append(self.event("response.function_call_arguments.done", item_id=item["id"], output_index=i,
                                  name=item["name"], arguments=item["arguments"]))
        out.append(self.event("response.output_item.done", output_index=i, item=item))
        return out


def _part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _chunks(lines: str) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in lines.split("\n") if line.startswith("data: {")]


def _feed(ev: _Events, delta: dict[str, Any]) -> list[str]:
    out = ev.text(delta["content"]) if delta.get("content") else []
    for call in delta.get("tool_calls") or ():
        fn = call.get("function") or {}
        if call.get("id"):  # a new call: its name and (all or the first piece of) its arguments
            out += ev.start(call_item({"id": call["id"], "function": {"name": fn.get("name"), "arguments": ""}},
                                      new_id("fc"), "in_progress"))
        if fn.get("arguments"):
            out += ev.arguments(fn["arguments"])
    return out


def _translate(ev: _Events, req: ResponsesRequest, rid: str, lines: str | bytes) -> list[str]:
    """The events for one piece of the chat stream (noting its usage and finish reason on ``ev``)."""
    out: list[str] = []
    for chunk in _chunks(lines if isinstance(lines, str) else lines.decode()):
        if "error" in chunk:
            err = chunk["error"]
            out.append(ev.event("error", code=str(err.get("code")), message=err.get("message"), param=err.get("param")))
            failed = response_object(req, rid, "failed", ev.items, None)
            failed["error"] = {"code": "server_error", "message": err.get("message")}
            ev.failed = True
            return out + [ev.event("response.failed", response=failed)]
        ev.usage = chunk.get("usage") or ev.usage
        for choice in chunk.get("choices") or ():
            out += _feed(ev, choice.get("delta") or {})
            ev.finish = choice.get("finish_reason") or ev.finish
    return out


async def response_events(req: ResponsesRequest, rid: str, chat_stream: AsyncIterator[str],
                          on_done: Callable[[dict[str, Any]], None]) -> AsyncIterator[str]:
    """Responses events for one streamed chat completion; ``on_done`` gets the final Response object."""
    ev = _Events()
    yield ev.event("response.created", response=response_object(req, rid, "in_progress", [], None))
    yield ev.event("response.in_progress", response=response_object(req, rid, "in_progress", [], None))
    # closed on every path, so a client that leaves mid-stream aborts the engine request at once
    async with contextlib.aclosing(chat_stream) as chat_chunks:
        async for lines in chat_chunks:
            for event in _translate(ev, req, rid, lines):
                yield event
            if ev.failed:
                return
    for event in ev.close():
        yield event
    if not ev.items:
        ev.items.append(message_item("", new_id("msg")))
    final = response_object(req, rid, "completed", ev.items, ev.usage, ev.finish)
    on_done(final)
    yield ev.event(f"response.{final['status']}", response=final)
