"""serve/engine/block_manager.py: allocation, ref counts, prefix caching and LRU eviction (no torch)."""

from __future__ import annotations

import itertools

import pytest

from serve.engine.block_manager import BlockManager, PrefixMatch
from serve.engine.sampling_params import SamplingParams
from serve.engine.sequence import Sequence

BS = 4
_ids = itertools.count()


def make_seq(tokens, adapter_key: int = 0) -> Sequence:
    return Sequence(seq_id=f"s{next(_ids)}", prompt_token_ids=list(tokens), params=SamplingParams(), adapter_key=adapter_key)


def admit(bm: BlockManager, seq: Sequence) -> PrefixMatch:
    """What the scheduler does for a new sequence: look up the prefix, allocate the rest, compute, publish."""
    prefix = bm.match_prefix(seq)
    assert bm.allocate_slots(seq, seq.num_tokens - prefix.num_tokens, prefix)
    seq.num_computed_tokens = seq.num_tokens
    bm.cache_full_blocks(seq)
    return prefix


def test_allocate_and_free() -> None:
    bm = BlockManager(num_blocks=10, block_size=BS)
    seq = make_seq(range(10))
    assert bm.allocate_slots(seq, 10)
    assert len(seq.block_table) == 3 and len(set(seq.block_table)) == 3
    assert bm.num_free_blocks == 7
    assert bm.usage == pytest.approx(0.3)
    seq.num_computed_tokens = 10
    assert bm.allocate_slots(seq, 2)  # tokens 10, 11 fit in the third block
    assert len(seq.block_table) == 3
    seq.num_computed_tokens = 12
    assert bm.allocate_slots(seq, 1)  # token 12 opens a fourth block
    assert len(seq.block_table) == 4 and bm.num_free_blocks == 6
    bm.free(seq)
    assert bm.num_free_blocks == 10 and bm.usage == 0.0
    assert seq.block_table == [] and seq.num_computed_tokens == 0


def test_allocate_returns_false_without_side_effects_when_short() -> None:
    bm = BlockManager(num_blocks=4, block_size=BS)
    big = make_seq(range(12))
    assert bm.allocate_slots(big, 12)
    other = make_seq(range(100, 108))
    assert not bm.allocate_slots(other, 8)  # needs 2 blocks, 1 free
    assert other.block_table == [] and other.num_computed_tokens == 0
    assert bm.num_free_blocks == 1 and len(big.block_table) == 3
    assert bm.allocate_slots(other, 4)


def test_allocate_with_prefix_fails_cleanly_when_short() -> None:
    bm = BlockManager(num_blocks=4, block_size=BS)
    a = make_seq(range(9))
    admit(bm, a)  # 3 blocks, 2 of them full and cached
    bm.free(a)
    filler = make_seq(range(100, 104))
    assert bm.allocate_slots(filler, 4)  # takes the one never-used block
    b = make_seq(list(range(8)) + [50, 51, 52, 53, 54])
    prefix = bm.match_prefix(b)
    assert prefix.num_tokens == 8
    # The 2 prefix blocks sit in the free pool, so they count against it: 2 + 2 new > 3 free.
    assert not bm.allocate_slots(b, 5, prefix)
    assert b.block_table == [] and b.num_computed_tokens == 0 and bm.num_free_blocks == 3
    assert bm.match_prefix(b) == prefix, "a failed allocation must not evict the prefix"
    assert bm.allocate_slots(b, 4, prefix)
    assert b.num_computed_tokens == 8 and b.block_table[:2] == list(prefix.block_ids)


def test_prefix_hits_only_full_blocks() -> None:
    bm = BlockManager(num_blocks=16, block_size=BS)
    admit(bm, make_seq(range(10)))  # blocks [0..3] [4..7] full, [8, 9] partial
    assert bm.match_prefix(make_seq(list(range(10)) + [99, 98])).num_tokens == 8
    assert bm.match_prefix(make_seq(list(range(6)) + [99, 98, 97])).num_tokens == 4
    assert bm.match_prefix(make_seq([99] + list(range(1, 10)))).num_tokens == 0
    assert bm.match_prefix(make_seq(range(3))).num_tokens == 0


def test_prefix_never_covers_the_last_token() -> None:
    bm = BlockManager(num_blocks=16, block_size=BS)
    admit(bm, make_seq(range(12)))
    assert bm.match_prefix(make_seq(range(8))).num_tokens == 4  # 2 full blocks cached, but token 7 must be computed
    assert bm.match_prefix(make_seq(range(9))).num_tokens == 8
    assert bm.match_prefix(make_seq(range(12))).num_tokens == 8


