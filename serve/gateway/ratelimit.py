"""Per-key rate limits as token buckets: requests per minute and tokens per minute.

The bucket arithmetic is pure (:func:`refill`, :func:`retry_after_s`); :class:`RateLimiter` holds the buckets
of one gateway. Token usage is only known after a request finishes, so the token bucket admits a request
while it is positive and is charged the real prompt + completion tokens afterwards; it may go negative (a
debt that later requests wait out), which is how a long completion is paid for without guessing up front.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from serve.gateway.auth import KeySpec


@dataclass(slots=True)
class Bucket:
    """Mutable state of one token bucket."""

    level: float  #: tokens available now (may be negative for the token-count bucket)
    updated_s: float  #: monotonic time of ``level``


def refill(level: float, elapsed_s: float, rate_per_s: float, capacity: float) -> float:
    """Bucket level after ``elapsed_s`` seconds of refilling at ``rate_per_s``, capped at ``capacity``."""
    return min(capacity, level + max(0.0, elapsed_s) * rate_per_s)


def retry_after_s(level: float, needed: float, rate_per_s: float) -> float:
    """Seconds until a bucket at ``level`` holds ``needed`` tokens (0 if it already does)."""
    return max(0.0, (needed - level) / rate_per_s)


class RateLimiter:
    """The buckets of every key. A bucket starts full: capacity is one minute's worth of its rate."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._requests: dict[str, Bucket] = {}
        self._tokens: dict[str, Bucket] = {}

    def _level(self, buckets: dict[str, Bucket], key: str, per_min: float, now: float) -> Bucket:
        b = buckets.get(key)
        if b is None:
            b = buckets[key] = Bucket(per_min, now)
        else:
            b.level = refill(b.level, now - b.updated_s, per_min / 60.0, per_min)
            b.updated_s = now
        return b

    def try_admit(self, key: KeySpec) -> float | None:
        """Take one request from ``key``'s buckets; None if admitted, else seconds to wait (Retry-After)."""
        now = self._clock()
        waits = []
        if key.tokens_per_min is not None:
            tokens = self._level(self._tokens, key.name, key.tokens_per_min, now)
            if tokens.level <= 0:
                waits.append(retry_after_s(tokens.level, 1.0, key.tokens_per_min / 60.0))
        if key.requests_per_min is not None:
            reqs = self._level(self._requests, key.name, key.requests_per_min, now)
            if reqs.level < 1:
                waits.append(retry_after_s(reqs.level, 1.0, key.requests_per_min / 60.0))
            elif not waits:
                reqs.level -= 1
        return max(waits) if waits else None

    def charge_tokens(self, key: KeySpec, num_tokens: int) -> None:
        """Charge a finished request's prompt + completion tokens to ``key``."""
        if key.tokens_per_min is not None and num_tokens > 0:
            self._level(self._tokens, key.name, key.tokens_per_min, self._clock()).level -= num_tokens
