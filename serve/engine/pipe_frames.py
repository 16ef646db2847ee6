"""The server's end of the worker pipe, read and written without blocking the event loop.

``loop.add_reader`` under uvloop (libuv's ``uv_poll_init``) switches the pipe's descriptor to non-blocking, and
:class:`multiprocessing.connection.Connection` was not written for that: a message larger than the socket
buffer (a ``logit_bias`` on every token pickles to ~1 MB) made ``send`` raise ``BlockingIOError``, and a
message that had only partly arrived made ``recv`` raise it, and both were taken for the worker's death: every
later request got 503 (found by tests/reliability/test_hostile.py). :class:`FramedPipe` speaks the same
frames as ``Connection`` (a big-endian i32 length, or -1 then a u64 length, then the pickle), so the worker
keeps its ordinary blocking ``Connection``; it queues what the descriptor cannot take yet and flushes it when
the descriptor is writable, and it keeps partial messages until they are complete.
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections import deque
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from typing import Any

_READ_BYTES = 1 << 20
_INCOMPLETE = object()


def frame(obj: Any) -> bytes:
    """``obj`` pickled, with the length header ``Connection.recv`` expects."""
    data = bytes(ForkingPickler.dumps(obj))
    if len(data) > 0x7FFFFFFF:
        return struct.pack("!i", -1) + struct.pack("!Q", len(data)) + data
    return struct.pack("!i", len(data)) + data


class FramedPipe:
    """Non-blocking ``send``/``receive`` over a :class:`Connection`'s descriptor, on ``loop``."""

    def __init__(self, conn: Connection, loop: asyncio.AbstractEventLoop) -> None:
        self.conn, self.loop, self.fd = conn, loop, conn.fileno()
        os.set_blocking(self.fd, False)
        self._out: deque[memoryview] = deque()
        self._in = bytearray()

    def send(self, obj: Any) -> None:
        """Queue ``obj``; written now as far as the descriptor takes it, the rest when it is writable.
        Raises OSError (BrokenPipeError...) if the worker is gone."""
        self._out.append(memoryview(frame(obj)))
        if len(self._out) == 1:
            self._flush()

    def _flush(self) -> None:
        while self._out:
            try:
                written = os.write(self.fd, self._out[0])
            except BlockingIOError:
                break
            if written == len(self._out[0]):
                self._out.popleft()
            else:
                self._out[0] = self._out[0][written:]
        if self._out:
            self.loop.add_writer(self.fd, self._flush_from_loop)
        else:
            self.loop.remove_writer(self.fd)

    def _flush_from_loop(self) -> None:
        try:
            self._flush()
        except OSError:
            self.loop.remove_writer(self.fd)  # the reader sees the worker go and reports it

    def receive(self) -> list[Any]:
        """Every complete message that has arrived (possibly none). Raises EOFError once the worker closed its end."""
        while True:
            try:
                chunk = os.read(self.fd, _READ_BYTES)
            except BlockingIOError:
                break
            if not chunk:
                raise EOFError("the engine worker closed the pipe")
            self._in += chunk
            if len(chunk) < _READ_BYTES:
                break
        messages = []
        while (parsed := self._take_one()) is not _INCOMPLETE:
            messages.append(parsed)
        return messages

    def _take_one(self) -> Any:
        """The first complete message in the input buffer, removed from it; ``_INCOMPLETE`` if there is none."""
        buf = self._in
        if len(buf) < 4:
            return _INCOMPLETE
        (size,) = struct.unpack_from("!i", buf)
        start = 4
        if size == -1:
            if len(buf) < 12:
                return _INCOMPLETE
            (size,) = struct.unpack_from("!Q", buf, 4)
            start = 12
        if len(buf) < start + size:
            return _INCOMPLETE
        obj = ForkingPickler.loads(bytes(buf[start:start + size]))
        del buf[:start + size]
        return obj

    def close(self) -> None:
        self.loop.remove_writer(self.fd)
