"""vLLM's ``POST /tokenize`` and ``POST /detokenize`` with its request and response JSON.

Tokenize takes ``{"model", "prompt", "add_special_tokens": true}`` or ``{"model", "messages",
"add_generation_prompt": true, "add_special_tokens": false, "tools"}`` (the chat template renders the
messages as ``/v1/chat/completions`` would) and answers ``{"count", "max_model_len", "tokens"}``, plus
``"token_strs"`` (the vocabulary's pieces) when ``return_token_strs`` is set. Detokenize takes ``{"model",
"tokens"}`` and answers ``{"prompt"}``. ``model`` may be left out; when given it must be served.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from serve.server.errors import HTTPError
from serve.server.protocol import ChatMessage
from serve.server.tools import plan_tools, prompt_token_ids


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None


class TokenizeCompletionRequest(_Body):
    prompt: str
    add_special_tokens: bool = True
    return_token_strs: bool = False


class TokenizeChatRequest(_Body):
    messages: list[ChatMessage] = Field(min_length=1)
    add_generation_prompt: bool = True
    add_special_tokens: bool = False  # the chat template adds what the model needs (vLLM's default)
    return_token_strs: bool = False
    tools: list[dict[str, Any]] | None = None


class DetokenizeRequest(_Body):
    tokens: list[int]


def tokenize_ids(tokenizer: Any, req: TokenizeCompletionRequest | TokenizeChatRequest) -> list[int]:
    """The token ids ``req`` asks for (a plain prompt, or chat messages through the template)."""
    if isinstance(req, TokenizeCompletionRequest):
        return tokenizer(req.prompt, add_special_tokens=req.add_special_tokens).input_ids
    plan = plan_tools(req.tools, "auto" if req.tools else None, None)
    ids = prompt_token_ids(tokenizer, [m.model_dump(exclude_none=True) for m in req.messages], plan,
                           req.add_generation_prompt)
    bos = getattr(tokenizer, "bos_token_id", None)
    if req.add_special_tokens and bos is not None and ids[:1] != [bos]:
        ids = [bos, *ids]
    return ids


def add_tokenize_routes(app: FastAPI, tokenizer: Any, vocab_size: int, max_model_len: int,
                        check_model: Callable[[str], Any]) -> None:
    """Register ``/tokenize`` and ``/detokenize``; ``check_model(name)`` raises for a model not served."""

    @app.post("/tokenize")
    async def tokenize(req: TokenizeChatRequest | TokenizeCompletionRequest) -> dict:
        if req.model is not None:
            check_model(req.model)
        ids = await asyncio.to_thread(tokenize_ids, tokenizer, req)  # (off the event loop: bodies reach 16 MiB)
        body: dict[str, Any] = {"count": len(ids), "max_model_len": max_model_len, "tokens": ids}
        if req.return_token_strs:
            body["token_strs"] = tokenizer.convert_ids_to_tokens(ids)
        return body

    @app.post("/detokenize")
    async def detokenize(req: DetokenizeRequest) -> dict:
        if req.model is not None:
            check_model(req.model)
        bad = next((t for t in req.tokens if not 0 <= t < vocab_size), None)
        if bad is not None:
            raise HTTPError(400, f"tokens: token id {bad} is outside the vocabulary [0, {vocab_size})", "tokens")
        return {"prompt": tokenizer.decode(req.tokens)}
