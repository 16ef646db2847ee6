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
