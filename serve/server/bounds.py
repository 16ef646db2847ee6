"""Range checks of request fields, done before anything is tokenized or queued: each out-of-range value gets
a 400 naming its field, as OpenAI and vLLM define the range, instead of reaching the engine (a ``seed`` of
2^80 overflowed ``torch.Generator.manual_seed`` in the worker and came back as a 500).

:class:`RequestBounds` holds what the checks need to know about the served model, from its tokenizer and
layout; :func:`check_fields` checks one request; :func:`check_prompt_chars` refuses a prompt whose character
count alone proves it cannot fit the context, so a multi-megabyte prompt is never tokenized.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from serve.server.errors import HTTPError
from serve.server.protocol import MAX_PROMPTS, ChatCompletionRequest, CompletionRequest

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  #: ``seed`` is a signed 64-bit integer (OpenAI, vLLM)
MAX_STOP_STRINGS = 64  #: OpenAI allows 4 stop sequences; vLLM no limit. Each is searched after every token.
MAX_STOP_CHARS = 1024  #: longest stop string
#: An allowance for tokenizers with a normalizer, which can shorten text before it is split (Unicode
#: composition turns up to a few code points into one): the bound then stays a proof.
NORMALIZER_ALLOWANCE = 4


@dataclass(frozen=True, slots=True)
class RequestBounds:
    """What range checks know about the served model."""

    vocab_size: int  #: token ids lie in [0, vocab_size)
    max_model_len: int  #: context cap (prompt + output) in tokens
    max_chars_per_token: int  #: no token covers more characters of the input than this

    @classmethod
    def of(cls, tokenizer: Any, vocab_size: int, max_model_len: int) -> "RequestBounds":
        """From an HF tokenizer: the longest vocabulary entry, whose text form has one character per byte for
        byte-level BPE (and never fewer characters than the input text it covers)."""
        longest = max((len(t) for t in tokenizer.get_vocab()), default=1)
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None or getattr(backend, "normalizer", None) is not None:
            longest *= NORMALIZER_ALLOWANCE
        return cls(vocab_size, max_model_len, max(1, longest))


def _int_in(value: int | None, lo: int, hi: int, field: str, what: str) -> None:
    if value is not None and not lo <= value <= hi:
        raise HTTPError(400, f"{field} must be {what}, got {_short(value)}", field)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_fields(req: CompletionRequest | ChatCompletionRequest, bounds: RequestBounds) -> None:
    """Raise HTTPError(400, param=field) for the first field out of its range."""
    _int_in(req.seed, INT64_MIN, INT64_MAX, "seed", "a signed 64-bit integer")
    if req.top_k not in (-1, 0):
        _int_in(req.top_k, 1, bounds.vocab_size, "top_k", f"-1, 0 (all tokens) or in [1, {bounds.vocab_size}]")
    for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):  # (JSON may say NaN, Infinity)
        value = getattr(req, name, None)
        if isinstance(value, float) and not math.isfinite(value):
            raise HTTPError(400, f"{name} must be a finite number, got {value}", name)
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or ())
    if len(stop) > MAX_STOP_STRINGS:
        raise HTTPError(400, f"stop holds {len(stop)} strings; at most {MAX_STOP_STRINGS} are allowed", "stop")
    if any(len(s) > MAX_STOP_CHARS for s in stop):
        raise HTTPError(400, f"stop strings must be at most {MAX_STOP_CHARS} characters", "stop")
    prompt = getattr(req, "prompt", None)
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) and len(prompt) > MAX_PROMPTS:
        raise HTTPError(400, f"prompt holds {len(prompt)} prompts; at most {MAX_PROMPTS} are allowed", "prompt")
    ids = req.stop_token_ids or ()
    if len(ids) > bounds.vocab_size:
        raise HTTPError(400, f"stop_token_ids holds {len(ids)} ids, more than the vocabulary", "stop_token_ids")
    check_token_ids(ids, bounds, "stop_token_ids")


def check_token_ids(ids: Iterable[int], bounds: RequestBounds, field: str) -> None:
    """400 naming ``field`` if any id lies outside the vocabulary."""
    bad = next((t for t in ids if not 0 <= t < bounds.vocab_size), None)
    if bad is not None:
        raise HTTPError(400, f"{field}: token id {_short(bad)} is outside the vocabulary [0, {bounds.vocab_size})", field)


def check_prompt_chars(num_chars: int, bounds: RequestBounds, field: str) -> None:
    """400 if a text of ``num_chars`` characters must be at least ``max_model_len`` tokens long, which holds
    whenever ``num_chars >= max_model_len * max_chars_per_token``; decided without tokenizing."""
    if num_chars >= bounds.max_model_len * bounds.max_chars_per_token:
        raise HTTPError(400, f"This model's maximum context length is {bounds.max_model_len} tokens, but the prompt "
                             f"has {num_chars} characters, so at least {num_chars // bounds.max_chars_per_token} "
                             "tokens.", field)


def prompt_chars(prompt: Any) -> int:
    """Characters of the longest text prompt of a completions ``prompt`` (0 for token ids)."""
    if isinstance(prompt, str):
        return len(prompt)
    return max((len(p) for p in prompt if isinstance(p, str)), default=0) if isinstance(prompt, list) else 0


def message_chars(messages: Iterable[Any]) -> int:
    """Characters of every message's text: the chat template renders each of them into the prompt."""
    total = 0
    for m in messages:
        content = m.content if hasattr(m, "content") else None
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            total += sum(len(p["text"]) for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return total
