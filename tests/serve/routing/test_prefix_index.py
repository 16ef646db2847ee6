"""serve/routing/prefix_index.py."""

from __future__ import annotations

import pytest

from serve.routing.prefix_index import PrefixIndex


def test_longest_match_per_replica() -> None:
    idx = PrefixIndex()
    idx.record((1, 2, 3, 4), "a")
    idx.record((1, 2, 9), "b")
    assert idx.num_cached_blocks((1, 2, 3, 4, 5), "a") == 4
    assert idx.num_cached_blocks((1, 2, 3, 4, 5), "b") == 2
    assert idx.num_cached_blocks((7, 8), "a") == 0
    assert idx.num_cached_blocks((), "a") == 0


def test_capacity_evicts_least_recently_used_keys() -> None:
    idx = PrefixIndex(max_keys=4)
    idx.record((1, 2), "a")
    idx.record((3, 4), "a")
    idx.record((1,), "b")  # touches key 1
    idx.record((5,), "a")  # evicts key 2, the least recently used
    assert len(idx) == 4
    assert idx.num_cached_blocks((1, 2), "a") == 1


def test_forget_replica() -> None:
    idx = PrefixIndex()
    idx.record((1, 2), "a")
    idx.record((1,), "b")
    idx.forget_replica("a")
    assert idx.num_cached_blocks((1, 2), "a") == 0
    assert idx.num_cached_blocks((1, 2), "b") == 1
    assert len(idx) == 1


def test_rejects_zero_capacity() -> None:
    with pytest.raises(ValueError):
        PrefixIndex(0)


def test_blocks_per_replica_follow_records_evictions_and_forgets() -> None:
    idx = PrefixIndex(max_keys=4)
    idx.record((1, 2, 3), "a")
    idx.record((1, 2), "b")
    idx.record((1, 2), "b")  # already held: not counted twice
    assert (idx.num_blocks("a"), idx.num_blocks("b"), idx.num_blocks("c")) == (3, 2, 0)
    idx.record((7, 8), "b")  # 5 keys > 4: key 3 (least recently used, held by a) is evicted
    assert (idx.num_blocks("a"), idx.num_blocks("b")) == (2, 4)
    idx.forget_replica("b")
    assert (idx.num_blocks("a"), idx.num_blocks("b")) == (2, 0)


def test_a_full_index_costs_little_memory_per_key() -> None:
    """The index fills up over hours of varied prompts; what it holds per key is what the gateway grows by
    (a set of replica names per key took ~440 bytes; a bit mask ~210)."""
    import tracemalloc

    tracemalloc.start()
    try:
        idx = PrefixIndex(max_keys=20_000)
        for i in range(8_000):
            keys = [hash((i, d)) for d in range(5)]
            idx.record(keys, f"r{i % 2}")
            if i % 3 == 0:
                idx.record(keys[:2], f"r{(i + 1) % 2}")
        per_key = tracemalloc.get_traced_memory()[0] / len(idx)
    finally:
        tracemalloc.stop()
    assert len(idx) == 20_000
    assert per_key < 300, per_key
    assert idx.num_blocks("r0") + idx.num_blocks("r1") >= 20_000
