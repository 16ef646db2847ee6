"""vLLM's ``cache_salt`` on the real engine: only requests with the same salt (and adapter) share prefix-cache
blocks, and a salted request does not reuse the unsalted ones."""

from __future__ import annotations

from serve.engine.engine import cache_key
from serve.engine.sampling_params import SamplingParams

PROMPT = list(range(1000, 1040))  # 40 tokens no other test uses: two full 16-token blocks


def cached_tokens(engine, rid: str, salt: str | None) -> int:
    engine.add_request(rid, PROMPT, SamplingParams(max_tokens=1, temperature=0.0, cache_salt=salt))
    first = None
    while engine.has_unfinished:
        for out in engine.step():
            first = first or out
    return first.num_cached_tokens


def test_only_equal_salts_share_the_prefix_cache(engine) -> None:
    assert cached_tokens(engine, "salt-a1", "tenant-a") == 0
    assert cached_tokens(engine, "salt-a2", "tenant-a") == 32, "the same salt reuses both full blocks"
    assert cached_tokens(engine, "salt-b", "tenant-b") == 0
    assert cached_tokens(engine, "salt-none", None) == 0, "an unsalted request does not see salted blocks"
    assert cached_tokens(engine, "salt-none2", None) == 32


def test_cache_keys_differ_by_adapter_and_salt() -> None:
    keys = {cache_key(a, s) for a in (None, "a0", "a1") for s in (None, "x", "y")}
    assert len(keys) == 9 and cache_key(None, None) == 0
