"""A minimal OpenAI-style server that answers at once: the fixed point of ``lorafleet bench gateway``.

Whatever the prompt, a completion or chat request gets ``num_tokens`` (``max_tokens``, at most
:data:`MAX_TOKENS`) one-word tokens with no delay, streamed as SSE (one event per token, the final chunk with
``finish_reason``, the usage chunk when asked for, ``[DONE]``) or as one JSON body. It also answers
``/health``, ``/v1/models`` and an empty ``/metrics``, so a gateway can health-check it like an engine.

It is a bare ASGI callable (no framework) run by uvicorn with httptools and uvloop: what a proxy in front of
it adds is then most of what a client measures.

    python -m bench.fast_backend --port 8100
"""

from __future__ import annotations

import argparse
import json
import time

MAX_TOKENS = 64
MODEL = "fast"
_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


def _chunk(kind: str, model: str, rid: str, created: int, piece: str | None, finish: str | None) -> dict:
    if kind == "chat":
        delta = {} if piece is None else {"content": piece}
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [choice]}
    choice = {"index": 0, "text": piece or "", "logprobs": None, "finish_reason": finish}
    return {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": [choice]}


def _event(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def stream_events(kind: str, body: dict, rid: str) -> list[bytes]:
    """The SSE events of one streamed answer to ``body`` (an OpenAI completion or chat request)."""
    model, created = str(body.get("model", MODEL)), int(time.time())
    n = max(1, min(int(body.get("max_tokens") or 16), MAX_TOKENS))
    events = [_event(_chunk(kind, model, rid, created, f" w{i}", None)) for i in range(n)]
    events.append(_event(_chunk(kind, model, rid, created, None if kind == "chat" else "", "length")))
    if (body.get("stream_options") or {}).get("include_usage"):
        usage = {"prompt_tokens": 8, "completion_tokens": n, "total_tokens": 8 + n}
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
        events.append(_event({"id": rid, "object": obj, "created": created, "model": model, "choices": [], "usage": usage}))
    events.append(b"data: [DONE]\n\n")
    return events


def full_answer(kind: str, body: dict, rid: str) -> dict:
    """The non-streamed answer to ``body``."""
    model, n = str(body.get("model", MODEL)), max(1, min(int(body.get("max_tokens") or 16), MAX_TOKENS))
    text = "".join(f" w{i}" for i in range(n))
    choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"} if kind == "chat"
              else {"index": 0, "text": text, "logprobs": None, "finish_reason": "length"})
    return {"id": rid, "object": "chat.completion" if kind == "chat" else "text_completion", "created": int(time.time()),
            "model": model, "choices": [choice], "usage": {"prompt_tokens": 8, "completion_tokens": n, "total_tokens": 8 + n}}


class FastBackend:
    """The ASGI app."""

    def __init__(self) -> None:
        self.num_requests = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        path = scope["path"]
        if scope["method"] == "GET":
            if path == "/health":
                return await _send_body(send, 200, b"{}", _JSON)
            if path == "/v1/models":
                card = {"id": MODEL, "object": "model", "created": 0, "owned_by": "bench", "parent": None}
                return await _send_body(send, 200, json.dumps({"object": "list", "data": [card]}).encode(), _JSON)
            if path == "/metrics":
                return await _send_body(send, 200, b"", [(b"content-type", b"text/plain; version=0.0.4")])
            return await _send_body(send, 404, b'{"error":{"message":"not found"}}', _JSON)
        kind = {"/v1/completions": "text", "/v1/chat/completions": "chat"}.get(path)
        if kind is None:
            return await _send_body(send, 404, b'{"error":{"message":"not found"}}', _JSON)
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.num_requests += 1
        body, rid = json.loads(raw), f"cmpl-{self.num_requests}"
        if not body.get("stream"):
            return await _send_body(send, 200, json.dumps(full_answer(kind, body, rid)).encode(), _JSON)
        await send({"type": "http.response.start", "status": 200, "headers": _SSE})
        for event in stream_events(kind, body, rid):
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _send_body(send, status: int, body: bytes, headers: list) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8100)
    args = p.parse_args(argv)
    uvicorn.run(FastBackend(), host=args.host, port=args.port, loop="uvloop", http="httptools", log_level="warning",
                access_log=False, lifespan="on")


if __name__ == "__main__":
    main()