def test_prefix_hits_need_the_same_adapter() -> None:
    bm = BlockManager(num_blocks=16, block_size=BS)
    admit(bm, make_seq(range(9), adapter_key=7))
    assert bm.match_prefix(make_seq(range(9), adapter_key=7)).num_tokens == 8
    assert bm.match_prefix(make_seq(range(9), adapter_key=0)).num_tokens == 0
    assert bm.match_prefix(make_seq(range(9), adapter_key=8)).num_tokens == 0


def test_prefix_hash_depends_on_everything_before() -> None:
    bm = BlockManager(num_blocks=16, block_size=BS)
    admit(bm, make_seq([1, 1, 1, 1, 2, 2, 2, 2, 3]))
    # Block [2, 2, 2, 2] is cached only after [1, 1, 1, 1]; at the start of a sequence it is new.
    assert bm.match_prefix(make_seq([2, 2, 2, 2, 3])).num_tokens == 0
    assert bm.match_prefix(make_seq([1, 1, 1, 1, 2, 2, 2, 2, 5])).num_tokens == 8


def test_shared_blocks_are_ref_counted() -> None:
    bm = BlockManager(num_blocks=16, block_size=BS)
    a = make_seq(range(10))
    admit(bm, a)
    b = make_seq(list(range(8)) + [70, 71, 72])
    prefix = admit(bm, b)
    assert prefix.num_tokens == 8 and b.block_table[:2] == a.block_table[:2]
    assert b.num_cached_tokens == 0  # the scheduler, not the block manager, records per-request hits
    assert bm.num_free_blocks == 16 - 3 - 1  # a: 3 blocks; b: 2 shared + 1 own
    bm.free(a)
    assert bm.num_free_blocks == 16 - 3, "blocks b still uses must not be freed"
    bm.free(b)
    assert bm.num_free_blocks == 16
    stale = make_seq(range(4))
    stale.block_table = [0]  # a block table that outlived its blocks
    with pytest.raises(AssertionError, match="double free of block 0"):
        bm.free(stale)


def test_freed_blocks_stay_cached_until_evicted() -> None:
    bm = BlockManager(num_blocks=8, block_size=BS)
    a = make_seq(range(9))
    admit(bm, a)
    bm.free(a)
    b = make_seq(range(9))
    before = bm.num_free_blocks
    prefix = admit(bm, b)
    assert prefix.num_tokens == 8
    assert bm.num_free_blocks == before - 3, "taking cached blocks removes them from the free pool"


def test_eviction_is_lru_and_tail_first() -> None:
    bm = BlockManager(num_blocks=6, block_size=BS)
    a = make_seq(range(13))  # 4 blocks: 3 full (cached) + 1 partial
    admit(bm, a)
    bm.free(a)  # free order: 2 never-used blocks, then a's blocks tail first
    fill = make_seq(range(100, 112))  # 3 blocks: the 2 never-used ones, then a's partial tail block
    assert bm.allocate_slots(fill, 12)
    assert bm.match_prefix(make_seq(range(14))).num_tokens == 12, "full cached blocks must survive"
    more = make_seq(range(200, 208))
    assert bm.allocate_slots(more, 4)  # evicts a's last full block before its first two
    assert bm.match_prefix(make_seq(range(14))).num_tokens == 8
    more.num_computed_tokens = 4
    assert bm.allocate_slots(more, 4)
    assert bm.match_prefix(make_seq(range(14))).num_tokens == 4


def test_least_recently_freed_is_evicted_first() -> None:
    bm = BlockManager(num_blocks=4, block_size=BS)
    old, new = make_seq([1] * 5), make_seq([2] * 5)
    admit(bm, old)
    admit(bm, new)
    bm.free(old)
    bm.free(new)
    taker = make_seq(range(100, 108))
    assert bm.allocate_slots(taker, 8)  # two blocks: old's (freed first) go first
    assert bm.match_prefix(make_seq([1] * 5)).num_tokens == 0
    assert bm.match_prefix(make_seq([2] * 5)).num_tokens == 4


def test_prefix_caching_disabled() -> None:
    bm = BlockManager(num_blocks=8, block_size=BS, enable_prefix_caching=False)
    a = make_seq(range(9))
    admit(bm, a)
    assert bm.match_prefix(make_seq(range(9))) == PrefixMatch()


def test_prefix_only_attaches_to_an_empty_sequence() -> None:
    bm = BlockManager(num_blocks=8, block_size=BS)
    admit(bm, make_seq(range(9)))
    b = make_seq(range(9))
    prefix = bm.match_prefix(b)
    assert bm.allocate_slots(b, 1)
    with pytest.raises(ValueError, match="without blocks"):
        bm.allocate_slots(b, 1, prefix)


def test_prefix_query_stats() -> None:
    bm = BlockManager(num_blocks=8, block_size=BS)
    bm.record_prefix_query(10, 8)
    bm.record_prefix_query(5, 0)
    assert (bm.stats.num_query_tokens, bm.stats.num_hit_tokens) == (15, 8)
