"""serve/gateway/auth.py and ratelimit.py: hashed keys, allow-lists, token buckets."""

from __future__ import annotations

import pytest

from serve.gateway.auth import KeySpec, KeyStore, bearer_token, hash_key
from serve.gateway.ratelimit import RateLimiter, refill, retry_after_s


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_keys_are_matched_by_digest() -> None:
    a, b = KeySpec("a", hash_key("key-a")), KeySpec("b", hash_key("key-b"), models=("smol", "sql-*"))
    store = KeyStore([a, b])
    assert store.lookup("key-b") is b and store.lookup("key-a") is a
    assert store.lookup("key-c") is None and store.lookup("") is None
    assert b.allows("sql-v1") and b.allows("smol") and not b.allows("smol-2") and a.allows("anything")
    assert not KeyStore([]).is_enabled


def test_bearer_token() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token(None, "xyz") == "xyz"
    assert bearer_token("Bearer ", None) is None


def test_bucket_math() -> None:
    assert refill(0.0, 30.0, 1.0, 60.0) == 30.0
    assert refill(50.0, 30.0, 1.0, 60.0) == 60.0
    assert refill(-10.0, 5.0, 1.0, 60.0) == -5.0
    assert retry_after_s(0.25, 1.0, 0.5) == pytest.approx(1.5)
    assert retry_after_s(3.0, 1.0, 0.5) == 0.0


def test_requests_per_minute() -> None:
    clock = Clock()
    limiter = RateLimiter(clock)
    key = KeySpec("k", hash_key("k"), requests_per_min=3)
    assert [limiter.try_admit(key) for _ in range(3)] == [None, None, None]
    wait = limiter.try_admit(key)
    assert wait == pytest.approx(20.0)  # one request every 20 s
    clock.now += 20.0
    assert limiter.try_admit(key) is None
    assert limiter.try_admit(key) == pytest.approx(20.0)


def test_tokens_per_minute_charges_after_the_fact() -> None:
    clock = Clock()
    limiter = RateLimiter(clock)
    key = KeySpec("k", hash_key("k"), tokens_per_min=600)  # 10 tokens/s
    assert limiter.try_admit(key) is None
    limiter.charge_tokens(key, 700)  # a long completion: the bucket goes 100 into debt
    wait = limiter.try_admit(key)
    assert wait == pytest.approx(10.1)
    clock.now += 10.2
    assert limiter.try_admit(key) is None


def test_keys_have_separate_buckets_and_unlimited_keys_pass() -> None:
    limiter = RateLimiter(Clock())
    a, b = KeySpec("a", hash_key("a"), requests_per_min=1), KeySpec("b", hash_key("b"), requests_per_min=1)
    assert limiter.try_admit(a) is None and limiter.try_admit(b) is None
    assert limiter.try_admit(a) is not None
    free = KeySpec("free", hash_key("f"))
    assert all(limiter.try_admit(free) is None for _ in range(1000))
    with pytest.raises(ValueError):
        KeySpec("bad", hash_key("x"), requests_per_min=0)
