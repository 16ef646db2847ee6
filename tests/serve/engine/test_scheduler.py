"""serve/engine/scheduler.py: continuous batching, chunked prefill, preemption and block accounting.

Sequences are driven by a tiny stand-in for the engine loop (``step``): schedule, commit, append one token
to every sequence whose step reached its last token, finish at ``max_tokens``. No torch, no model.
"""

from __future__ import annotations

import itertools
import random

from serve.engine.block_manager import BlockManager
from serve.engine.sampling_params import SamplingParams
from serve.engine.scheduler import Scheduler, SchedulerOutput
from serve.engine.sequence import Sequence, SeqStatus

BS = 4
TOKEN = 7  # every "sampled" token
_ids = itertools.count()


def make_seq(num_prompt_tokens: int, max_tokens: int, name: str | None = None) -> Sequence:
    start = 1000 + 100 * next(_ids)  # distinct prompts: no accidental prefix sharing
    return Sequence(seq_id=name or f"s{start}", prompt_token_ids=list(range(start, start + num_prompt_tokens)),
                    params=SamplingParams(max_tokens=max_tokens, temperature=0.0))


def make_scheduler(num_blocks: int = 64, max_num_seqs: int = 8, max_num_batched_tokens: int = 64) -> Scheduler:
    return Scheduler(BlockManager(num_blocks, BS), max_num_seqs, max_num_batched_tokens)


def step(sched: Scheduler) -> SchedulerOutput:
    out = sched.schedule()
    for item in out.scheduled:  # the runner computes exactly the tokens it was given, in allocated blocks
        assert len(item.seq.block_table) * BS >= item.start + item.num_new_tokens
        assert item.start == item.seq.num_computed_tokens
    sched.commit(out)
    for item in out.scheduled:
        if item.samples:
            seq = item.seq
            seq.token_ids.append(TOKEN)
            if seq.num_output_tokens >= seq.params.max_tokens:
                sched.finish(seq, SeqStatus.FINISHED_LENGTH_CAPPED)
    return out


def names(out: SchedulerOutput) -> list[tuple[str, int]]:
    return [(item.seq.seq_id, item.num_new_tokens) for item in out.scheduled]


def run_to_end(sched: Scheduler, max_steps: int = 10_000) -> list[SchedulerOutput]:
    outs = []
    while sched.has_unfinished:
        outs.append(step(sched))
        assert len(outs) < max_steps, "scheduler made no progress"
    return outs


def test_new_requests_join_between_decode_steps() -> None:
    sched = make_scheduler()
    a = make_seq(5, max_tokens=4, name="a")
    sched.add(a)
    assert names(step(sched)) == [("a", 5)]  # prefill, samples token 1
    assert names(step(sched)) == [("a", 1)]  # decode
    b = make_seq(6, max_tokens=3, name="b")
    sched.add(b)
    out = step(sched)
    assert names(out) == [("a", 1), ("b", 6)], "b joins the running batch at once; decodes come first"
    assert out.scheduled[0].is_decode and not out.scheduled[1].is_decode
    c = make_seq(3, max_tokens=2, name="c")
    sched.add(c)
    assert names(step(sched)) == [("a", 1), ("b", 1), ("c", 3)]  # a finishes (4 tokens)
    assert a.status is SeqStatus.FINISHED_LENGTH_CAPPED and a.num_output_tokens == 4
    assert names(step(sched)) == [("b", 1), ("c", 1)]  # both finish
    assert not sched.has_unfinished
    assert sched.bm.num_free_blocks == sched.bm.num_blocks


def test_max_num_seqs_caps_the_running_batch() -> None:
    sched = make_scheduler(max_num_seqs=2)
    seqs = [make_seq(4, max_tokens=3) for _ in range(3)]
    for s in seqs:
        sched.add(s)
    out = step(sched)
    assert [it.seq for it in out.scheduled] == seqs[:2]
    assert sched.stats().num_running == 2 and sched.stats().num_waiting == 1
    outs = run_to_end(sched)
    assert all(len(o.scheduled) <= 2 for o in outs)
    assert all(s.num_output_tokens == 3 for s in seqs)


def test_chunked_prefill_respects_the_token_budget_and_decodes_go_first() -> None:
    budget = 16
    sched = make_scheduler(max_num_batched_tokens=budget)
    d1, d2 = make_seq(3, max_tokens=40, name="d1"), make_seq(3, max_tokens=40, name="d2")
    sched.add(d1)
    sched.add(d2)
    step(sched)
    long = make_seq(50, max_tokens=2, name="long")
    sched.add(long)
    chunks = []
    while long.num_output_tokens == 0:
        out = step(sched)
        assert out.num_tokens <= budget
        assert [it.seq.seq_id for it in out.scheduled[:2]] == ["d1", "d2"], "decodes are never starved by a prefill"
        assert all(it.is_decode for it in out.scheduled[:2])
        (chunk,) = [it for it in out.scheduled if it.seq is long]
        reached_end = chunk.start + chunk.num_new_tokens == 50
        assert (long.num_output_tokens == 1) == reached_end, "only the last chunk samples"
        chunks.append(chunk.num_new_tokens)
    assert sum(chunks) == 50
    assert chunks == [14] * 3 + [8], "each chunk takes the budget the two decodes leave"


def test_prompt_longer_than_budget_alone_is_chunked() -> None:
    sched = make_scheduler(max_num_batched_tokens=16)
    seq = make_seq(40, max_tokens=1)
    sched.add(seq)
    outs = run_to_end(sched)
    assert [o.num_tokens for o in outs] == [16, 16, 8]
    assert seq.num_output_tokens == 1


