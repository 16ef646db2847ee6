"""``POST /v1/responses`` and ``GET /v1/responses/{id}``: OpenAI's Responses API over the chat route.

A request is translated into a chat completion request (:mod:`serve.server.responses_items`) and served by the
same handler as ``/v1/chat/completions``, so validation, limits, adapters, tools and structured outputs behave
the same; its result (or its stream, :mod:`serve.server.responses_stream`) is translated back.

Stored responses (``store``, default true as OpenAI) are kept in memory, in this process only, so that
``previous_response_id`` can continue a conversation: the most recent :data:`STORE_SIZE` responses, each for
at most :data:`STORE_TTL_S` seconds. An id that is unknown, evicted or expired is a 404.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from serve.server.errors import HTTPError
from serve.server.protocol import ChatCompletionRequest
from serve.server.responses_items import (ResponsesRequest, chat_request, items_as_messages, new_id, output_items,
                                          reject_unknown, response_object)
from serve.server.responses_stream import response_events

STORE_SIZE = 1024  #: stored responses kept (least recently used evicted first)
STORE_TTL_S = 3600.0  #: seconds a stored response can be continued or fetched

ChatHandler = Callable[[ChatCompletionRequest, Request], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class StoredResponse:
    response: dict[str, Any]  #: the Response object as returned
    conversation: tuple[dict[str, Any], ...]  #: chat messages so far, the response's output included
    stored_at: float  #: time.monotonic() when stored


class ResponseStore:
    """A bounded LRU of stored responses with a time to live (mutable by design: the server's memory)."""

    def __init__(self, size: int = STORE_SIZE, ttl_s: float = STORE_TTL_S) -> None:
        self.size, self.ttl_s = size, ttl_s
        self._items: OrderedDict[str, StoredResponse] = OrderedDict()

    def put(self, response: dict[str, Any], conversation: list[dict[str, Any]]) -> None:
        full = tuple(conversation) + tuple(items_as_messages(response["output"]))
        self._items[response["id"]] = StoredResponse(response, full, time.monotonic())
        self._items.move_to_end(response["id"])
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def get(self, rid: str, param: str) -> StoredResponse:
        hit = self._items.get(rid)
        if hit is None or time.monotonic() - hit.stored_at > self.ttl_s:
            self._items.pop(rid, None)
            raise HTTPError(404, f"response '{rid}' not found (stored responses are kept for "
                                 f"{int(self.ttl_s)} s, the latest {self.size})", param)
        self._items.move_to_end(rid)
        return hit


def add_responses_routes(app: FastAPI, chat: ChatHandler, store: ResponseStore | None = None) -> None:
    """Register the Responses routes on ``app``, served through the chat handler ``chat``."""
    store = store or ResponseStore()

    @app.post("/v1/responses")
    async def create_response(req: ResponsesRequest, raw: Request):
        reject_unknown(req)
        history = list(store.get(req.previous_response_id, "previous_response_id").conversation) \
            if req.previous_response_id else []
        chat_req, conversation = chat_request(req, history)
        rid = new_id("resp")

        def keep(response: dict[str, Any]) -> None:
            if req.store:
                store.put(response, conversation)

        result = await chat(chat_req, raw)
        if isinstance(result, StreamingResponse):
            return StreamingResponse(response_events(req, rid, result.body_iterator, keep),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        (choice,) = result["choices"]
        response = response_object(req, rid, "completed", output_items(choice["message"]), result["usage"],
                                   choice["finish_reason"])
        keep(response)
        return response

    @app.get("/v1/responses/{rid}")
    async def get_response(rid: str):
        return store.get(rid, "response_id").response
