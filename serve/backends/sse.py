"""Incremental decoder of Server-Sent Events: bytes in as they arrive, complete events' data out."""

from __future__ import annotations


class SSEDecoder:
    """Splits a ``text/event-stream`` body into event data payloads.

    Follows the WHATWG rules the OpenAI-compatible servers rely on: lines end in LF or CRLF, an empty line
    ends an event, ``data:`` lines (one optional space after the colon) are joined with LF, comment lines
    (``:``) and other fields (``event:``, ``id:``, ``retry:``) are ignored. Events without data are dropped.
    """

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add ``chunk`` and return the data of every event it completed, in order."""
        self._buf += chunk
        if b"\n" not in chunk:
            return []
        if not self._data and b"\r" not in self._buf:
            # What OpenAI-compatible engines send: events of one "data: " line each. Split on the blank lines.
            *events, rest = self._buf.split(b"\n\n")
            if all(e.startswith(b"data: ") and b"\n" not in e for e in events):
                self._buf = rest
                return [e[6:] for e in events]
        *lines, self._buf = self._buf.split(b"\n")
        events: list[bytes] = []
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if self._data:
                    events.append(b"\n".join(self._data))
                    self._data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)
        return events

    @property
    def has_partial_event(self) -> bool:
        """Whether bytes of an unfinished event are buffered (a stream cut off mid-event)."""
        return bool(self._buf.strip() or self._data)
