"""Choices of an n > 1 request share the prompt's KV blocks: BlockManager.fork (ref-counts), copy-on-write at
the first write into a shared block, and the scheduler starting the forks once the prompt is computed.
No torch, no model."""

from __future__ import annotations

import pytest

from serve.engine.block_manager import BlockCopy, BlockManager
from serve.engine.sampling_params import SamplingParams
from serve.engine.scheduler import Scheduler
from serve.engine.sequence import Sequence, SeqStatus

BS = 4


def seq(name: str, num_prompt_tokens: int, n: int = 1, index: int = 0) -> Sequence:
    return Sequence(seq_id=name, prompt_token_ids=list(range(100, 100 + num_prompt_tokens)),
                    params=SamplingParams(max_tokens=8, temperature=0.0, n=n), index=index)


def prefilled(bm: BlockManager, num_prompt_tokens: int) -> Sequence:
    """A sequence whose prompt is computed (as after its prefill step)."""
    s = seq("p", num_prompt_tokens)
    assert bm.allocate_slots(s, num_prompt_tokens)
    s.num_computed_tokens = num_prompt_tokens
    bm.cache_full_blocks(s)
    return s


def ref_counts(bm: BlockManager, s: Sequence) -> list[int]:
    return [bm._blocks[b].ref_count for b in s.block_table]


def test_fork_shares_every_block_by_reference() -> None:
    bm = BlockManager(16, BS)
    parent = prefilled(bm, 10)  # blocks: full, full, partial (2 of 4)
    children = [seq(f"c{i}", 10, index=i) for i in (1, 2, 3)]
    free_before = bm.num_free_blocks
    for c in children:
        bm.fork(parent, c)
    assert bm.num_free_blocks == free_before, "forking allocates nothing"
    for c in children:
        assert c.block_table == parent.block_table and c.num_computed_tokens == 10
    assert ref_counts(bm, parent) == [4, 4, 4]
    with pytest.raises(ValueError):
        bm.fork(parent, children[0])  # only into a sequence without blocks


def test_first_write_into_the_shared_partial_block_copies_it() -> None:
    bm = BlockManager(16, BS)
    parent = prefilled(bm, 10)
    child = seq("c1", 10, index=1)
    bm.fork(parent, child)
    shared_tail = parent.block_table[2]
    parent.token_ids.append(7)  # the parent's first output token is written at position 10 (block 2)
    assert bm.allocate_slots(parent, 1)
    assert parent.block_table[:2] == child.block_table[:2], "full prompt blocks stay shared"
    assert parent.block_table[2] != shared_tail and child.block_table[2] == shared_tail
    assert bm.take_block_copies() == (BlockCopy(shared_tail, parent.block_table[2]),)
    assert bm.take_block_copies() == (), "copies are handed out once"
    # The child is now the tail's only holder: it writes in place, no copy.
    child.token_ids.append(9)
    assert bm.allocate_slots(child, 1)
    assert child.block_table[2] == shared_tail and bm.take_block_copies() == ()
    assert ref_counts(bm, parent) == [2, 2, 1] and ref_counts(bm, child) == [2, 2, 1]


def test_block_aligned_prompt_needs_no_copy() -> None:
    bm = BlockManager(16, BS)
    parent = prefilled(bm, 8)
    child = seq("c1", 8, index=1)
    bm.fork(parent, child)
    for s in (parent, child):
        s.token_ids.append(1)
        assert bm.allocate_slots(s, 1)
    assert bm.take_block_copies() == ()
    assert parent.block_table[:2] == child.block_table[:2] and parent.block_table[2] != child.block_table[2]


def test_copy_on_write_without_a_free_block_fails_cleanly() -> None:
    bm = BlockManager(3, BS)
    parent = prefilled(bm, 10)  # takes all 3 blocks
    child = seq("c1", 10, index=1)
    bm.fork(parent, child)
    parent.token_ids.append(7)
    table = list(parent.block_table)
    assert not bm.allocate_slots(parent, 1)
    assert parent.block_table == table and bm.take_block_copies() == () and ref_counts(bm, parent) == [2, 2, 2]


def test_shared_blocks_return_to_the_pool_when_the_last_holder_frees() -> None:
    bm = BlockManager(16, BS)
    parent = prefilled(bm, 10)
    child = seq("c1", 10, index=1)
    bm.fork(parent, child)
    bm.free(parent)
    assert bm.num_free_blocks == 13 and ref_counts(bm, child) == [1, 1, 1]
    bm.free(child)
    assert bm.num_free_blocks == 16


def test_scheduler_forks_after_the_prompt_and_computes_it_once() -> None:
    sched = Scheduler(BlockManager(32, BS), max_num_seqs=8, max_num_batched_tokens=64)
    first = seq("r", 10, n=3)
    first.forks = [seq(f"r#{i}", 10, n=3, index=i) for i in (1, 2)]
    sched.add(first)
    out = sched.schedule()
    assert [(it.seq.seq_id, it.num_new_tokens) for it in out.scheduled] == [("r", 10)]
    sched.commit(out)
    forks, first.forks = first.forks, []
    sched.fork(first, forks)
    for s in (first, *forks):
        s.token_ids.append(5)
    out = sched.schedule()
    assert sorted(it.seq.seq_id for it in out.scheduled) == ["r", "r#1", "r#2"]
    assert all(it.is_decode and it.start == 10 for it in out.scheduled)
    # three sequences write into the shared tail block: the first two copy it, the last writes in place
    assert len(out.block_copies) == 2
    sched.commit(out)
    assert sched.stats().num_computed_prompt_tokens == 10
    assert sched.stats().prefix_query_tokens == 10
    for s in (first, *forks):
        sched.finish(s, SeqStatus.FINISHED_LENGTH_CAPPED)
    assert sched.bm.num_free_blocks == 32


def test_a_request_is_admitted_when_all_its_choices_fit() -> None:
    sched = Scheduler(BlockManager(64, BS), max_num_seqs=4, max_num_batched_tokens=64)
    solo = seq("solo", 5)
    sched.add(solo)
    sched.commit(sched.schedule())
    many = seq("many", 6, n=4)
    many.forks = [seq(f"many#{i}", 6, n=4, index=i) for i in (1, 2, 3)]
    sched.add(many)
    solo.token_ids.append(1)
    assert [it.seq.seq_id for it in sched.schedule().scheduled] == ["solo"], "1 + 4 choices > max_num_seqs 4"
    sched.finish(solo, SeqStatus.FINISHED_STOPPED)
    assert [it.seq.seq_id for it in sched.schedule().scheduled] == ["many"]