def test_waiting_prompts_share_the_leftover_budget() -> None:
    sched = make_scheduler(max_num_batched_tokens=16)
    a, b = make_seq(10, max_tokens=1, name="a"), make_seq(10, max_tokens=1, name="b")
    sched.add(a)
    sched.add(b)
    assert names(step(sched)) == [("a", 10), ("b", 6)]
    assert names(step(sched)) == [("b", 4)]


def test_preemption_frees_blocks_and_requeues_at_the_front() -> None:
    # 6 blocks of 4 tokens. a and b (8-token prompts) fit, and each can grow by one block; then b must yield.
    sched = make_scheduler(num_blocks=6, max_num_seqs=2)
    a, b, c = make_seq(8, 12, name="a"), make_seq(8, 12, name="b"), make_seq(4, 2, name="c")
    for s in (a, b, c):
        sched.add(s)
    preempting = None
    for _ in range(20):
        out = step(sched)
        if out.preempted_ids:
            preempting = out
            break
    assert preempting is not None, "the KV budget was meant to run out"
    assert preempting.preempted_ids == ("b",), "the latest arrival is preempted"
    assert names(preempting) == [("a", 1)]
    assert b.status is SeqStatus.WAITING and b.block_table == [] and b.num_computed_tokens == 0
    assert b.num_preemptions == 1 and sched.num_preemptions == 1
    assert list(sched.waiting) == [b, c], "the preempted sequence goes back to the front of the queue"
    assert sched.bm.num_free_blocks == 6 - len(a.block_table)
    num_b_outputs = b.num_output_tokens
    assert num_b_outputs > 0

    run_to_end(sched)
    assert all(s.num_output_tokens == s.params.max_tokens for s in (a, b, c))
    assert b.token_ids[:8] == b.prompt_token_ids and b.num_output_tokens == 12, "b resumed, its outputs kept"
    assert sched.stats().num_preemptions >= 1
    assert sched.bm.num_free_blocks == sched.bm.num_blocks


def test_a_sequence_that_cannot_grow_preempts_itself() -> None:
    # 4 blocks: a holds 1 (+1 when it grows), b holds 2 and is the latest arrival when no block is left.
    sched = make_scheduler(num_blocks=4)
    a, b = make_seq(4, 10, name="a"), make_seq(8, 10, name="b")
    sched.add(a)
    sched.add(b)
    step(sched)  # both prefilled: a has 5 tokens (needs block 2 next), b 9 tokens (needs block 3 next)
    out = step(sched)
    assert out.preempted_ids == ("b",)
    assert names(out) == [("a", 1)]
    assert sched.running == [a] and list(sched.waiting) == [b]


def test_no_admission_in_a_step_that_preempted() -> None:
    sched = make_scheduler(num_blocks=4)
    a, b = make_seq(4, 10, name="a"), make_seq(8, 10, name="b")
    sched.add(a)
    sched.add(b)
    step(sched)
    out = step(sched)
    assert out.preempted_ids and all(it.seq is not b for it in out.scheduled), "b must not be re-admitted at once"


def test_prefix_cache_stats_count_admissions_once() -> None:
    sched = make_scheduler()
    first = make_seq(9, max_tokens=1)
    sched.add(first)
    run_to_end(sched)
    again = Sequence("again", list(first.prompt_token_ids), SamplingParams(max_tokens=1))
    sched.add(again)
    out = step(sched)
    assert names(out) == [("again", 1)], "8 of 9 prompt tokens come from the prefix cache"
    assert again.num_cached_tokens == 8
    stats = sched.stats()
    assert (stats.prefix_query_tokens, stats.prefix_hit_tokens) == (18, 8)


def test_abort_frees_blocks_anywhere() -> None:
    sched = make_scheduler(max_num_seqs=1)
    running, waiting = make_seq(9, 5, name="r"), make_seq(9, 5, name="w")
    sched.add(running)
    sched.add(waiting)
    step(sched)
    assert sched.abort("w") is waiting and waiting.status is SeqStatus.FINISHED_ABORTED
    assert sched.abort("r") is running and running.block_table == []
    assert sched.abort("unknown") is None
    assert not sched.has_unfinished
    assert sched.bm.num_free_blocks == sched.bm.num_blocks


def test_random_workload_under_memory_pressure_leaks_nothing() -> None:
    rng = random.Random(0)
    sched = make_scheduler(num_blocks=24, max_num_seqs=6, max_num_batched_tokens=32)
    seqs = []
    for i in range(40):
        n, max_tokens = rng.choice([1, 3, 4, 8, 15, 16, 17, 30]), rng.randint(1, 20)
        if i % 3 == 0:  # prompts sharing prefixes, so prefix-cache hits and preemption interact
            seqs.append(Sequence(f"rep{i}", list(range(10_000, 10_000 + n)), SamplingParams(max_tokens=max_tokens)))
        else:
            seqs.append(make_seq(n, max_tokens))
    pending = list(seqs)
    outs = []
    while pending or sched.has_unfinished:
        for _ in range(rng.randint(0, 3)):  # arrivals between steps
            if pending:
                sched.add(pending.pop(0))
        outs.append(step(sched))
        assert outs[-1].num_tokens <= 32
        assert len(outs) < 5000
        assert sched.bm.num_free_blocks >= 0
    assert all(s.status is SeqStatus.FINISHED_LENGTH_CAPPED for s in seqs)
    assert all(s.num_output_tokens == s.params.max_tokens for s in seqs)
    assert sched.num_preemptions > 0, "the workload was sized to force preemptions"
    assert sched.bm.num_free_blocks == sched.bm.num_blocks
    assert sched.bm.usage == 0.0
