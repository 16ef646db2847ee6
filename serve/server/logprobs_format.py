"""The engine's token logprobs in OpenAI's response shapes.

Chat: ``{"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}],
"refusal": null}``. Completions: ``{"tokens", "token_logprobs", "top_logprobs": [{token: logprob}],
"text_offset"}``, the top dict also holding the chosen token (so up to k + 1 entries), as OpenAI and vLLM do.

``bytes`` are the token's own UTF-8 bytes (a character split over two tokens gives each its part), read off
the byte-level BPE vocabulary; ``token`` is those bytes decoded with replacement characters.
"""

from __future__ import annotations

from typing import Any

from serve.engine.logprobs import TokenLogprob

#: OpenAI's stand-in for a probability that underflows (JSON has no -inf)
MIN_LOGPROB = -9999.0


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, character → byte (the inverse of ``bytes_to_unicode``)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


class TokenStrings:
    """Text and bytes of single tokens of one tokenizer, cached (one per server)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        self._cache: dict[int, tuple[str, list[int]]] = {}
        self._special = set(getattr(tokenizer, "all_special_ids", ()) or ())
        self._special.update(getattr(tokenizer, "added_tokens_decoder", {}) or {})
        decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
        self._byte_level = _byte_decoder() if "ByteLevel" in repr(decoder) else None

    def get(self, token_id: int) -> tuple[str, list[int]]:
        """``(text, utf-8 bytes)`` of one token."""
        hit = self._cache.get(token_id)
        if hit is None:
            hit = self._cache[token_id] = self._compute(token_id)
        return hit

    def _compute(self, token_id: int) -> tuple[str, list[int]]:
        piece = self._tok.convert_ids_to_tokens(token_id)
        if token_id in self._special or not isinstance(piece, str):
            raw = (piece if isinstance(piece, str) else self._tok.decode([token_id])).encode()
        elif self._byte_level is not None and all(ch in self._byte_level for ch in piece):
            raw = bytes(self._byte_level[ch] for ch in piece)
        else:
            raw = self._tok.decode([token_id]).encode()
        return raw.decode("utf-8", errors="replace"), list(raw)


def _value(logprob: float) -> float:
    return max(logprob, MIN_LOGPROB)


def chat_logprobs(strings: TokenStrings, entries: list[TokenLogprob]) -> dict[str, Any]:
    """OpenAI chat ``choices[i].logprobs`` for ``entries`` (one per token of the content)."""
    content = []
    for e in entries:
        text, raw = strings.get(e.token_id)
        top = []
        for tid, value in e.top:
            t, b = strings.get(tid)
            top.append({"token": t, "logprob": _value(value), "bytes": b})
        content.append({"token": text, "logprob": _value(e.logprob), "bytes": raw, "top_logprobs": top})
    return {"content": content, "refusal": None}


def completion_logprobs(strings: TokenStrings, entries: list[TokenLogprob], text_offset: int = 0) -> dict[str, Any]:
    """OpenAI completions ``choices[i].logprobs``; offsets count characters from ``text_offset``."""
    tokens, values, tops, offsets = [], [], [], []
    offset = text_offset
    for e in entries:
        text, _ = strings.get(e.token_id)
        tokens.append(text)
        values.append(_value(e.logprob))
        top = {strings.get(tid)[0]: _value(v) for tid, v in e.top}
        top.setdefault(text, _value(e.logprob))
        tops.append(top)
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


def _top_dict(strings: TokenStrings, e: TokenLogprob) -> dict[str, float]:
    text = strings.get(e.token_id)[0]
    top = {strings.get(tid)[0]: _value(v) for tid, v in e.top}
    top.setdefault(text, _value(e.logprob))
    return top


def echo_completion_logprobs(strings: TokenStrings, prompt_ids: list[int],
                             prompt_entries: tuple[TokenLogprob | None, ...], entries: list[TokenLogprob]) -> dict[str, Any]:
    """Completions ``logprobs`` over the prompt then the output (``echo``): the first prompt token has
    ``null`` for its logprob and top dict (nothing predicts it), as in OpenAI's and vLLM's answers."""
    tokens = [strings.get(t)[0] for t in prompt_ids]
    values: list[float | None] = [None if e is None else _value(e.logprob) for e in prompt_entries]
    tops: list[dict[str, float] | None] = [None if e is None else _top_dict(strings, e) for e in prompt_entries]
    offsets = [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
    rest = completion_logprobs(strings, entries, sum(len(t) for t in tokens))
    return {"tokens": tokens + rest["tokens"], "token_logprobs": values + rest["token_logprobs"],
            "top_logprobs": tops + rest["top_logprobs"], "text_offset": offsets + rest["text_offset"]}


def prompt_logprobs_json(strings: TokenStrings, entries: tuple[TokenLogprob | None, ...]) -> list[dict | None]:
    """vLLM's ``prompt_logprobs``: per prompt token ``null`` (the first) or ``{token id: {"logprob", "rank",
    "decoded_token"}}`` holding the prompt token and the k most likely ones."""
    out: list[dict | None] = []
    for e in entries:
        if e is None:
            out.append(None)
            continue
        d = {str(tid): {"logprob": _value(v), "rank": r + 1, "decoded_token": strings.get(tid)[0]}
             for r, (tid, v) in enumerate(e.top)}
        d[str(e.token_id)] = {"logprob": _value(e.logprob), "rank": e.rank, "decoded_token": strings.get(e.token_id)[0]}
        out.append(d)
    return out
