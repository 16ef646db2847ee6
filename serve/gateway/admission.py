"""Admission control: at most ``max_in_flight`` requests relayed at once, at most ``max_queue`` waiting for a
slot; a request arriving to a full queue is refused at once (503) instead of piling up."""

from __future__ import annotations

import asyncio
import time


class QueueFull(Exception):
    """The admission queue is full."""


class Admission:
    def __init__(self, max_in_flight: int, max_queue: int) -> None:
        self.max_in_flight, self.max_queue = max_in_flight, max_queue
        self._slots = asyncio.Semaphore(max_in_flight)
        self.num_waiting = 0
        self.num_active = 0

    async def acquire(self) -> float:
        """Wait for a slot; return the seconds waited. Raises QueueFull without waiting if the queue is full."""
        if not self._slots.locked():
            await self._slots.acquire()  # free slot: does not block
            self.num_active += 1
            return 0.0
        if self.num_waiting >= self.max_queue:
            raise QueueFull(f"gateway queue is full ({self.max_queue} waiting)")
        start = time.monotonic()
        self.num_waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.num_waiting -= 1
        self.num_active += 1
        return time.monotonic() - start

    def release(self) -> None:
        self.num_active -= 1
        self._slots.release()
