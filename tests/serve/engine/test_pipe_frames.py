"""The server's end of the worker pipe (serve/engine/pipe_frames.py): messages far larger than the socket buffer
go both ways on a descriptor uvloop made non-blocking, in order, against a plain blocking ``Connection`` on the
other end (the worker's), and the worker closing its end reads as EOF."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import threading

import pytest
import uvloop

from serve.engine.pipe_frames import FramedPipe, frame


def echo_worker(conn) -> None:
    """What the worker does with its blocking Connection: receive, answer with something as big."""
    while True:
        msg = conn.recv()
        if msg == "stop":
            conn.close()
            return
        conn.send(("echo", msg))


def test_frames_are_what_connection_recv_reads() -> None:
    parent, child = mp.Pipe()
    for obj in ("x", b"y" * 100_000, {"k": list(range(10))}):
        parent.send_bytes(frame(obj)[4:])  # (send_bytes adds the same header)
        assert child.recv() == obj


def test_big_messages_both_ways_on_a_non_blocking_descriptor() -> None:
    parent, child = mp.Pipe()
    worker = threading.Thread(target=echo_worker, args=(child,), daemon=True)
    worker.start()
    big = [(i, -1.0) for i in range(200_000)]  # ~2.6 MB pickled: many times the socket buffer

    async def main() -> list:
        loop = asyncio.get_running_loop()
        got: list = []
        done = asyncio.Event()

        def readable() -> None:
            try:
                got.extend(pipe.receive())
            except EOFError:
                got.append("eof")
                loop.remove_reader(pipe.fd)
            if len(got) >= 4:
                done.set()

        loop.add_reader(parent.fileno(), readable)  # (uvloop makes the descriptor non-blocking here)
        pipe = FramedPipe(parent, loop)
        for msg in (big, "small", big):
            pipe.send(msg)  # never raises BlockingIOError, never blocks the loop
        pipe.send("stop")
        await asyncio.wait_for(done.wait(), 30)
        return got

    got = uvloop.run(main())
    assert got == [("echo", big), ("echo", "small"), ("echo", big), "eof"]


def test_a_closed_worker_end_is_eof() -> None:
    parent, child = mp.Pipe()
    child.close()

    async def main() -> None:
        pipe = FramedPipe(parent, asyncio.get_running_loop())
        with pytest.raises(EOFError):
            pipe.receive()

    asyncio.run(main())
