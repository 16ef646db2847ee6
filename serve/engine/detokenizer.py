"""Incremental detokenization with stop strings.

Text is produced from a sliding window of token ids so that multi-token characters (UTF-8 split across
byte-level BPE tokens) and SentencePiece leading spaces come out right. When stop strings are set, the last
``max(len(stop)) - 1`` characters are held back until it is clear they do not start a stop string.
"""

from __future__ import annotations

from typing import Any

#: prompt tokens kept as decoding context, so the first output token gets its leading space right
PROMPT_CONTEXT_TOKENS = 6


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any, prompt_ids: list[int], stop: tuple[str, ...] = (), skip_special_tokens: bool = True,
                 include_stop: bool = False):
        self._tok = tokenizer
        self._skip = skip_special_tokens
        self._ids = list(prompt_ids[-PROMPT_CONTEXT_TOKENS:])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        self._stop = stop
        self._include_stop = include_stop  #: keep the stop string that ended the text (vLLM's include_stop_str_in_output)
        self._hold = max((len(s) for s in stop), default=1) - 1
        self.text = ""  #: output text so far (truncated before a stop string once one is found)
        self._emitted = 0
        self.stopped = False  #: a stop string was found

    def add(self, token_id: int) -> str:
        """Feed one generated token; return the text that is now final (possibly empty)."""
        if self.stopped:
            return ""
        self._ids.append(token_id)
        prefix = self._tok.decode(self._ids[self._prefix_offset:self._read_offset], skip_special_tokens=self._skip)
        full = self._tok.decode(self._ids[self._prefix_offset:], skip_special_tokens=self._skip)
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            before = len(self.text)
            self.text += full[len(prefix):]
            self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
            if self._stop:
                self._check_stop(max(0, before - self._hold))
        end = len(self.text) if self.stopped else len(self.text) - self._hold
        if end <= self._emitted:
            return ""
        out = self.text[self._emitted:end]
        self._emitted = end
        return out

    def flush(self) -> str:
        """At the end of generation: return whatever was held back."""
        out = self.text[self._emitted:]
        self._emitted = len(self.text)
        return out

    def _check_stop(self, search_from: int) -> None:
        hits = [(i, len(s)) for s in self._stop if (i := self.text.find(s, search_from)) >= 0]
        if hits:
            start, length = min(hits)
            self.text = self.text[:start + length if self._include_stop else start]
            self.stopped = True
